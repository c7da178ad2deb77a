"""The model's inference function, and running it on batches of images, compiled once.

`make_infer_fn` is the one inference path of the repository: the end-of-run
attention grid, `jaxattr.predict`, `jaxattr.export` and the evaluation (which
adds the pointing game's argmax cells, `argmax_cells`) all call it. A run's
workdir is read through `jaxattr.run`.

`Predictor` runs an inference function on images of one shape, padded to one fixed
batch size, so it compiles once; batches are dispatched asynchronously and the host
prepares the next batch while the device computes the current one.
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxattr import schema
from jaxattr.run import files, restore

K = TypeVar('K')


# --- The inference function --------------------------------------------------------


def normalize(images: jax.Array, data_config: ml_collections.ConfigDict) -> jax.Array:
  """uint8 images -> ImageNet-normalised float32, on device (inside the compiled steps).

  Args:
    images: uint8 [..., 3].
    data_config: `config.data` (`mean` and `std` in [0, 1] units).

  Returns:
    float32, same shape.
  """
  mean = jnp.asarray(data_config.mean, jnp.float32) * 255.0
  std = jnp.asarray(data_config.std, jnp.float32) * 255.0
  return (images.astype(jnp.float32) - mean) / std


def make_infer_fn(model, data_config: ml_collections.ConfigDict) -> Callable:
  """The pure inference function of a model: uint8 images -> probabilities and masks.

  Args:
    model: the `AttributeModel`.
    data_config: `config.data` (normalisation statistics).

  Returns:
    `fn(variables, images uint8 [B,H,W,3]) -> {'probs': [B,C], 'masks': (a per
    level, [B,h,w,C]), 'confidences': (s per level)}`.
  """

  def infer(variables, images):
    outputs = model.apply(variables, normalize(images, data_config), train=False)
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
    image_size: (height, width) of the uint8 input.
    pad_fill: the uint8 pixel a crop is padded with to the input's aspect before it is
      resized (`schema.pad_fill`), or None: crops are stretched.
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
    image_size: int | Sequence[int],
    levels: Sequence[int],
    thresholds: np.ndarray | float = 0.5,
    batch_size: int = 32,
    device: jax.Device | None = None,
    description: str = '',
    pad_fill: Sequence[int] | None = None,
  ):
    """Creates a predictor.

    Args:
      infer_fn: `fn(variables, uint8 [B,H,W,3]) -> {'probs', 'masks', 'confidences'}`.
      variables: its first argument (placed on `device` once).
      names: attribute names.
      image_size: S (S x S) or (H, W).
      levels: attention levels of the masks.
      thresholds: a scalar or [C] decision thresholds.
      batch_size: fixed batch size.
      device: the device to run on; default the first.
      description: where the model comes from.
      pad_fill: see the attribute.
    """
    if batch_size < 1:
      raise ValueError(f'batch_size must be positive, not {batch_size}.')
    self.names = list(names)
    self.image_size = schema.size_hw(image_size)
    self.pad_fill = None if pad_fill is None else tuple(int(v) for v in pad_fill)
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

    config = files.load_config(workdir)
    ref = restore.resolve_checkpoint(workdir, checkpoint)
    names, _ = files.load_attributes(workdir)
    model = model_lib.create_model(config.model, len(names))
    device = jax.devices()[0]
    variables = restore.restore_variables(workdir, ref, jax.sharding.SingleDeviceSharding(device))
    return cls.from_variables(
      model,
      variables,
      config,
      names,
      batch_size,
      thresholds=files.load_thresholds(workdir, names, ref) if tuned_thresholds else None,
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
    *,
    thresholds: np.ndarray | None = None,
    device: jax.Device | None = None,
    description: str = 'in-memory model',
  ) -> 'Predictor':
    """A predictor for a model already in memory (e.g. the best state at the end of a run).

    Args:
      model: the `AttributeModel`.
      variables: `{'params': ..., 'batch_stats': ...}`.
      config: the run config (`data` for the input, `eval.threshold`).
      names: attribute names.
      batch_size: fixed batch size.
      thresholds: [C] decision thresholds; default `config.eval.threshold`.
      device: the device to run on; default the first.
      description: where the model comes from.

    Returns:
      The predictor.
    """
    return cls(
      make_infer_fn(model, config.data),
      variables,
      names=names,
      image_size=schema.image_hw(config.data),
      levels=config.model.attention.levels,
      thresholds=config.eval.threshold if thresholds is None else thresholds,
      batch_size=batch_size,
      device=device,
      description=description,
      pad_fill=schema.pad_fill(config.data),
    )

  def _dispatch(self, images: list[np.ndarray]):
    batch = np.zeros((self.batch_size, *self.image_size, 3), np.uint8)
    for i, image in enumerate(images):
      if image.shape != batch.shape[1:]:
        raise ValueError(f'image {i} has shape {image.shape}, expected {batch.shape[1:]}.')
      batch[i] = image
    # Asynchronous: returns before the device has finished.
    return self._fn(self._variables, jax.device_put(batch, self._device))

  def run(self, items: Iterable[tuple[K, np.ndarray]]) -> Iterator[tuple[K, dict[str, Any]]]:
    """Predictions for a stream of (key, image), in order, batched and pipelined.

    Args:
      items: (key, uint8 [H,W,3]) pairs; read lazily, one batch ahead.

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
      images: uint8 [N,H,W,3].

    Returns:
      {'probs': float32 [N,C], 'masks': ([N,h,w,C] per level), 'confidences': (...)}.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f'images must be uint8 [N,H,W,3], got {images.dtype} {images.shape}.')
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
