"""The optimizer of each parameter group and the learning-rate schedules.

The model's parameters form two groups with an optimizer state each: the
backbone and the heads. The first (frozen) stage updates the heads only and
leaves the backbone's state untouched; the second continues the heads' state
instead of re-initialising it (docs/method.md, "Recipe").
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
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


def update(
  params: dict,
  grads: dict,
  opt_state: dict,
  opt: ml_collections.ConfigDict,
  lr: jax.Array,
  freeze_backbone: bool,
) -> tuple[dict, dict]:
  """One optimizer step of both parameter groups; pure.

  Args:
    params: the model parameters.
    grads: their gradients.
    opt_state: {'backbone': ..., 'heads': ...} optimizer states.
    opt: `config.optimizer`.
    lr: the heads' learning rate of this step (the backbone's is
      `lr * opt.backbone_lr_scale`).
    freeze_backbone: stage 1: the backbone and its optimizer state stay as they are.

  Returns:
    (new parameters, new optimizer states).
  """
  if opt.grad_clip_norm > 0:
    # One global norm over all trainable parameters.
    if freeze_backbone:
      grads = {**grads, BACKBONE: jax.tree.map(jnp.zeros_like, grads[BACKBONE])}
    grads, _ = optax.clip_by_global_norm(opt.grad_clip_norm).update(grads, None)
  backbone_params, head_params = split_params(params)
  backbone_grads, head_grads = split_params(grads)
  opt_state = dict(opt_state)
  tx = make_optimizer(opt)

  def apply(part_params, part_grads, part_state, scale=1.0):
    part_state.hyperparams['learning_rate'] = lr * scale
    updates, part_state = tx.update(part_grads, part_state, part_params)
    return optax.apply_updates(part_params, updates), part_state

  head_params, opt_state['heads'] = apply(head_params, head_grads, opt_state['heads'])
  if not freeze_backbone:
    # Pretrained backbones are often fine-tuned at a fraction of the heads' rate.
    backbone_params, opt_state[BACKBONE] = apply(
      backbone_params, backbone_grads, opt_state[BACKBONE], opt.backbone_lr_scale
    )
  return {BACKBONE: backbone_params, **head_params}, opt_state


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
