"""Evaluation of a model's variables on a split: predictions, metrics, pointing game, tables.

The training loop (every epoch on the validation split, at the end on both) and
`jaxattr.evaluate` (a saved run) share this module; both hand it the model's
`variables` ({'params', 'batch_stats'}), never a train state.

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

from jaxattr import inference, metrics, sharding
from jaxattr.models import model as model_lib

SCALAR_KEYS = ('map_voc', 'map_sklearn', 'ma', 'acc', 'prec', 'rec', 'f1')


# --- The step and the gathering ------------------------------------------------------


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


# --- Metrics -------------------------------------------------------------------------


def compute_results(
  data: dict[str, np.ndarray],
  names: Sequence[str],
  threshold: float | np.ndarray,
  grids: dict[int, tuple[int, int]] | None = None,
) -> dict[str, Any]:
  """Every metric of a gathered split (`gather`), as plain Python numbers.

  Args:
    data: `probs`, `labels`, `index` and, on synthetic data, the cells and boxes.
    names: attribute names.
    threshold: decision threshold(s) of the threshold-dependent metrics.
    grids: (h, w) of the masks per attention level, for the pointing game.

  Returns:
    `metrics.compute_metrics`'s dict plus `num_examples` and, with cue boxes,
    `pointing_game`.
  """
  result = metrics.compute_metrics(data['probs'], data['labels'], names, threshold=threshold)
  result['num_examples'] = int(len(data['index']))
  if 'cue_boxes' in data:
    result['pointing_game'] = pointing_game(data, names, grids or {})
  return result


def pointing_game(
  data: dict[str, np.ndarray], names: Sequence[str], grids: dict[int, tuple[int, int]]
) -> dict[str, Any]:
  """Pointing-game accuracy and its chance level per attention level and attribute.

  Chance is the hit rate of a uniformly random argmax cell on the same positives,
  scored with the same cell rule (`metrics.pointing_game_chance`).

  Args:
    data: gathered eval outputs with `cells_*`, `cue_boxes` and `labels`.
    names: attribute names.
    grids: (h, w) of the masks per attention level.

  Returns:
    {'mask_<level>' / 'weighted_<level>': {'overall', 'chance', 'per_attribute',
    'chance_per_attribute'}}; an attribute without positives has None.
  """
  out = {}
  for key in sorted(k for k in data if k.startswith('cells_')):
    level = int(key.rsplit('_', 1)[1])
    grid = grids[level]
    hits, counts = metrics.pointing_game(data[key], grid, data['cue_boxes'], data['labels'])
    chance, _ = metrics.pointing_game_chance(data['cue_boxes'], data['labels'], grid)
    valid = counts > 0
    total = max(int(counts[valid].sum()), 1)

    out[key[len('cells_') :]] = {
      'overall': float(np.sum(hits[valid] * counts[valid]) / total),
      'chance': float(np.sum(chance[valid] * counts[valid]) / total),
      'per_attribute': _per_attribute(names, hits, counts),
      'chance_per_attribute': _per_attribute(names, chance, counts),
    }
  return out


def _per_attribute(names, values, counts) -> dict[str, float | None]:
  return {n: (float(x) if c else None) for n, x, c in zip(names, values, counts, strict=True)}


def selection_value(result: dict[str, Any], config: ml_collections.ConfigDict) -> float:
  """The validation number that picks the best checkpoint (`config.eval.metric`)."""
  key = {'map': f'map_{config.eval.ap}', 'ma': 'ma', 'f1': 'f1'}[config.eval.metric]
  return float(result[key])


def flat_scalars(result: dict[str, Any]) -> dict[str, float]:
  """The overall metrics of a split's result (what the metric writers log)."""
  return {k: result[k] for k in SCALAR_KEYS if k in result}


# --- Evaluating variables on a split --------------------------------------------------


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


