"""Restoring a trained run and running its model on batches of images, compiled once.

Shared by `jaxattr.evaluate`, `jaxattr.predict` and `jaxattr.export`. A run's workdir
holds everything needed to rebuild the model without its dataset:

  config.json       the resolved config (`load_config`)
  attributes.json   attribute names and train positive ratios (`load_attributes`;
                    older runs: the per-attribute keys of results.json)
  best/<step>       the best state on the validation split; checkpoints/<step> the latest
  thresholds.json   optional per-attribute thresholds (`jaxattr.evaluate --tune_thresholds`)

Only `params` and `batch_stats` are read from a checkpoint (Orbax partial restore),
so the optimizer state and the prediction history never reach memory.

`Predictor` runs an inference function on images of one shape, padded to one fixed
batch size, so it compiles once; batches are dispatched asynchronously and the host
prepares the next batch while the device computes the current one.
"""

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIRS = {'latest': 'checkpoints', 'best': 'best'}
CHECKPOINT_CHOICES = ('best', 'latest', 'auto')
THRESHOLDS_FILE = 'thresholds.json'

K = TypeVar('K')


class RunError(Exception):
  """A workdir that cannot be used (missing, no checkpoint, no attribute names)."""


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
  """Which checkpoint of a run: 'best' or 'latest', and its step."""

  which: str
  step: int


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples of configs/default.py; dicts recursively."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The resolved config a run saved in `workdir/config.json`.

  Args:
    workdir: the run's workdir.

  Returns:
    The config, with JSON lists turned back into tuples (e.g. `attention.levels`).

  Raises:
    RunError: if the workdir or its config.json is missing.
  """
  workdir = Path(workdir)
  path = workdir / 'config.json'
  if not workdir.is_dir():
    raise RunError(f'{workdir}: no such workdir.')
  if not path.is_file():
    raise RunError(f'{path}: missing; is {workdir} the workdir of a jaxattr run?')
  return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))


def load_attributes(workdir: str | Path) -> tuple[list[str], np.ndarray | None]:
  """Attribute names (and train positive ratios if known) of a run.

  Read from `attributes.json` (written when training starts); runs that predate it
  fall back to the per-attribute keys of `results.json` (written at the end).

  Args:
    workdir: the run's workdir.

  Returns:
    (names, positive ratios float32 [C] or None).

  Raises:
    RunError: if neither file is there.
  """
  workdir = Path(workdir)
  path = workdir / 'attributes.json'
  if path.is_file():
    data = json.loads(path.read_text())
    ratio = data.get('positive_ratio')
    return list(data['names']), None if ratio is None else np.asarray(ratio, np.float32)
  results = workdir / 'results.json'
  if results.is_file():
    return list(json.loads(results.read_text())['test']['per_attribute']), None
  raise RunError(f'{workdir}: neither attributes.json nor results.json; attribute names unknown.')


def _manager(workdir: Path, which: str) -> ocp.CheckpointManager | None:
  directory = workdir / CHECKPOINT_DIRS[which]
  if not directory.is_dir():
    return None
  return ocp.CheckpointManager(
    directory.absolute(),
    item_handlers=ocp.PyTreeCheckpointHandler(),
    options=ocp.CheckpointManagerOptions(create=False),
  )


def checkpoint_step(workdir: str | Path, which: str) -> int | None:
  """The step of the run's 'best' or 'latest' checkpoint, None if there is none."""
  manager = _manager(Path(workdir), which)
  if manager is None:
    return None
  try:
    # The best directory keeps exactly one checkpoint: its newest is the best.
    return manager.latest_step()
  finally:
    manager.close()


def resolve_checkpoint(workdir: str | Path, which: str = 'auto') -> CheckpointRef:
  """The checkpoint to load: 'best', 'latest', or 'auto' (best, else latest).

  Args:
    workdir: the run's workdir.
    which: 'best', 'latest' or 'auto'.

  Returns:
    The `CheckpointRef`.

  Raises:
    RunError: if the workdir has no such checkpoint.
  """
  if which not in CHECKPOINT_CHOICES:
    raise ValueError(f'checkpoint must be one of {CHECKPOINT_CHOICES}, not {which!r}.')
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise RunError(f'{workdir}: no such workdir.')
  for candidate in ('best', 'latest') if which == 'auto' else (which,):
    step = checkpoint_step(workdir, candidate)
    if step is not None:
      return CheckpointRef(candidate, step)
  where = ' or '.join(str(workdir / CHECKPOINT_DIRS[w]) for w in ('best', 'latest'))
  if which == 'auto':
    raise RunError(f'{workdir}: no checkpoint in {where}.')
  raise RunError(f'{workdir}: no {which} checkpoint in {workdir / CHECKPOINT_DIRS[which]}.')


