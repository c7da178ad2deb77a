"""What every evaluator shares: the eval step, the exact gather, the dataset and the mesh.

An evaluator (`jaxattr.evaluators`) scores a model's `variables` ({'params',
'batch_stats'}), never a train state, so the training loop, `jaxattr.evaluate` and
the experiments hand it the same thing.

Exactness (docs/method.md, "Evaluation"):
  * Every example of the split is predicted exactly once: the last batch is padded
    and its padding rows carry `mask` False (`input_pipeline.eval_batches`).
  * The gathered predictions are sorted by example index before any metric. The
    VOC AP breaks score ties by input order, and the gather order is the order of
    the per-process shards, so without the sort the headline mAP could change
    with the number of processes when scores tie (a saturated sigmoid gives
    exactly 1.0).
  * The eval step runs the one inference function of the repository
    (`inference.make_infer_fn`) and reduces each attention mask to its argmax cell
    on device (`metrics.argmax_cells`); the pointing game and its chance level are
    scored from those cells with one cell rule (`metrics.cell_boxes`).

Data is read through `jaxattr.data.input_pipeline` (TensorFlow), imported only by
the functions that read a split, so the eval step and the metrics run without it.
"""

import abc
import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import linen as nn

from jaxattr import inference, metrics, schema, sharding
from jaxattr.models import model as model_lib

# The split roles an evaluator's `split` may name, and the config field holding each.
SPLIT_ROLES = {'train': 'train_split', 'validation': 'eval_split', 'test': 'test_split'}


def eval_step(
  variables: dict[str, Any],
  batch: dict[str, jax.Array],
  *,
  infer_fn: Callable,
  levels: Sequence[int],
) -> dict[str, jax.Array]:
  """Predictions of one padded eval batch; pure.

  Args:
    variables: the model's {'params', 'batch_stats'}.
    batch: `image` uint8 [B,S,S,3], `labels` [B,C], `mask` [B], `index` [B] and,
      on synthetic data, `cue_boxes` [B,C,4].
    infer_fn: `inference.make_infer_fn(model, config.data)`.
    levels: the attention levels, the order of the model's masks.

  Returns:
    `probs` [B,C], `labels`, `mask`, `index`; with `cue_boxes`, also the boxes and
    per level the argmax cell (flat row-major index, [B,C]) of the masks a
    (`cells_mask_<level>`) and of the confidence-weighted masks a*s
    (`cells_weighted_<level>`), for the pointing game.
  """
  out = infer_fn(variables, batch['image'])
  result = {k: batch[k] for k in ('labels', 'mask', 'index')}
  result['probs'] = out['probs']
  if 'cue_boxes' in batch:  # Synthetic data: where each cue is, for the pointing game.
    result['cue_boxes'] = batch['cue_boxes']
    for level, a, s in zip(levels, out['masks'], out['confidences'], strict=True):
      result[f'cells_mask_{level}'] = metrics.argmax_cells(a)
      result[f'cells_weighted_{level}'] = metrics.argmax_cells(a * s)
  return result


def gather(outputs: Iterable[dict[str, np.ndarray]], split: str = '') -> dict[str, np.ndarray]:
  """The eval-step outputs of a whole split: padding dropped, sorted by example index.

  Args:
    outputs: the host copies of every eval-step output, in any order.
    split: its name, for the error message.

  Returns:
    The concatenated arrays of the real examples (no `mask`), ordered by `index`.

  Raises:
    AssertionError: if an example was predicted twice.
  """
  parts: dict[str, list[np.ndarray]] = {}
  for out in outputs:
    for k, v in out.items():
      parts.setdefault(k, []).append(np.asarray(v))
  data = {k: np.concatenate(v) for k, v in parts.items()}
  keep = data.pop('mask').astype(bool)
  data = {k: v[keep] for k, v in data.items()}
  order = np.argsort(data['index'], kind='stable')
  data = {k: v[order] for k, v in data.items()}
  if np.any(data['index'][1:] == data['index'][:-1]):
    raise AssertionError(f'Evaluation of {split} saw an example twice.')
  return data


