"""Training: the train state, the pure compiled train step, and the loop.

One `TrainState` pytree holds everything a run needs to continue: parameters,
BatchNorm statistics, optimizer states, the prediction-variance history, the
plateau-scheduler state, the best validation metric, the exponential moving average
of the weights (`train.ema_decay`) and the step. It is checkpointed whole, so a
resumed run continues exactly (the data order is a function of the step, see
`input_pipeline`, and the step's randomness, stochastic depth, of seed and step).

The EMA (timm's ModelEmaV2: `ema += (1 - decay) * (new - ema)` after every optimizer
update, no warm-up of the decay, starting from the initial or pretrained weights)
averages the BatchNorm statistics as well as the parameters, as timm does with a
model's buffers, so the statistics stay those of weights near the averaged ones.
When it is kept, it is what evaluation sees, what selects the best checkpoint, and
what the tools load (`TrainState.eval_variables`, `jaxattr.run.restore`); a frozen
backbone's EMA stays equal to its weights (the lerp of equal values is exact).

`train.grad_accum_steps` = k splits the global batch into k micro-batches inside the
compiled step (`jax.lax.scan`): the gradients are averaged, so the one optimizer update
equals that of the whole batch (the loss is a mean over samples), and the history
receives every example's predictions. BatchNorm normalises each micro-batch with its
own statistics and updates its running averages k times, once per micro-batch, as
PyTorch's accumulation loops do; so with BatchNorm the step is not exactly the
whole batch's, without it (ViT) it is.

Steps are pure and compiled once per stage with `jax.jit` over a 1-D device mesh
('data'): the batch is sharded along it, the state is replicated, and the compiler
inserts the collectives (gradient all-reduce, global-batch BatchNorm statistics,
the all-gather of the batch's (index, p) pairs into the replicated history), so
the step reads as single-device code and computes the same function on any number
of devices or hosts (`jaxattr.sharding`): results agree to float rounding (1e-5 over
the first steps, tests/test_train.py), and over a run the rounding differences of
the summation order grow, enough to move thresholded metrics. The optimizers and
schedules are built by `jaxattr.optim`; evaluation is the config's evaluators
(`jaxattr.evaluators`: by default the validation split every epoch, which selects
the best checkpoint, and both splits at the end on that checkpoint); every file the
run writes is named by `jaxattr.run.layout`.

TensorFlow feeds the input pipeline only: it (and clu's writers, which import it)
is imported by the functions that read data or write logs, so the state, the step
and the experiment's pieces import and run without it.

Faults (docs/multihost.md has the details):
  * SIGTERM / SIGINT: the loop checkpoints the current step and exits 143 / 130,
    non-zero so that a supervisor restarts it and a pipeline does not take it for
    finished; re-running the same command resumes. Several processes stop at one
    step agreed by JAX's preemption notifier (`_Stop`).
  * SIGKILL or power loss loses the steps since the last checkpoint; Orbax commits
    a checkpoint by renaming it, so a restart never sees a partial one.
  * A corrupt image stops the run naming it, or is skipped (`data.on_bad_image`).
"""

import dataclasses
import functools
import json
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import linen as nn

from jaxattr import checkpoints, evaluators, inference, losses, metrics, optim, schema, sharding
from jaxattr import history as hist
from jaxattr.evaluators import attributes
from jaxattr.evaluators import report as tables
from jaxattr.models import model as model_lib
from jaxattr.optim import BACKBONE
from jaxattr.run import files, layout, logs, resume