def restore_variables(
  workdir: str | Path, ref: CheckpointRef, sharding: jax.sharding.Sharding | None = None
) -> dict[str, Any]:
  """`params` and `batch_stats` of a checkpoint, nothing else (partial restore).

  Args:
    workdir: the run's workdir.
    ref: which checkpoint (`resolve_checkpoint`).
    sharding: where the arrays go; default the first device.

  Returns:
    `{'params': ..., 'batch_stats': ...}`, the variables of `model.apply`.
  """
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  manager = _manager(Path(workdir), ref.which)
  if manager is None:
    raise RunError(f'{workdir}: no {ref.which} checkpoint.')
  try:
    saved = manager.item_metadata(ref.step).tree
    target = {
      key: jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), saved[key]
      )
      for key in ('params', 'batch_stats')
    }
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), target)
    return manager.restore(
      ref.step,
      args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
    )
  finally:
    manager.close()


def load_thresholds(
  workdir: str | Path, names: Sequence[str], ref: CheckpointRef
) -> np.ndarray | None:
  """Tuned per-attribute thresholds of `ref`'s checkpoint, if `evaluate` wrote them.

  Thresholds tuned for another checkpoint are not used (they belong to other weights).

  Args:
    workdir: the run's workdir.
    names: the attribute names, in model order.
    ref: the checkpoint the thresholds must have been tuned for.

  Returns:
    float64 [C], or None.
  """
  path = Path(workdir) / THRESHOLDS_FILE
  if not path.is_file():
    return None
  data = json.loads(path.read_text())
  if data.get('step') != ref.step or list(data['thresholds']) != list(names):
    return None
  return np.asarray([data['thresholds'][n] for n in names], np.float64)


# --- The inference function --------------------------------------------------------


def make_infer_fn(model, data_config: ml_collections.ConfigDict) -> Callable:
  """The pure inference function of a model: uint8 images -> probabilities and masks.

  Args:
    model: the `AttributeModel`.
    data_config: `config.data` (normalisation statistics).

  Returns:
    `fn(variables, images uint8 [B,S,S,3]) -> {'probs': [B,C], 'masks': (a per
    level, [B,h,w,C]), 'confidences': (s per level)}`.
  """
  from jaxattr.data import input_pipeline  # Imported here: exported models never need it.

  def infer(variables, images):
    outputs = model.apply(variables, input_pipeline.normalize(images, data_config), train=False)
    return {
      'probs': jax.nn.sigmoid(outputs['logits']),
      'masks': tuple(outputs['masks']),
      'confidences': tuple(outputs['confidences']),
    }

  return infer


def _index_tree(tree: Any, i: int) -> Any:
  return jax.tree.map(lambda x: x[i], tree)