def open_dataset(config: ml_collections.ConfigDict):
  """The prepared TFDS builder and its `DatasetInfo` (process 0 prepares, all wait).

  Args:
    config: the run config.

  Returns:
    (builder, info).
  """
  from jaxattr.data import input_pipeline

  builder = input_pipeline.get_builder(config.data)
  if jax.process_index() == 0:
    input_pipeline.prepare(builder, config.data)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices('dataset prepared')
    builder = input_pipeline.get_builder(config.data)
  info = input_pipeline.get_dataset_info(builder, config.data)
  return builder, info


def split_name(data_config: ml_collections.ConfigDict, split: str) -> str:
  """The TFDS split of a role ('train', 'validation', 'test'); any other name as given."""
  return data_config[SPLIT_ROLES[split]] if split in SPLIT_ROLES else split


@dataclasses.dataclass
class Context:
  """What the evaluators of a run share: dataset, model, mesh and the compiled eval step."""

  config: ml_collections.ConfigDict
  builder: Any
  info: Any  # input_pipeline.DatasetInfo
  model: nn.Module
  mesh: jax.sharding.Mesh

  def __post_init__(self):
    sharding.check_divides(self.mesh, **{'eval.batch_size': self.config.eval.batch_size})
    self.infer_fn = inference.make_infer_fn(self.model, self.config.data)
    self.step = self.compile(
      functools.partial(
        eval_step, infer_fn=self.infer_fn, levels=tuple(self.config.model.attention.levels)
      )
    )

  @property
  def names(self) -> list[str]:
    return list(self.info.attribute_names)

  def compile(self, fn: Callable) -> Callable:
    """`fn(variables, batch) -> outputs` jitted: variables replicated, batch split on 'data'."""
    return jax.jit(
      fn,
      in_shardings=(sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)),
      out_shardings=sharding.replicated(self.mesh),
    )

  def grids(self, variables: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """(h, w) of the attention masks per level (shapes only, nothing runs)."""
    image = jax.ShapeDtypeStruct((1, *schema.image_hw(self.config.data), 3), np.uint8)
    masks = jax.eval_shape(self.infer_fn, variables, image)['masks']
    levels = self.config.model.attention.levels
    return {int(lv): tuple(m.shape[1:3]) for lv, m in zip(levels, masks, strict=True)}

  def predictions(
    self, variables: dict[str, Any], split: str, step: Callable | None = None, limit: int = 0
  ) -> dict[str, np.ndarray]:
    """The outputs of `step` (default the eval step) on every example of `split`, gathered.

    Args:
      variables: the model's {'params', 'batch_stats'}, replicated on the mesh.
      split: a split role or TFDS split name.
      step: a function compiled by `compile` whose outputs carry `mask` and `index`.
      limit: > 0 stops after the batches that hold the first `limit` examples.

    Returns:
      `gather`'s arrays.
    """
    from jaxattr.data import input_pipeline

    name = split_name(self.config.data, split)
    batches, _ = input_pipeline.eval_batches(
      self.builder,
      self.config.data,
      name,
      global_batch=self.config.eval.batch_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      extra_keys=('cue_boxes',) if self.info.has_cue_boxes else (),
    )
    step = step or self.step
    data_sharding = sharding.batch_sharded(self.mesh)
    outputs, seen = [], 0
    for batch in batches:
      outputs.append(jax.device_get(step(variables, sharding.to_global(batch, data_sharding))))
      seen += self.config.eval.batch_size
      if limit and seen >= limit:
        break
    return gather(outputs, name)


def create_context(config: ml_collections.ConfigDict, devices=None) -> Context:
  """The `Context` of a config: its dataset, its model and a mesh over `devices`."""
  builder, info = open_dataset(config)
  model = model_lib.create_model(config.model, info.num_classes)
  return Context(config, builder, info, model, sharding.create_mesh(devices))


def attention_grid(
  ctx: Context, variables: dict[str, Any], path: Path, max_scan: int = 512
) -> Path:
  """Draws the attention masks of every level over test images (README, demo).

  Columns: the four rarest and the two most frequent attributes; rows: for each
  column, the first test image where that attribute is present. The masks come
  from the same inference function as `jaxattr.predict` (`inference.Predictor`).

  Args:
    ctx: the run's evaluation context (dataset, model, config).
    variables: the model's {'params', 'batch_stats'}.
    path: the PNG to write.
    max_scan: test images searched for the columns' attributes.

  Returns:
    `path`.
  """
  from jaxattr import visualize  # matplotlib only when a grid is asked for.
  from jaxattr.data import input_pipeline

  config, info = ctx.config, ctx.info
  names = info.attribute_names
  order = np.argsort(info.positive_ratio)  # Rarest first.
  columns = [names[i] for i in (*order[:4], *order[-2:])]
  ds = ctx.builder.as_dataset(split=config.data.test_split, shuffle_files=False)
  chosen, used = [], set()
  for example in ds.take(max_scan).as_numpy_iterator():
    hits = [c for c in columns if example['labels'][names.index(c)] == 1 and c not in used]
    if hits:
      used.add(hits[0])
      chosen.append(example)
    if len(used) == len(columns):
      break
  images = np.stack(
    [input_pipeline.eval_preprocess(e['image'], config.data).numpy() for e in chosen]
  )
  predictor = inference.Predictor.from_variables(
    ctx.model, jax.device_get(variables), config, names, batch_size=len(images)
  )
  out = predictor(images)
  logging.info('Drawing the attention grid of %d test images to %s', len(images), path)
  return visualize.attention_grid(
    list(images),
    list(out['masks']),
    out['probs'],
    np.stack([e['labels'] for e in chosen]),
    names,
    columns,
    path,
    level_names=[str(level) for level in config.model.attention.levels],
  )


class Evaluator(abc.ABC):
  """One evaluation declared in `config.evals.<name>`, over one split.

  `run(variables)` returns the flat scalars `{'<name>/<metric>': value}` that the
  loop logs (and selects on), and keeps the full result (per attribute, tables) in
  `details` for results.json and the markdown report. A type subclasses this with
  `OPTIONS` (its own options and their defaults), `check` (the problems of its
  options), `evaluate` (variables -> details) and `scalars` (details -> metrics).

  Attributes:
    name: the key in `config.evals`; prefixes the metrics.
    spec: the resolved options (`jaxattr.evaluators.resolve`).
    ctx: the run's `Context`.
    details: the result of the last `run` (None before).
  """

  OPTIONS: dict[str, Any] = {}

  def __init__(self, name: str, spec: dict[str, Any], ctx: Context):
    self.name, self.spec, self.ctx = name, spec, ctx
    self.details: dict[str, Any] | None = None

  @classmethod
  def check(cls, name: str, spec: dict[str, Any]) -> list[str]:
    """Problem lines of this type's options (`config.evals.<name>.<option>: ...`)."""
    del name, spec
    return []

  @property
  def split(self) -> str:
    """The TFDS split it reads."""
    return split_name(self.ctx.config.data, self.spec['split'])

  @abc.abstractmethod
  def evaluate(self, variables: dict[str, Any]) -> dict[str, Any]:
    """The full result on the split (what `details` holds)."""

  @abc.abstractmethod
  def scalars(self, details: dict[str, Any]) -> dict[str, float]:
    """The overall metrics of a result, unprefixed."""

  def curve(self, rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """What a periodic evaluator reports at the end from its logged rows; None: nothing.

    Args:
      rows: the run's metrics.jsonl rows, one per step (the last one written wins).
      metric: the selection metric's key (e.g. 'map_voc').
    """
    del rows, metric
    return None

  def run(self, variables: dict[str, Any]) -> dict[str, float]:
    """Evaluates `variables`: `{'<name>/<metric>': value}`; the full result goes to `details`."""
    self.details = self.evaluate(variables)
    return {f'{self.name}/{k}': float(v) for k, v in self.scalars(self.details).items()}