class TrainState(flax.struct.PyTreeNode):
  """Everything that evolves during training; checkpointed whole."""

  step: jax.Array
  params: Any
  batch_stats: Any
  # Two optimizer states, so the frozen stage leaves the backbone's untouched and
  # the second stage continues the heads' state instead of re-initialising it.
  opt_state: dict[str, Any]
  history: dict[str, jax.Array]
  plateau: Any  # optax.contrib reduce-on-plateau state (its `scale` multiplies the lr).
  best_metric: jax.Array  # Best validation metric so far (-inf before the first eval).
  # The EMA of `variables()` ({'params', 'batch_stats'}), or {} when `train.ema_decay` is 0.
  ema: dict[str, Any]

  def variables(self) -> dict[str, Any]:
    """The model's variables as trained (the optimizer's weights)."""
    return {'params': self.params, 'batch_stats': self.batch_stats}

  def eval_variables(self) -> dict[str, Any]:
    """What evaluation, selection and inference take: the EMA when kept, else `variables()`."""
    return self.ema or self.variables()


def ema_update(ema: Any, new: Any, decay: float) -> Any:
  """`ema + (1 - decay) * (new - ema)` leaf by leaf (torch's `lerp_`, as timm's EMA).

  This form leaves a leaf that did not change (a frozen backbone) exactly as it is.
  """
  return jax.tree.map(lambda e, v: e + (1.0 - decay) * (v - e), ema, new)


def step_rng(seed: int, step: jax.Array) -> jax.Array:
  """The step's random key (stochastic depth): a function of seed and step, so a resumed
  run draws what the uninterrupted one would."""
  return jax.random.fold_in(jax.random.key(seed), step)


def split_micro_batches(x: jax.Array, k: int, axis: int = 0) -> jax.Array:
  """[..., B, ...] -> [k, ..., B/k, ...]: micro-batch j holds rows j, j + k, j + 2k, ...

  Strided, not contiguous: each device's contiguous block of the sharded batch splits
  evenly over the micro-batches, so no rows move between devices.
  """
  x = jnp.moveaxis(x, axis, 0)
  x = jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
  return jnp.moveaxis(x, 1, axis + 1)


def merge_micro_batches(x: jax.Array, axis: int = 0) -> jax.Array:
  """The inverse of `split_micro_batches`: [k, ..., B/k, ...] -> [..., B, ...] in batch order."""
  x = jnp.swapaxes(jnp.moveaxis(x, axis + 1, 1), 0, 1)
  return jnp.moveaxis(x.reshape(-1, *x.shape[2:]), 0, axis)


def num_history_sources(config: ml_collections.ConfigDict) -> int:
  """How many prediction histories the run keeps."""
  attention = config.model.attention
  return hist.num_sources(len(attention.levels), attention.aggregation, config.history.source)


def history_std(state_history, indices, num_sources) -> jax.Array:
  """[S, B, C] std of the examples' histories; [0, B, 1] when the run keeps none."""
  return hist.std(state_history, indices) if num_sources else jnp.zeros((0, indices.shape[0], 1))


# One clu Collection class per set of loss terms (a new class per step would not merge).
_train_metrics = functools.lru_cache(metrics.make_train_metrics)


