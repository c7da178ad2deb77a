"""Training and evaluation: the train state, pure compiled steps, and the loop.

One `TrainState` pytree holds everything a run needs to continue: parameters,
BatchNorm statistics, optimizer states, the prediction-variance history, the
plateau-scheduler state, the best validation metric and the step. It is
checkpointed whole, so a resumed run continues exactly (the data order is a
function of the step, see `input_pipeline`).

Steps are pure and compiled once per stage with `jax.jit` over a 1-D device mesh
('data'): the batch is sharded along it, the state is replicated, and the compiler
inserts the collectives (gradient all-reduce, global-batch BatchNorm statistics,
the all-gather of the batch's (index, p) pairs into the replicated history), so
the step reads as single-device code and gives the same result on any number of
devices or hosts.

Faults (see docs/multihost.md):
  * Preemption. SIGTERM (or SIGINT) makes the loop finish the current step, save a
    checkpoint of it, wait for the write and exit with code 128 + signal (143 for
    SIGTERM, 130 for SIGINT): non-zero, so a supervisor that restarts failed jobs
    (Kubernetes, a retry loop) restarts it and a pipeline does not take a stopped
    run for a finished one; SLURM requeues a preempted job whatever its code.
    Re-running the same command resumes there. With several processes, every
    process must stop at the same step, so SIGTERM is left to JAX's preemption
    notifier (installed by `jax.distributed.initialize`): it tells all processes
    and agrees on the step (`Checkpointer.reached_preemption`), whichever of them
    got the signal.
  * A process killed outright (SIGKILL, power loss) loses the steps since the
    last checkpoint; Orbax commits a checkpoint by renaming its temporary
    directory, so a restart never sees a partial one (and removes it).
  * A corrupt image stops the run naming it, or is skipped
    (`data.on_bad_image`, see `input_pipeline`).
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
import optax
import optax.contrib
from absl import logging
from clu import metric_writers, periodic_actions
from flax import linen as nn

from jaxattr import checkpoints, losses, metrics
from jaxattr import history as hist
from jaxattr.data import input_pipeline
from jaxattr.models import model as model_lib

BACKBONE = 'backbone'


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
  rng: jax.Array  # Raw uint32 key data (kept for stochastic extensions; steps fold in `step`).


# --- Pieces ---------------------------------------------------------------------


def split_params(params: dict) -> tuple[dict, dict]:
  """(backbone, heads) parts of the model parameters."""
  heads = {k: v for k, v in params.items() if k != BACKBONE}
  return params[BACKBONE], heads


def make_optimizer(opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer of one parameter group, with the lr injectable per step.

  SGD and Adam get L2 weight decay through `optax.add_decayed_weights` (as MXNet,
  the authors' framework, and PyTorch's `weight_decay` do); 'adamw' is decoupled.
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
    raise ValueError(f"optimizer.name must be 'sgd', 'adam' or 'adamw', not {opt.name!r}.")

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
  """Base learning rate as a function of the step (the plateau scale multiplies it)."""
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
    raise ValueError(f'schedule.name must be plateau/step/cosine/constant, not {s.name!r}.')
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), base], [warmup])
  return base


def num_history_sources(config: ml_collections.ConfigDict) -> int:
  """How many prediction histories the run keeps."""
  attention = config.model.attention
  return hist.num_sources(len(attention.levels), attention.aggregation, config.history.source)


def history_std(state_history, indices, num_sources) -> jax.Array:
  return hist.std(state_history, indices) if num_sources else jnp.zeros((0, indices.shape[0], 1))


# One clu Collection class per set of loss terms (a new class per step would not merge).
_train_metrics = functools.lru_cache(metrics.make_train_metrics)


# --- Steps ----------------------------------------------------------------------


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
  """One optimisation step on a global batch; pure.

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
  images = input_pipeline.normalize(batch['image'], config.data)
  std = jax.lax.stop_gradient(history_std(state.history, batch['index'], num_sources))

  def loss_fn(params):
    outputs, new_model_state = model.apply(
      {'params': params, 'batch_stats': state.batch_stats},
      images,
      train=True,
      freeze_backbone=freeze_backbone,
      mutable=['batch_stats'],
    )
    loss, terms = losses.total_loss(
      outputs['primary_logits'],
      outputs['attention_logits'],
      batch['labels'],
      std,
      w_pos,
      w_neg,
      config.loss,
      unknown=config.data.unknown_label,
    )
    return loss, (outputs, new_model_state['batch_stats'], terms)

  (loss, (outputs, batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params
  )
  if config.optimizer.grad_clip_norm > 0:
    # One global norm over all trainable parameters.
    if freeze_backbone:
      grads = {**grads, BACKBONE: jax.tree.map(jnp.zeros_like, grads[BACKBONE])}
    grads, _ = optax.clip_by_global_norm(config.optimizer.grad_clip_norm).update(grads, None)

  lr = lr_fn(state.step) * state.plateau.scale
  backbone_params, head_params = split_params(state.params)
  backbone_grads, head_grads = split_params(grads)
  opt_state = dict(state.opt_state)
  tx = make_optimizer(config.optimizer)

  def apply(part_params, part_grads, part_state):
    part_state.hyperparams['learning_rate'] = lr
    updates, part_state = tx.update(part_grads, part_state, part_params)
    return optax.apply_updates(part_params, updates), part_state

  head_params, opt_state['heads'] = apply(head_params, head_grads, opt_state['heads'])
  if not freeze_backbone:
    backbone_params, opt_state[BACKBONE] = apply(
      backbone_params, backbone_grads, opt_state[BACKBONE]
    )
  params = {BACKBONE: backbone_params, **head_params}

  new_history = state.history
  if num_sources:
    epoch = state.step // steps_per_epoch
    probs = hist.source_probs(outputs, config.history.source)
    new_history = hist.update(
      state.history,
      batch['index'],
      probs,
      jnp.ones(batch['index'].shape, bool),
      epoch >= config.history.start_epoch,
    )

  new_state = state.replace(
    step=state.step + 1,
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    history=new_history,
  )
  step_metrics = {'loss': loss, 'learning_rate': lr, **terms}
  return new_state, step_metrics


def eval_step(
  state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module, config
) -> dict[str, jax.Array]:
  """Predictions of one padded eval batch; pure.

  Returns:
    `probs` [B,C], `labels`, `mask`, `index`, and per attention level the cell
    (normalised [ymin, xmin, ymax, xmax], [B,C,4]) at the argmax of the masks a
    (`cells_mask_<level>`) and of the confidence-weighted masks a*s
    (`cells_weighted_<level>`), for the pointing game.
  """
  images = input_pipeline.normalize(batch['image'], config.data)
  outputs = model.apply(
    {'params': state.params, 'batch_stats': state.batch_stats}, images, train=False
  )
  out = {
    'probs': jax.nn.sigmoid(outputs['logits']),
    'labels': batch['labels'],
    'mask': batch['mask'],
    'index': batch['index'],
  }
  if 'cue_boxes' in batch:  # Synthetic data: where each cue is, for the pointing game.
    out['cue_boxes'] = batch['cue_boxes']
  levels = tuple(config.model.attention.levels)
  for level, a, s in zip(levels, outputs['masks'], outputs['confidences'], strict=True):
    out[f'cells_mask_{level}'] = _argmax_cell(a)
    out[f'cells_weighted_{level}'] = _argmax_cell(a * s)
  return out


def _argmax_cell(masks: jax.Array) -> jax.Array:
  """[B,H,W,C] masks -> [B,C,4] normalised box of each attribute's argmax cell."""
  b, h, w, c = masks.shape
  flat = jnp.argmax(masks.reshape(b, h * w, c), axis=1)
  row, col = (flat // w).astype(jnp.float32), (flat % w).astype(jnp.float32)
  return jnp.stack([row / h, col / w, (row + 1) / h, (col + 1) / w], axis=-1)


# --- Set-up -----------------------------------------------------------------------


def create_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh(
    (len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
  )


def create_train_state(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  num_train: int,
  num_classes: int,
  sharding: jax.sharding.Sharding,
) -> TrainState:
  """A fresh train state, placed with `sharding` (replicated)."""
  size = config.data.image_size
  num_sources = num_history_sources(config)
  tx = make_optimizer(config.optimizer)

  def init():
    key = jax.random.key(config.seed)
    variables = model.init(key, jnp.zeros((1, size, size, 3)), train=False)
    params = variables['params']
    backbone, heads = split_params(params)
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),
      opt_state={BACKBONE: tx.init(backbone), 'heads': tx.init(heads)},
      # No attention, no history: an empty dict (Orbax cannot save zero-size arrays).
      history=(
        hist.init(num_sources, num_train, config.history.length, num_classes) if num_sources else {}
      ),
      plateau=make_plateau(config).init(jnp.zeros(())),
      best_metric=jnp.full((), -jnp.inf, jnp.float32),
      rng=jax.random.key_data(jax.random.fold_in(key, 1)),
    )

  return jax.jit(init, out_shardings=sharding)()


def load_pretrained(state: TrainState, path: str) -> TrainState:
  """Replaces the backbone parameters and statistics with converted weights."""
  from jaxattr import convert  # Imported here: only runs that load weights need it.

  backbone = convert.load_backbone(path)
  params = dict(state.params)
  batch_stats = dict(state.batch_stats)
  params[BACKBONE] = _checked_replace(state.params[BACKBONE], backbone['params'], path)
  if BACKBONE in state.batch_stats:
    batch_stats[BACKBONE] = _checked_replace(
      state.batch_stats[BACKBONE], backbone['batch_stats'], path
    )
  n = sum(x.size for x in jax.tree.leaves(backbone['params']))
  logging.info(
    'Loaded pretrained backbone from %s (%d parameters); heads keep their init.', path, n
  )
  return state.replace(params=params, batch_stats=batch_stats)


def _checked_replace(current, loaded, path):
  cur_struct = jax.tree.structure(current)
  if jax.tree.structure(loaded) != cur_struct:
    raise ValueError(f'{path}: the backbone in the file does not match config.model.backbone.')
  for a, b in zip(jax.tree.leaves(current), jax.tree.leaves(loaded), strict=True):
    if a.shape != b.shape:
      raise ValueError(f'{path}: shape {b.shape} in the file, {a.shape} in the model.')
  return jax.tree.map(
    lambda a, b: jax.device_put(jnp.asarray(b, a.dtype), a.sharding), current, loaded
  )


# --- Evaluation ---------------------------------------------------------------------


def evaluate(
  state: TrainState,
  p_eval_step: Callable,
  builder,
  config: ml_collections.ConfigDict,
  split: str,
  info: input_pipeline.DatasetInfo,
  data_sharding: jax.sharding.Sharding,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Metrics over every example of `split`; also returns the gathered predictions."""
  extra = ('cue_boxes',) if info.has_cue_boxes else ()
  batches, _ = input_pipeline.eval_batches(
    builder,
    config.data,
    split,
    global_batch=config.eval.batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    extra_keys=extra,
  )
  gathered: dict[str, list[np.ndarray]] = {}
  for batch in batches:
    out = jax.device_get(p_eval_step(state, _to_global(batch, data_sharding)))
    for k, v in out.items():
      gathered.setdefault(k, []).append(np.asarray(v))
  data = {k: np.concatenate(v) for k, v in gathered.items()}
  keep = data.pop('mask').astype(bool)
  data = {k: v[keep] for k, v in data.items()}
  if len(np.unique(data['index'])) != len(data['index']):
    raise AssertionError(f'Evaluation of {split} saw an example twice.')
  result = metrics.compute_metrics(
    data['probs'], data['labels'], info.attribute_names, threshold=config.eval.threshold
  )
  result['num_examples'] = int(len(data['index']))
  if 'cue_boxes' in data:
    result['pointing_game'] = pointing_game(data, info.attribute_names)
  return result, data


def pointing_game(data, names) -> dict[str, Any]:
  """Pointing-game accuracy per attention level and attribute (synthetic data)."""
  out = {}
  for key in sorted(k for k in data if k.startswith('cells_')):
    hits, counts = metrics.pointing_game_cells(data[key], data['cue_boxes'], data['labels'])
    per_attr = {n: (float(x) if c else None) for n, x, c in zip(names, hits, counts, strict=True)}
    valid = counts > 0
    overall = float(np.sum(hits[valid] * counts[valid]) / max(counts[valid].sum(), 1))
    out[key[len('cells_') :]] = {'overall': overall, 'per_attribute': per_attr}
  return out


# --- The loop -----------------------------------------------------------------------


def _to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def _selection_value(result: dict[str, Any], config) -> float:
  key = {'map': f'map_{config.eval.ap}', 'ma': 'ma', 'f1': 'f1'}[config.eval.metric]
  return float(result[key])


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


class _Writer:
  """clu writer (TensorBoard + log) plus a plain metrics.jsonl, process 0 only."""

  def __init__(self, workdir: Path):
    self.is_main = jax.process_index() == 0
    self.clu = metric_writers.create_default_writer(str(workdir), just_logging=not self.is_main)
    self.jsonl = open(workdir / 'metrics.jsonl', 'a') if self.is_main else None  # noqa: SIM115

  def scalars(self, step: int, scalars: dict[str, float]) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    self.clu.write_scalars(step, scalars)
    if self.jsonl:
      self.jsonl.write(metrics.to_json({'step': step, **scalars}) + '\n')
      self.jsonl.flush()

  def close(self) -> None:
    self.clu.close()
    if self.jsonl:
      self.jsonl.close()


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


@dataclasses.dataclass
class Experiment:
  """A run's data, model, mesh, fresh state and compiled steps (no I/O to the workdir)."""

  config: ml_collections.ConfigDict
  builder: Any
  info: input_pipeline.DatasetInfo
  mesh: jax.sharding.Mesh
  replicated: jax.sharding.Sharding
  data_sharding: jax.sharding.Sharding
  model: nn.Module
  state: TrainState
  steps_per_epoch: int
  total_steps: int
  freeze_steps: int
  train_steps: dict[bool, Callable]  # Compiled train step per stage (frozen or not).
  eval_step: Callable
  plateau_update: Callable

  def train_step(self, state: TrainState, batch: dict[str, np.ndarray], step: int):
    """Runs the compiled step of the stage that `step` (== state.step) is in.

    The step number comes from the host so choosing the stage never waits for the
    device (no sync between steps).
    """
    frozen = step < self.freeze_steps
    return self.train_steps[frozen](state, _to_global(batch, self.data_sharding))

  def train_batches(self, start_step: int = 0):
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
    return evaluate(
      state, self.eval_step, self.builder, self.config, split, self.info, self.data_sharding
    )


def create_experiment(config: ml_collections.ConfigDict, devices=None) -> Experiment:
  """Prepares the data (process 0), builds the model, state and compiled steps.

  Args:
    config: the run config.
    devices: devices of the mesh; default all devices of all processes.

  Returns:
    The `Experiment`.
  """
  builder = input_pipeline.get_builder(config.data)
  if jax.process_index() == 0:
    input_pipeline.prepare(builder, config.data)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices('dataset prepared')
    builder = input_pipeline.get_builder(config.data)
  info = input_pipeline.get_dataset_info(builder, config.data)
  num_train = info.split_sizes[config.data.train_split]
  logging.info(
    'Dataset %s: %s; %d attributes.', builder.info.full_name, info.split_sizes, info.num_classes
  )

  mesh = create_mesh(devices)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  global_batch = config.train.batch_size
  if global_batch % mesh.size or config.eval.batch_size % mesh.size:
    raise ValueError(
      f'train.batch_size ({global_batch}) and eval.batch_size ({config.eval.batch_size}) '
      f'must divide over {mesh.size} devices.'
    )
  spe = input_pipeline.steps_per_epoch(num_train, global_batch)
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
    lr_fn=make_lr_fn(config, spe),
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
  p_eval_step = jax.jit(
    functools.partial(eval_step, model=model, config=config),
    in_shardings=(replicated, data_sharding),
    out_shardings=replicated,
  )
  plateau_tx = make_plateau(config)
  plateau_update = jax.jit(
    lambda s, v: plateau_tx.update(jnp.zeros(()), s, value=v)[1], out_shardings=replicated
  )
  return Experiment(
    config=config,
    builder=builder,
    info=info,
    mesh=mesh,
    replicated=replicated,
    data_sharding=data_sharding,
    model=model,
    state=state,
    steps_per_epoch=spe,
    total_steps=total_steps,
    freeze_steps=int(config.train.freeze_backbone_epochs * spe),
    train_steps=train_steps,
    eval_step=p_eval_step,
    plateau_update=plateau_update,
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, devices=None
) -> dict[str, Any]:
  """Trains, evaluates every epoch on the validation split, tests the best state.

  Re-running with the same workdir resumes from the latest checkpoint.

  Args:
    config: the run config (see configs/default.py).
    workdir: where checkpoints, logs, metrics and results go.
    devices: devices of the mesh; default all.

  Returns:
    The final results (also written to workdir/results.json and results.md).
  """
  start_time = time.time()
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2) + '\n')

  ex = create_experiment(config, devices)
  if is_main:  # So the tools restore a run without its dataset: names, train positive ratios.
    names = {'names': ex.info.attribute_names, 'positive_ratio': ex.info.positive_ratio.tolist()}
    (workdir / 'attributes.json').write_text(json.dumps(names) + '\n')
  state, spe, total_steps = ex.state, ex.steps_per_epoch, ex.total_steps
  ckpt = checkpoints.Checkpointer(workdir, keep=config.train.keep_checkpoints, cleanup_tmp=True)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    logging.info('Resumed at step %d.', int(state.step))
  elif config.model.pretrained:
    state = load_pretrained(state, config.model.pretrained)

  writer = _Writer(workdir)
  report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer.clu)
  stop = _Stop(multiprocess=jax.process_count() > 1)
  step = int(state.step)
  batches = ex.train_batches(start_step=step)
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

      end_of_epoch = step % spe == 0
      if step % config.train.log_every_steps == 0 or end_of_epoch or step == total_steps:
        _check_finite(window)
        window = []
        summary = {f'train/{k}': v for k, v in collection.compute().items()}
        summary['epoch'] = step / spe
        writer.scalars(step, summary)
        collection = None

      if end_of_epoch and (step // spe) % config.eval.every_epochs == 0:
        with report.timed('eval'):
          result, _ = ex.evaluate(state, config.data.eval_split)
        value = _selection_value(result, config)
        writer.scalars(step, {f'val/{k}': v for k, v in _flat_scalars(result).items()})
        if config.schedule.name == 'plateau':
          state = state.replace(plateau=ex.plateau_update(state.plateau, np.float32(-value)))
        if value > float(state.best_metric):
          # Placed like the rest of the state: with several processes a host-local
          # array could not be checkpointed (every process holds the same value).
          best = jax.device_put(np.float32(value), ex.replicated)
          state = state.replace(best_metric=best)
          ckpt.save_best(step, state, value)
          logging.info('Step %d: new best validation %s = %.4f', step, config.eval.metric, value)

      # Every process polls the agreed preemption step every step (JAX requires it).
      preempted = stop.requested() or ckpt.reached_preemption(step)
      if (
        step % config.train.checkpoint_every_steps == 0
        or end_of_epoch
        or step == total_steps
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
  finally:
    stop.restore()
    ckpt.wait()

  # Test the best state once, at the end (the current one if no epoch finished).
  results = {'workdir': str(workdir), 'dataset': ex.builder.info.full_name, 'steps': step}
  best = state
  if ckpt.best_step() is not None:
    best = ckpt.restore(state, which='best')
    results['best_step'] = int(ckpt.best_step())
  with report.timed('test'):
    results['validation'], _ = ex.evaluate(best, config.data.eval_split)
    results['test'], _ = ex.evaluate(best, config.data.test_split)
  if config.eval.attention_grid and is_main and config.model.attention.levels:
    results['attention_grid'] = str(attention_grid(ex, best, workdir / 'attention.png'))
  results['wall_time_s'] = time.time() - start_time
  writer.scalars(step, {f'test/{k}': v for k, v in _flat_scalars(results['test']).items()})
  writer.close()
  if is_main:
    (workdir / 'results.json').write_text(metrics.to_json(results, indent=2) + '\n')
    (workdir / 'results.md').write_text(results_markdown(results, config))
    logging.info('Results:\n%s', results_markdown(results, config))
  ckpt.close()
  return results


def attention_grid(ex: Experiment, state: TrainState, path: Path, max_scan: int = 512) -> Path:
  """Draws the attention masks of both levels over test images (README, demo).

  Columns: two frequent and the rarer attributes; rows: for each column, the
  first test image where that attribute is present.
  """
  from jaxattr import visualize  # matplotlib only when a grid is asked for.

  config, names = ex.config, ex.info.attribute_names
  order = np.argsort(ex.info.positive_ratio)  # Rarest first.
  columns = [names[i] for i in (*order[:4], *order[-2:])]
  ds = ex.builder.as_dataset(split=config.data.test_split, shuffle_files=False).take(max_scan)
  chosen, used = [], set()
  for example in ds.as_numpy_iterator():
    hits = [c for c in columns if example['labels'][names.index(c)] == 1 and c not in used]
    if hits:
      used.add(hits[0])
      chosen.append(example)
    if len(used) == len(columns):
      break
  images = np.stack(
    [input_pipeline.eval_preprocess(e['image'], config.data).numpy() for e in chosen]
  )
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  x = input_pipeline.normalize(jnp.asarray(images), config.data)
  out = jax.device_get(ex.model.apply(jax.device_get(variables), x, train=False))
  return visualize.attention_grid(
    list(images),
    list(out['masks']),
    np.asarray(jax.nn.sigmoid(out['logits'])),
    np.stack([e['labels'] for e in chosen]),
    names,
    columns,
    path,
    level_names=[str(level) for level in config.model.attention.levels],
  )


def _flat_scalars(result: dict[str, Any]) -> dict[str, float]:
  keys = ('map_voc', 'map_sklearn', 'ma', 'acc', 'prec', 'rec', 'f1')
  return {k: result[k] for k in keys if k in result}


def results_markdown(results: dict[str, Any], config) -> str:
  """The overall and per-attribute test (and validation) metrics as markdown."""
  test, val = results['test'], results['validation']
  lines = [
    f'# Results: {results["dataset"]}',
    '',
    f'Best validation step {results.get("best_step", results["steps"])} of {results["steps"]}; '
    f'wall time {results["wall_time_s"]:.0f} s.',
    '',
    '| split | mAP (voc) | mAP (sklearn) | mA | Acc | Prec | Rec | F1 |',
    '|---|---|---|---|---|---|---|---|',
  ]
  for name, r in (('validation', val), ('test', test)):
    cells = ' | '.join(f'{100 * r[k]:.2f}' for k in _flat_scalars(r))
    lines.append(f'| {name} | {cells} |')
  lines += [
    '',
    '| attribute (test) | AP (voc) | AP (sklearn) | mA | Prec | Rec | F1 | positives |',
    '|---|---|---|---|---|---|---|---|',
  ]
  for name, r in test['per_attribute'].items():
    vals = [r['ap_voc'], r['ap_sklearn'], r['ma'], r['precision'], r['recall'], r['f1']]
    cells = ' | '.join(f'{100 * v:.2f}' for v in vals)
    lines.append(f'| {name} | {cells} | {r["positives"]} |')
  if 'pointing_game' in test:
    lines += ['', '| pointing game (test) | overall |', '|---|---|']
    for name, r in test['pointing_game'].items():
      lines.append(f'| {name} | {100 * r["overall"]:.1f} |')
  return '\n'.join(lines) + '\n'