@dataclasses.dataclass
class Evaluator:
  """A dataset, a model and the compiled eval step on a mesh: evaluates variables."""

  config: ml_collections.ConfigDict
  builder: Any
  info: Any  # input_pipeline.DatasetInfo
  model: nn.Module
  mesh: jax.sharding.Mesh

  def __post_init__(self):
    sharding.check_divides(self.mesh, **{'eval.batch_size': self.config.eval.batch_size})
    self.infer_fn = inference.make_infer_fn(self.model, self.config.data)
    self.step = jax.jit(
      functools.partial(
        eval_step, infer_fn=self.infer_fn, levels=tuple(self.config.model.attention.levels)
      ),
      in_shardings=(sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)),
      out_shardings=sharding.replicated(self.mesh),
    )

  def grids(self, variables: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """(h, w) of the attention masks per level (shapes only, nothing runs)."""
    size = self.config.data.image_size
    image = jax.ShapeDtypeStruct((1, size, size, 3), np.uint8)
    masks = jax.eval_shape(self.infer_fn, variables, image)['masks']
    levels = self.config.model.attention.levels
    return {int(lv): tuple(m.shape[1:3]) for lv, m in zip(levels, masks, strict=True)}

  def predictions(self, variables: dict[str, Any], split: str) -> dict[str, np.ndarray]:
    """The eval-step outputs of every example of `split`, sorted by example index."""
    from jaxattr.data import input_pipeline

    batches, _ = input_pipeline.eval_batches(
      self.builder,
      self.config.data,
      split,
      global_batch=self.config.eval.batch_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      extra_keys=('cue_boxes',) if self.info.has_cue_boxes else (),
    )
    data_sharding = sharding.batch_sharded(self.mesh)
    outputs = (
      jax.device_get(self.step(variables, sharding.to_global(b, data_sharding))) for b in batches
    )
    return gather(outputs, split)

  def evaluate(
    self, variables: dict[str, Any], split: str
  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics over every example of `split`, and the gathered predictions.

    Args:
      variables: the model's {'params', 'batch_stats'}, replicated on the mesh.
      split: the split name.

    Returns:
      (`compute_results`'s dict, the gathered predictions).
    """
    data = self.predictions(variables, split)
    grids = self.grids(variables) if self.info.has_cue_boxes else None
    result = compute_results(data, self.info.attribute_names, self.config.eval.threshold, grids)
    return result, data


def create_evaluator(config: ml_collections.ConfigDict, devices=None) -> Evaluator:
  """An `Evaluator` of a config: its dataset, its model and a mesh over `devices`."""
  builder, info = open_dataset(config)
  model = model_lib.create_model(config.model, info.num_classes)
  return Evaluator(config, builder, info, model, sharding.create_mesh(devices))


# --- Reports -------------------------------------------------------------------------


def results_markdown(results: dict[str, Any]) -> str:
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
    cells = ' | '.join(f'{100 * r[k]:.2f}' for k in flat_scalars(r))
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
    lines += ['', '| pointing game (test) | overall | chance |', '|---|---|---|']
    for name, r in test['pointing_game'].items():
      lines.append(f'| {name} | {100 * r["overall"]:.1f} | {100 * r["chance"]:.1f} |')
  return '\n'.join(lines) + '\n'


def pointing_game_lines(result: dict[str, Any]) -> list[str]:
  """One line per mask kind: the measured pointing-game rate beside its chance level."""
  return [
    f'pointing game {name}: {100 * r["overall"]:.1f} % (chance {100 * r["chance"]:.1f} %)'
    for name, r in result.get('pointing_game', {}).items()
  ]


def attention_grid(
  evaluator: Evaluator, variables: dict[str, Any], path: Path, max_scan: int = 512
) -> Path:
  """Draws the attention masks of every level over test images (README, demo).

  Columns: the four rarest and the two most frequent attributes; rows: for each
  column, the first test image where that attribute is present. The masks come
  from the same inference function as `jaxattr.predict` (`inference.Predictor`).

  Args:
    evaluator: the run's evaluator (dataset, model, config).
    variables: the model's {'params', 'batch_stats'}.
    path: the PNG to write.
    max_scan: test images searched for the columns' attributes.

  Returns:
    `path`.
  """
  from jaxattr import visualize  # matplotlib only when a grid is asked for.
  from jaxattr.data import input_pipeline

  config, info = evaluator.config, evaluator.info
  names = info.attribute_names
  order = np.argsort(info.positive_ratio)  # Rarest first.
  columns = [names[i] for i in (*order[:4], *order[-2:])]
  ds = evaluator.builder.as_dataset(split=config.data.test_split, shuffle_files=False)
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
    evaluator.model, jax.device_get(variables), config, names, batch_size=len(images)
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