# --- The step and the state ------------------------------------------------------


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  model: nn.Module,
  config: ml_collections.ConfigDict,
  w_pos: jax.Array,
  w_neg: jax.Array,
  lr_fn: Callable,
  steps_per_epoch: int,
  num_sources: int,
  freeze_backbone: bool,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step on a global batch (in `train.grad_accum_steps` micro-batches); pure.

  Args:
    state: the train state.
    batch: `image` uint8 [B,S,S,3], `labels` int8 [B,C], `index` int32 [B].
    model: the attribute model.
    config: the run config.
    w_pos: positive class weights [C].
    w_neg: negative class weights [C].
    lr_fn: base learning rate schedule.
    steps_per_epoch: steps in one epoch (burn-in of the history is in epochs).
    num_sources: number of prediction histories.
    freeze_backbone: stage 1 (static): no backbone gradient, frozen BN statistics.

  Returns:
    (new state, scalar metrics of the step).
  """
  images = inference.normalize(batch['image'], config.data)
  std = jax.lax.stop_gradient(history_std(state.history, batch['index'], num_sources))
  drop_path = bool(config.model.drop_path_rate)

  def loss_fn(params, batch_stats, images, labels, std, rng):
    outputs, new_model_state = model.apply(
      {'params': params, 'batch_stats': batch_stats},
      images,
      train=True,
      freeze_backbone=freeze_backbone,
      mutable=['batch_stats'],
      rngs={'dropout': rng} if drop_path else None,
    )
    loss, terms = losses.total_loss(
      outputs['primary_logits'],
      outputs['attention_logits'],
      labels,
      std,
      w_pos,
      w_neg,
      config.loss,
      unknown=config.data.unknown_label,
    )
    probs = hist.source_probs(outputs, config.history.source) if num_sources else None
    return loss, (probs, new_model_state['batch_stats'], terms)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  rng = step_rng(config.seed, state.step)
  k = config.train.grad_accum_steps
  if k == 1:
    (loss, (probs, batch_stats, terms)), grads = grad_fn(
      state.params, state.batch_stats, images, batch['labels'], std, rng
    )
  else:

    def micro_step(carry, micro):
      grad_sum, batch_stats = carry
      j, *inputs = micro
      (loss, (probs, batch_stats, terms)), grads = grad_fn(
        state.params, batch_stats, *inputs, jax.random.fold_in(rng, j)
      )
      return (jax.tree.map(jnp.add, grad_sum, grads), batch_stats), (loss, probs, terms)

    micro = (
      jnp.arange(k),
      split_micro_batches(images, k),
      split_micro_batches(batch['labels'], k),
      split_micro_batches(std, k, axis=1),
    )
    carry = (jax.tree.map(jnp.zeros_like, state.params), state.batch_stats)
    (grad_sum, batch_stats), (loss, probs, terms) = jax.lax.scan(micro_step, carry, micro)
    # Equal micro-batches of a per-sample mean: the means' mean is the batch's mean.
    grads = jax.tree.map(lambda g: g / k, grad_sum)
    loss, terms = jnp.mean(loss), jax.tree.map(jnp.mean, terms)
    if num_sources:
      probs = merge_micro_batches(probs, axis=1)
  lr = lr_fn(state.step) * state.plateau.scale
  params, opt_state = optim.update(
    state.params, grads, state.opt_state, config.optimizer, lr, freeze_backbone
  )

  new_history = state.history
  if num_sources:
    epoch = state.step // steps_per_epoch
    new_history = hist.update(
      state.history, batch['index'], probs, epoch >= config.history.start_epoch
    )

  ema = state.ema
  if config.train.ema_decay:
    new = {'params': params, 'batch_stats': batch_stats}
    ema = ema_update(state.ema, new, config.train.ema_decay)
  new_state = state.replace(
    step=state.step + 1,
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    history=new_history,
    ema=ema,
  )
  step_metrics = {'loss': loss, 'learning_rate': lr, **terms}
  return new_state, step_metrics


def train_state_init(
  config: ml_collections.ConfigDict, model: nn.Module, num_train: int, num_classes: int
) -> Callable[[], TrainState]:
  """The pure function that builds a fresh train state (`jax.eval_shape` gives its shapes).

  Args:
    config: the run config.
    model: the attribute model.
    num_train: examples in the train split (rows of the history).
    num_classes: attributes.

  Returns:
    `init()` -> the state at step 0, unplaced.
  """
  hw = schema.image_hw(config.data)
  num_sources = num_history_sources(config)
  tx = optim.make_optimizer(config.optimizer)

  def init():
    variables = model.init(jax.random.key(config.seed), jnp.zeros((1, *hw, 3)), train=False)
    params = variables['params']
    batch_stats = variables.get('batch_stats', {})
    backbone, heads = optim.split_params(params)
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state={BACKBONE: tx.init(backbone), 'heads': tx.init(heads)},
      # No attention, no history: an empty dict (Orbax cannot save zero-size arrays).
      history=(
        hist.init(num_sources, num_train, config.history.length, num_classes) if num_sources else {}
      ),
      plateau=optim.make_plateau(config).init(jnp.zeros(())),
      best_metric=jnp.full((), -jnp.inf, jnp.float32),
      # The same values in their own buffers (a jit's outputs never share one), so
      # donating the state donates each buffer once.
      ema={'params': params, 'batch_stats': batch_stats} if config.train.ema_decay else {},
    )

  return init


def create_train_state(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  num_train: int,
  num_classes: int,
  sharding: jax.sharding.Sharding,
) -> TrainState:
  """A fresh train state, placed with `sharding` (replicated).

  Args:
    config: the run config.
    model: the attribute model.
    num_train: examples in the train split (rows of the history).
    num_classes: attributes.
    sharding: where the state goes.

  Returns:
    The state at step 0.
  """
  init = train_state_init(config, model, num_train, num_classes)
  lowered = jax.jit(init, out_shardings=sharding).lower()
  # XLA:CPU compiles the init's many random streams (one threefry per parameter)
  # slowly at LLVM's default -O2: 25 s for configs/test.py's model, 6 s at -O1, with
  # the same bits (tests/test_train.py compares them). Accelerators keep their defaults.
  cpu = all(d.platform == 'cpu' for d in sharding.device_set)
  options = {'xla_backend_optimization_level': 1} if cpu else {}
  return lowered.compile(compiler_options=options)()


# --- The experiment ----------------------------------------------------------------


@dataclasses.dataclass
class Experiment:
  """A run's data, model, mesh, fresh state and compiled steps (no I/O to the workdir)."""

  config: ml_collections.ConfigDict
  context: evaluators.Context  # Dataset, model and mesh, shared with the evaluators.
  evaluators: dict[str, evaluators.Evaluator]  # `config.evals`, in name order.
  mesh: jax.sharding.Mesh
  state: TrainState
  steps_per_epoch: int
  total_steps: int
  freeze_steps: int
  train_steps: dict[bool, Callable]  # Compiled train step per stage (frozen or not).
  plateau_update: Callable

  @property
  def builder(self):
    return self.context.builder

  @property
  def info(self):
    return self.context.info

  @property
  def model(self) -> nn.Module:
    return self.context.model

  def train_step(self, state: TrainState, batch: dict[str, np.ndarray], step: int):
    """Runs the compiled step of the stage that `step` (== state.step) is in.

    The step number comes from the host so choosing the stage never waits for the
    device (no sync between steps).
    """
    frozen = step < self.freeze_steps
    return self.train_steps[frozen](
      state, sharding.to_global(batch, sharding.batch_sharded(self.mesh))
    )

  def train_batches(self, start_step: int = 0):
    """This process's share of the train batches from `start_step` on, endlessly."""
    from jaxattr.data import input_pipeline

    return input_pipeline.train_batches(
      self.builder,
      self.config.data,
      global_batch=self.config.train.batch_size,
      seed=self.config.seed,
      start_step=start_step,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )

  def evaluate(self, state: TrainState, split: str):
    """Every attribute metric of `split` for the state, and the gathered predictions."""
    spec = evaluators.resolve(split, {'type': 'attributes', 'split': split})
    evaluator = attributes.AttributesEvaluator(split, spec, self.context)
    return evaluator.evaluate_with_data(state.eval_variables())