class Predictor:
  """Runs an inference function on fixed-size padded batches (one compilation).

  Attributes:
    names: attribute names, in model order.
    image_size: S of the square uint8 input.
    levels: attention levels, the order of `masks` and `confidences`.
    thresholds: per-attribute decision thresholds [C] (`p > t` is a positive).
    batch_size: the fixed batch size every call is padded to.
    description: where the model comes from (for messages).
  """

  def __init__(
    self,
    infer_fn: Callable,
    variables: Any,
    *,
    names: Sequence[str],
    image_size: int,
    levels: Sequence[int],
    thresholds: np.ndarray | float = 0.5,
    batch_size: int = 32,
    device: jax.Device | None = None,
    description: str = '',
  ):
    """Creates a predictor.

    Args:
      infer_fn: `fn(variables, uint8 [B,S,S,3]) -> {'probs', 'masks', 'confidences'}`.
      variables: its first argument (placed on `device` once).
      names: attribute names.
      image_size: S.
      levels: attention levels of the masks.
      thresholds: a scalar or [C] decision thresholds.
      batch_size: fixed batch size.
      device: the device to run on; default the first.
      description: where the model comes from.
    """
    if batch_size < 1:
      raise ValueError(f'batch_size must be positive, not {batch_size}.')
    self.names = list(names)
    self.image_size = int(image_size)
    self.levels = tuple(int(level) for level in levels)
    self.thresholds = np.broadcast_to(np.asarray(thresholds, np.float64), (len(self.names),)).copy()
    self.batch_size = int(batch_size)
    self.description = description
    self._device = device or jax.devices()[0]
    self._variables = jax.device_put(variables, self._device)
    self._fn = jax.jit(infer_fn)

  @classmethod
  def from_workdir(
    cls,
    workdir: str | Path,
    checkpoint: str = 'auto',
    batch_size: int = 32,
    tuned_thresholds: bool = True,
  ) -> 'Predictor':
    """A predictor for a run's checkpoint (no dataset needed).

    Args:
      workdir: the run's workdir.
      checkpoint: 'best', 'latest' or 'auto' (best, else latest).
      batch_size: fixed batch size.
      tuned_thresholds: use the run's tuned thresholds of that checkpoint if there
        are any, else `config.eval.threshold`.

    Returns:
      The predictor.
    """
    from jaxattr.models import model as model_lib  # Only workdir predictors need the model.

    config = load_config(workdir)
    ref = resolve_checkpoint(workdir, checkpoint)
    names, _ = load_attributes(workdir)
    model = model_lib.create_model(config.model, len(names))
    device = jax.devices()[0]
    variables = restore_variables(workdir, ref, jax.sharding.SingleDeviceSharding(device))
    thresholds = load_thresholds(workdir, names, ref) if tuned_thresholds else None
    return cls(
      make_infer_fn(model, config.data),
      variables,
      names=names,
      image_size=config.data.image_size,
      levels=config.model.attention.levels,
      thresholds=config.eval.threshold if thresholds is None else thresholds,
      batch_size=batch_size,
      device=device,
      description=f'{workdir} ({ref.which} checkpoint, step {ref.step})',
    )

  @classmethod
  def from_variables(
    cls,
    model,
    variables: dict[str, Any],
    config: ml_collections.ConfigDict,
    names: Sequence[str],
    batch_size: int = 32,
  ) -> 'Predictor':
    """A predictor for a model already in memory (e.g. the best state at the end of a run).

    Args:
      model: the `AttributeModel`.
      variables: `{'params': ..., 'batch_stats': ...}`.
      config: the run config (`data` for the input, `eval.threshold`).
      names: attribute names.
      batch_size: fixed batch size.

    Returns:
      The predictor.
    """
    return cls(
      make_infer_fn(model, config.data),
      variables,
      names=names,
      image_size=config.data.image_size,
      levels=config.model.attention.levels,
      thresholds=config.eval.threshold,
      batch_size=batch_size,
      description='in-memory model',
    )

  def _dispatch(self, images: list[np.ndarray]):
    batch = np.zeros((self.batch_size, self.image_size, self.image_size, 3), np.uint8)
    for i, image in enumerate(images):
      if image.shape != batch.shape[1:]:
        raise ValueError(f'image {i} has shape {image.shape}, expected {batch.shape[1:]}.')
      batch[i] = image
    # Asynchronous: returns before the device has finished.
    return self._fn(self._variables, jax.device_put(batch, self._device))

  def run(self, items: Iterable[tuple[K, np.ndarray]]) -> Iterator[tuple[K, dict[str, Any]]]:
    """Predictions for a stream of (key, image), in order, batched and pipelined.

    Args:
      items: (key, uint8 [S,S,3]) pairs; read lazily, one batch ahead.

    Yields:
      (key, {'probs': float32 [C], 'masks': ([h,w,C] per level),
      'confidences': (...)}) as numpy arrays.
    """
    pending = None
    keys: list[K] = []
    images: list[np.ndarray] = []

    def finish(out, batch_keys):
      out = jax.device_get(out)
      for i, key in enumerate(batch_keys):
        yield key, _index_tree(out, i)

    for key, image in items:
      keys.append(key)
      images.append(np.asarray(image))
      if len(images) == self.batch_size:
        out = self._dispatch(images)
        if pending is not None:
          yield from finish(*pending)
        pending = (out, keys)
        keys, images = [], []
    if images:
      out = self._dispatch(images)
      if pending is not None:
        yield from finish(*pending)
      pending = (out, keys)
    if pending is not None:
      yield from finish(*pending)

  def __call__(self, images: np.ndarray) -> dict[str, Any]:
    """Predictions for a stack of images.

    Args:
      images: uint8 [N,S,S,3].

    Returns:
      {'probs': float32 [N,C], 'masks': ([N,h,w,C] per level), 'confidences': (...)}.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f'images must be uint8 [N,S,S,3], got {images.dtype} {images.shape}.')
    outs = []
    for start in range(0, len(images), self.batch_size):
      chunk = list(images[start : start + self.batch_size])
      outs.append((self._dispatch(chunk), len(chunk)))
    if not outs:
      raise ValueError('no images.')
    outs = [jax.tree.map(lambda x, n=n: np.asarray(x)[:n], jax.device_get(o)) for o, n in outs]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

  def decisions(self, probs: np.ndarray) -> np.ndarray:
    """`probs > thresholds` (strict, as the metrics), per attribute."""
    return np.asarray(probs) > self.thresholds

  @property
  def num_batches_compiled(self) -> int:
    """How many shapes the inference function was compiled for (1 when batching works)."""
    return self._fn._cache_size()  # noqa: SLF001  (jax.jit's cache of compiled shapes)
