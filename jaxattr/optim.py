"""The optimizer of each parameter group and the learning-rate schedules.

The model's parameters form two groups with an optimizer state each: the
backbone and the heads. The first (frozen) stage updates the heads only and
leaves the backbone's state untouched; the second continues the heads' state
instead of re-initialising it (docs/method.md, "Recipe").
"""

from collections.abc import Callable

import ml_collections
import optax
import optax.contrib

BACKBONE = 'backbone'
# The names `make_optimizer` and `make_lr_fn` build (config_validation checks against them).
OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('plateau', 'step', 'cosine', 'constant')


def split_params(params: dict) -> tuple[dict, dict]:
  """(backbone, heads) parts of the model parameters."""
  heads = {k: v for k, v in params.items() if k != BACKBONE}
  return params[BACKBONE], heads


def make_optimizer(opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer of one parameter group, with the lr injectable per step.

  SGD and Adam get L2 weight decay through `optax.add_decayed_weights` (as MXNet,
  the authors' framework, and PyTorch's `weight_decay` do); 'adamw' is decoupled.

  Args:
    opt: `config.optimizer`.

  Returns:
    The transformation; its `hyperparams['learning_rate']` is set every step.
  """

  def make(learning_rate):
    if opt.name == 'sgd':
      return optax.chain(
        optax.add_decayed_weights(opt.weight_decay),
        optax.sgd(learning_rate, momentum=opt.momentum or None, nesterov=opt.nesterov),
      )
    if opt.name == 'adam':
      return optax.chain(optax.add_decayed_weights(opt.weight_decay), optax.adam(learning_rate))
    if opt.name == 'adamw':
      return optax.adamw(learning_rate, weight_decay=opt.weight_decay)
    raise ValueError(f'optimizer.name must be one of {OPTIMIZERS}, not {opt.name!r}.')

  return optax.inject_hyperparams(make)(learning_rate=opt.learning_rate)


def make_plateau(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """lr / factor after `patience` evaluations without gain, down to `min_lr`."""
  s = config.schedule
  return optax.contrib.reduce_on_plateau(
    factor=s.factor,
    patience=s.patience,
    rtol=0.0,
    atol=1e-4,  # A gain is an improvement of the metric by more than 1e-4.
    min_scale=s.min_lr / config.optimizer.learning_rate,
  )


def make_lr_fn(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Callable:
  """Base learning rate as a function of the step (the plateau scale multiplies it).

  Args:
    config: the run config (`schedule`, `optimizer.learning_rate`, `train.num_epochs`).
    steps_per_epoch: train steps per epoch (the schedule is given in epochs).

  Returns:
    `fn(step) -> lr`.
  """
  s, lr = config.schedule, config.optimizer.learning_rate
  warmup = int(s.warmup_epochs * steps_per_epoch)
  total = max(int(config.train.num_epochs * steps_per_epoch), warmup + 1)
  if s.name in ('plateau', 'constant'):
    base = optax.constant_schedule(lr)
  elif s.name == 'step':
    base = optax.piecewise_constant_schedule(
      lr, {int(e * steps_per_epoch): s.factor for e in s.step_epochs}
    )
  elif s.name == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, end_value=s.min_lr)
  else:
    raise ValueError(f'schedule.name must be one of {SCHEDULES}, not {s.name!r}.')
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), base], [warmup])
  return base