def create_experiment(config: ml_collections.ConfigDict, devices=None) -> Experiment:
  """Prepares the data (process 0), builds the model, state and compiled steps.

  Args:
    config: the run config.
    devices: devices of the mesh; default all devices of all processes.

  Returns:
    The `Experiment`.
  """
  from jaxattr.data import input_pipeline

  builder, info = evaluators.common.open_dataset(config)
  num_train = info.split_sizes[config.data.train_split]
  logging.info(
    'Dataset %s: %s; %d attributes.', builder.info.full_name, info.split_sizes, info.num_classes
  )
  mesh = sharding.create_mesh(devices)
  sharding.check_divides(
    mesh, **{'train.batch_size': config.train.batch_size, 'eval.batch_size': config.eval.batch_size}
  )
  accum, batch = config.train.grad_accum_steps, config.train.batch_size
  if batch % (accum * mesh.size):
    raise ValueError(
      f'train.batch_size ({batch}) must split into train.grad_accum_steps ({accum}) '
      f'micro-batches over {mesh.size} devices.'
    )
  replicated, data_sharding = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  spe = input_pipeline.steps_per_epoch(num_train, config.train.batch_size)
  total_steps = int(config.train.num_epochs * spe)
  if config.train.max_steps:
    total_steps = min(total_steps, config.train.max_steps)

  model = model_lib.create_model(config.model, info.num_classes)
  state = create_train_state(config, model, num_train, info.num_classes, replicated)
  w_pos, w_neg = losses.class_weights(info.positive_ratio, config.loss.class_weights)
  step_kwargs = dict(
    model=model,
    config=config,
    w_pos=jnp.asarray(w_pos, jnp.float32),
    w_neg=jnp.asarray(w_neg, jnp.float32),
    lr_fn=optim.make_lr_fn(config, spe),
    steps_per_epoch=spe,
    num_sources=num_history_sources(config),
  )
  train_steps = {
    frozen: jax.jit(
      functools.partial(train_step, freeze_backbone=frozen, **step_kwargs),
      in_shardings=(replicated, data_sharding),
      out_shardings=(replicated, replicated),
      donate_argnums=0,
    )
    for frozen in (True, False)
  }
  plateau_tx = optim.make_plateau(config)
  plateau_update = jax.jit(
    lambda s, v: plateau_tx.update(jnp.zeros(()), s, value=v)[1], out_shardings=replicated
  )
  context = evaluators.Context(config, builder, info, model, mesh)
  return Experiment(
    config=config,
    context=context,
    evaluators=evaluators.create(context),
    mesh=mesh,
    state=state,
    steps_per_epoch=spe,
    total_steps=total_steps,
    freeze_steps=int(config.train.freeze_backbone_epochs * spe),
    train_steps=train_steps,
    plateau_update=plateau_update,
  )


# --- The loop -----------------------------------------------------------------------


def itstime(step: int, every: int, last: int | None = None) -> bool:
  """Whether a periodic action is due after `step`: every `every` steps (0: never), and
  at step `last` if given (the final step)."""
  return (every > 0 and step % every == 0) or step == last


class _Stop:
  """Turns SIGTERM/SIGINT into a checkpoint at a step boundary.

  One process: the handler remembers the signal and the loop stops after the
  current step. Several processes: they must all stop after the same step, or the
  others would wait forever in the next step's collectives. JAX's distributed
  runtime catches SIGTERM itself (its preemption notifier), tells every process
  and agrees on a step, which the loop polls every step through
  `Checkpointer.reached_preemption`; so SIGTERM is left to it, and SIGINT (Ctrl-C)
  is handed to it as a SIGTERM to this process.
  """

  def __init__(self, multiprocess: bool):
    self.signal = None
    self._multiprocess = multiprocess
    self._previous = {}
    signals = (signal.SIGINT,) if multiprocess else (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread (e.g. some test runners).
        pass

  def _handle(self, signum, frame):
    del frame
    self.signal = signum
    logging.warning('Received signal %d: checkpointing at the next step boundary.', signum)
    if self._multiprocess:
      signal.raise_signal(signal.SIGTERM)  # To JAX's preemption notifier.

  def requested(self) -> bool:
    """Whether this process alone decides to stop (single process only)."""
    return self.signal is not None and not self._multiprocess

  def exit_code(self) -> int:
    return 128 + (self.signal or signal.SIGTERM)

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _check_finite(window: list[tuple[int, dict]]) -> None:
  """Raises on the first step of `window` with a non-finite loss (host sync)."""
  for step, m in window:
    values = {k: float(v) for k, v in jax.device_get(m).items()}
    if not math.isfinite(values['loss']):
      terms = ', '.join(f'{k}={v:.6g}' for k, v in values.items())
      raise FloatingPointError(
        f'Non-finite loss at step {step}: {terms}. The last good checkpoint is kept; '
        'lower optimizer.learning_rate or set optimizer.grad_clip_norm.'
      )


def _logged_rows(workdir: Path) -> list[dict[str, Any]]:
  """metrics.jsonl merged per step, in step order; a step logged again (after a resume
  replayed it) keeps its latest values."""
  by_step: dict[int, dict[str, Any]] = {}
  for line in layout.metrics_path(workdir).read_text().splitlines():
    row = json.loads(line)
    by_step.setdefault(row['step'], {}).update(row)
  return [by_step[k] for k in sorted(by_step)]


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, devices=None
) -> dict[str, Any]:
  """Trains with the periodic evaluators, then runs the final ones on the best state.

  Re-running with the same workdir resumes from the latest checkpoint.

  Args:
    config: the run config (fields in `jaxattr.schema`).
    workdir: where checkpoints, logs, metrics and results go.
    devices: devices of the mesh; default all.

  Returns:
    The final results (also written to workdir/results.json and results.md): every
    final evaluator's details under its results key ('validation', 'test' by default).
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with logs.logging_to(workdir):
    return _train_and_evaluate(config, workdir, devices)


def _train_and_evaluate(config, workdir: Path, devices) -> dict[str, Any]:
  start_time = time.time()
  is_main = jax.process_index() == 0

  ex = create_experiment(config, devices)
  if is_main:  # So the tools restore a run without its dataset: names, train positive ratios.
    files.write_attributes(workdir, ex.info.attribute_names, ex.info.positive_ratio)
  state, spe, total_steps = ex.state, ex.steps_per_epoch, ex.total_steps
  ckpt = checkpoints.Checkpointer(workdir, keep=config.train.keep_checkpoints, cleanup_tmp=True)
  restored = ckpt.restore_latest(state)  # The newest readable; damaged ones set aside.
  if restored is not None:
    state = restored
    logging.info('Resumed at step %d.', int(state.step))
  else:
    from jaxattr import pretrained  # `torchvision:ARCH` -> a converted directory (cached).

    model = config.model
    path = pretrained.resolve(model.pretrained, model.backbone, model.width, model.depth)
    state = pretrained.load_into(state, path)  # None ('scratch', ''): random init, unchanged.
    if state.ema and path is not None:  # The average starts from the pretrained weights,
      # in buffers of its own.
      state = state.replace(ema=jax.tree.map(jnp.copy, state.variables()))
  if is_main:  # The config in use from this step on: config.json, config_history.jsonl.
    resume.record_config(workdir, config, int(state.step))

  from clu import periodic_actions  # Imports TensorFlow: only the loop reports.

  writer = logs.MetricsWriter(workdir)
  report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer.clu)
  stop = _Stop(multiprocess=jax.process_count() > 1)
  step = int(state.step)
  batches = ex.train_batches(start_step=step)
  periodic = [ev for ev in ex.evaluators.values() if ev.spec['every_epochs']]
  select = evaluators.selection_metric(config)
  collection = None
  window: list[tuple[int, dict]] = []
  logging.info(
    'Training steps %d..%d (%d per epoch, backbone frozen for the first %d) on %d devices.',
    step,
    total_steps,
    spe,
    ex.freeze_steps,
    ex.mesh.size,
  )
  try:
    while step < total_steps:
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, step_metrics = ex.train_step(state, next(batches), step)
      step += 1
      window.append((step, step_metrics))
      update = _train_metrics(tuple(sorted(step_metrics))).single_from_model_output(**step_metrics)
      collection = update if collection is None else collection.merge(update)
      report(step)

      end_of_epoch = itstime(step, spe)
      if itstime(step, config.train.log_every_steps, last=total_steps) or end_of_epoch:
        _check_finite(window)
        window = []
        summary = {f'train/{k}': v for k, v in collection.compute().items()}
        summary['epoch'] = step / spe
        writer.scalars(step, summary)
        collection = None

      due = [ev for ev in periodic if itstime(step, spe * ev.spec['every_epochs'])]
      scalars = {}
      if due:
        with report.timed('eval'):
          scalars = {k: v for ev in due for k, v in ev.run(state.eval_variables()).items()}
        writer.scalars(step, scalars)
      if select in scalars:
        value = scalars[select]
        if config.schedule.name == 'plateau':
          state = state.replace(plateau=ex.plateau_update(state.plateau, np.float32(-value)))
        if value > float(state.best_metric):
          # Placed like the rest of the state: with several processes a host-local
          # array could not be checkpointed (every process holds the same value).
          best = jax.device_put(np.float32(value), sharding.replicated(ex.mesh))
          state = state.replace(best_metric=best)
          ckpt.save_best(step, state, value)
          logging.info('Step %d: new best validation %s = %.4f', step, config.eval.metric, value)

      # Every process polls the agreed preemption step every step (JAX requires it).
      preempted = stop.requested() or ckpt.reached_preemption(step)
      if (
        itstime(step, config.train.checkpoint_every_steps, last=total_steps)
        or end_of_epoch
        or preempted
      ):
        _check_finite(window)
        window = []
        ckpt.save(step, state)
      if preempted:
        ckpt.wait()
        logging.warning(
          'Stopped at step %d after checkpointing; re-run the same command to resume '
          '(exit code %d).',
          step,
          stop.exit_code(),
        )
        raise SystemExit(stop.exit_code())
  except BaseException:  # Stopped or failed: metrics.jsonl is flushed and closed too.
    writer.close()
    raise
  finally:
    stop.restore()
    ckpt.wait()

  # The final evaluators, once, on the best state (the current one if no epoch finished).
  results = {'workdir': str(workdir), 'dataset': ex.builder.info.full_name, 'steps': step}
  results['weights'] = 'ema' if state.ema else 'raw'  # Which weights every evaluation saw.
  best = state
  if ckpt.best_step() is not None:
    best = ckpt.restore(state, which='best')
    results['best_step'] = int(ckpt.best_step())
  final = [ev for ev in ex.evaluators.values() if ev.spec['at_end']]
  final_scalars = {}
  with report.timed('test'):
    for ev in final:
      scalars = ev.run(best.eval_variables())
      results[ev.spec['results_key']] = ev.details
      # A periodic evaluator logged its curve already; its value on the best state is in
      # results.json (logged at the last step it would read as that step's).
      if not ev.spec['every_epochs']:
        final_scalars.update(scalars)
  if config.eval.attention_grid and is_main and config.model.attention.levels:
    grid = evaluators.common.attention_grid(
      ex.context, best.eval_variables(), layout.attention_path(workdir)
    )
    results['attention_grid'] = str(grid)
  results['wall_time_s'] = time.time() - start_time
  if final_scalars:
    writer.scalars(step, final_scalars)
  writer.close()
  if is_main:
    sections = {ev.spec['results_key']: ev.details for ev in final}
    rows = _logged_rows(workdir)
    for ev in periodic:  # E.g. the peers' protocol: its per-epoch curve and best epoch.
      curve = ev.curve(rows, attributes.metric_key(config.eval))
      if curve is not None:
        results[ev.spec['results_key']] = sections[ev.spec['results_key']] = curve
    markdown = tables.results_markdown(
      results['dataset'],
      f'Best validation step {results.get("best_step", step)} of {step}'
      f'{"; EMA weights" if state.ema else ""}; wall time {results["wall_time_s"]:.0f} s.',
      sections,
    )
    files.write_results(workdir, results, markdown)
    logging.info('Results:\n%s', markdown)
    for label in sections:
      for line in tables.pointing_game_lines(results[label]):
        logging.info('%s %s', label.capitalize(), line)
  ckpt.close()
  return results
