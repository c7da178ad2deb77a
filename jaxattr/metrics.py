"""Evaluation metrics (docs/method.md, "Evaluation"): exact, vectorised numpy, clu averages.

Labels everywhere are ints with 1 = present, 0 = absent, -1 = unknown; evaluation
always ignores unknown labels.

- `average_precision`: per-attribute AP, 'voc' (the WIDER-Attribute ECCV'16
  official definition, the headline number) or 'sklearn' (non-interpolated, equal
  to `sklearn.metrics.average_precision_score`).
- `label_based` / `example_based`: the PETA / PA-100K / RAP protocol (strict
  `p > threshold`, eps = 1e-20).
- `compute_metrics`: all of the above as a JSON-serialisable dict; `to_json`
  writes such dicts as standard JSON (an undefined metric, nan here, is null there).
- `argmax_cells` / `pointing_game` / `pointing_game_chance`: localisation accuracy
  of attention masks against boxes, and its chance level, with one cell rule.
- `make_train_metrics`: clu averages of the loss terms.
"""

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

AP_METHODS = ('voc', 'sklearn')


def to_json(tree: Any, indent: int | None = None) -> str:
  """Standard JSON of nested metrics: nan and +-inf become null.

  An attribute without a labelled positive has no AP (nan); Python's json would
  write the non-standard `NaN`, which jq, JavaScript and strict parsers reject.
  numpy scalars and arrays become numbers and lists.

  Args:
    tree: dicts, lists, tuples, strings, bools, None, Python or numpy numbers.
    indent: as for `json.dumps`.

  Returns:
    The JSON text.
  """

  def clean(x):
    if isinstance(x, Mapping):
      return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
      return [clean(v) for v in x]
    if isinstance(x, np.generic):
      x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
      return None
    return x

  return json.dumps(clean(tree), indent=indent, allow_nan=False)


def _descending_order(scores: np.ndarray) -> np.ndarray:
  """Stable descending argsort along the last axis (ties keep their input order).

  Scores exactly representable in float32 (the model's output) take a fast path:
  the float bits are mapped to an order-preserving unsigned key, inverted for
  descending order and packed with the position into unique uint64 keys, so an
  unstable (SIMD) sort yields the stable order about 3x faster than numpy's
  stable float sort. Other scores use that stable sort.
  """
  scores = scores + 0.0  # -0.0 -> +0.0: equal floats must get equal keys.
  as32 = scores.astype(np.float32)
  if scores.shape[-1] >= 2**32 or not np.array_equal(as32, scores):
    return np.argsort(-scores, axis=-1, kind='stable')
  bits = as32.view(np.uint32)
  negative = (bits >> np.uint32(31)) == 1
  ascending_key = np.where(negative, ~bits, bits | np.uint32(0x80000000))
  key = (~ascending_key).astype(np.uint64) << np.uint64(32)
  key |= np.arange(scores.shape[-1], dtype=np.uint64)
  return np.argsort(key, axis=-1)


def _average_precisions(
  scores: np.ndarray, labels: np.ndarray, methods: Sequence[str]
) -> dict[str, np.ndarray]:
  """Per-attribute AP for each of `methods`, sharing one sort."""
  for method in methods:
    if method not in AP_METHODS:
      raise ValueError(f'method must be one of {AP_METHODS}, got {method!r}')
  scores, labels = np.asarray(scores), np.asarray(labels)
  if scores.shape != labels.shape or scores.ndim != 2:
    raise ValueError(f'scores {scores.shape} and labels {labels.shape} must be equal [N, C]')
  if np.isnan(scores).any():
    raise ValueError('scores contain NaN')
  # Attribute-major, contiguous: every per-attribute scan runs along the last axis.
  scores = np.ascontiguousarray(scores.T)
  labels = np.ascontiguousarray(labels.T)
  num_classes, n = scores.shape
  order = _descending_order(scores)
  sorted_labels = np.take_along_axis(labels, order, axis=-1)
  # Unknown labels are neither true nor false positives: they add no step.
  is_pos = sorted_labels == 1
  tp = np.cumsum(is_pos, axis=-1)
  fp = np.cumsum(sorted_labels == 0, axis=-1)
  num_pos = tp[:, -1] if n else np.zeros(num_classes, np.int64)
  denom = tp + fp
  precision = np.divide(tp, denom, out=np.zeros(tp.shape, np.float64), where=denom > 0)

  result = {}
  for method in methods:
    if method == 'voc':
      # Monotone from the right. An unknown row repeats the precision of the last
      # labelled row before it, so it can never raise the value at a positive.
      value_at = np.maximum.accumulate(precision[:, ::-1], axis=-1)[:, ::-1]
    else:
      # Precision at the end of each group of tied scores, read by every member.
      sorted_scores = np.take_along_axis(scores, order, axis=-1)
      is_end = np.ones(scores.shape, bool)
      is_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
      end_index = np.where(is_end, np.arange(n), n)
      end_index = np.minimum.accumulate(end_index[:, ::-1], axis=-1)[:, ::-1]
      value_at = np.take_along_axis(precision, end_index, axis=-1)
    summed = np.sum(np.where(is_pos, value_at, 0.0), axis=-1)
    ap = summed / np.maximum(num_pos, 1)
    result[method] = np.where(num_pos > 0, ap, np.nan)
  return result


def average_precision(scores: np.ndarray, labels: np.ndarray, method: str = 'voc') -> np.ndarray:
  """Per-attribute average precision, dropping unknown labels per attribute.

  'voc': the WIDER-Attribute ECCV'16 official code (VOC2010+ all-point
  interpolation): sort by score, descending; every sample is its own step of the
  PR curve; precision is made monotone from the right (max over recall >= r);
  AP = the area under that curve = sum over positives of (1/P) · interpolated
  precision at that positive. Ties: the sort is stable, so tied samples stay in
  input order (as MATLAB's stable `sort(..., 'descend')` of the official code
  leaves them) and the result can depend on that order.

  'sklearn': non-interpolated, tied scores form one threshold:
  AP = sum over thresholds t of (R_t - R_{t-1}) · P_t, equal to
  `sklearn.metrics.average_precision_score` on the labelled samples.

  An attribute without any labelled positive has no defined AP: nan.

  Args:
    scores: float [N, C] (probabilities or logits; only the order matters).
    labels: int [N, C] with 1 / 0 / -1.
    method: 'voc' or 'sklearn'.

  Returns:
    float64 [C].
  """
  return _average_precisions(scores, labels, (method,))[method]


def label_based(
  probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5, eps: float = 1e-20
) -> dict[str, Any]:
  """Label-based metrics (per attribute), unknown labels excluded per attribute.

  Prediction is strict `p > threshold`. With P_c / N_c the labelled positives /
  negatives of attribute c: mA_c = (TP_c/(P_c+eps) + TN_c/(N_c+eps)) / 2 (an
  attribute without positives contributes 0 to the positive half, as the
  protocol's eps implies), precision_c = TP_c/(TP_c+FP_c+eps),
  recall_c = TP_c/(P_c+eps), f1_c = 2·prec·rec/(prec+rec+eps).

  Args:
    probs: float [N, C].
    labels: int [N, C] with 1 / 0 / -1.
    threshold: decision threshold.
    eps: the protocol's epsilon.

  Returns:
    A dict with 'ma' (float, the mean over attributes) and per-attribute [C]
    arrays 'ma_per_attribute', 'precision', 'recall', 'f1', 'positives',
    'negatives'.
  """
  probs, labels = np.asarray(probs), np.asarray(labels)
  pred = probs > threshold
  pos, neg = labels == 1, labels == 0
  positives = pos.sum(axis=0)
  negatives = neg.sum(axis=0)
  tp = (pos & pred).sum(axis=0)
  tn = (neg & ~pred).sum(axis=0)
  fp = (neg & pred).sum(axis=0)
  ma_c = (tp / (positives + eps) + tn / (negatives + eps)) / 2
  precision = tp / (tp + fp + eps)
  recall = tp / (positives + eps)
  f1 = 2 * precision * recall / (precision + recall + eps)
  return {
    'ma': float(np.mean(ma_c)) if ma_c.size else float('nan'),
    'ma_per_attribute': ma_c,
    'precision': precision,
    'recall': recall,
    'f1': f1,
    'positives': positives,
    'negatives': negatives,
  }


def example_based(
  probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5, eps: float = 1e-20
) -> dict[str, float]:
  """Example-based metrics (per sample, then averaged).

  Y_i = attributes labelled 1; Ŷ_i = attributes with `p > threshold` among the
  labelled ones: an unknown label is neither in Y nor in Ŷ, so a confident
  prediction there is neither rewarded nor punished. A sample with no positives
  and no predictions scores 0 on every per-sample metric (0 / eps), as in the
  protocol. F1 is the harmonic mean of the mean precision and mean recall.

  Args:
    probs: float [N, C].
    labels: int [N, C] with 1 / 0 / -1.
    threshold: decision threshold.
    eps: the protocol's epsilon.

  Returns:
    {'acc', 'prec', 'rec', 'f1'} as floats.
  """
  probs, labels = np.asarray(probs), np.asarray(labels)
  truth = labels == 1
  pred = (probs > threshold) & (labels >= 0)
  inter = (truth & pred).sum(axis=1)
  union = (truth | pred).sum(axis=1)
  if not labels.shape[0]:
    nan = float('nan')
    return {'acc': nan, 'prec': nan, 'rec': nan, 'f1': nan}
  acc = float(np.mean(inter / (union + eps)))
  prec = float(np.mean(inter / (pred.sum(axis=1) + eps)))
  rec = float(np.mean(inter / (truth.sum(axis=1) + eps)))
  f1 = 2 * prec * rec / (prec + rec + eps)
  return {'acc': acc, 'prec': prec, 'rec': rec, 'f1': float(f1)}


def _nanmean(values: np.ndarray) -> float:
  finite = values[~np.isnan(values)]
  return float(finite.mean()) if finite.size else float('nan')


def compute_metrics(
  probs: np.ndarray,
  labels: np.ndarray,
  attribute_names: Sequence[str],
  threshold: float = 0.5,
  eps: float = 1e-20,
) -> dict[str, Any]:
  """Every evaluation metric of a split, as plain Python numbers.

  mAP is the mean over the attributes that have at least one labelled positive
  (the others have a nan AP and are left out); nan if none has.

  Args:
    probs: float [N, C] predicted probabilities of the whole split.
    labels: int [N, C] with 1 / 0 / -1.
    attribute_names: the C attribute names.
    threshold: decision threshold of the PETA-style metrics.
    eps: their epsilon.

  Returns:
    {'map_voc', 'map_sklearn', 'ma', 'acc', 'prec', 'rec', 'f1': float,
     'per_attribute': {name: {'ap_voc', 'ap_sklearn', 'ma', 'precision',
     'recall', 'f1': float, 'positives': int}}}.
  """
  probs, labels = np.asarray(probs), np.asarray(labels)
  if len(attribute_names) != labels.shape[1]:
    raise ValueError(f'{len(attribute_names)} attribute names for {labels.shape[1]} attributes')
  aps = _average_precisions(probs, labels, AP_METHODS)
  ap_voc, ap_sklearn = aps['voc'], aps['sklearn']
  lb = label_based(probs, labels, threshold, eps)
  eb = example_based(probs, labels, threshold, eps)
  per_attribute = {
    name: {
      'ap_voc': float(ap_voc[c]),
      'ap_sklearn': float(ap_sklearn[c]),
      'ma': float(lb['ma_per_attribute'][c]),
      'precision': float(lb['precision'][c]),
      'recall': float(lb['recall'][c]),
      'f1': float(lb['f1'][c]),
      'positives': int(lb['positives'][c]),
    }
    for c, name in enumerate(attribute_names)
  }
  return {
    'map_voc': _nanmean(ap_voc),
    'map_sklearn': _nanmean(ap_sklearn),
    'ma': lb['ma'],
    **eb,
    'per_attribute': per_attribute,
  }


def argmax_cells(masks: Any) -> Any:
  """The argmax cell of each attribute's mask: the one cell rule of the pointing game.

  Runs on device inside the eval step (so the host never gathers full masks) and
  on host arrays alike.

  Args:
    masks: float [N, H, W, C] attention maps (numpy or jax).

  Returns:
    int32 [N, C]: the flat row-major index i * W + j of the maximum; on ties the
    first in row-major order.
  """
  n, h, w, c = masks.shape
  return jnp.argmax(jnp.reshape(masks, (n, h * w, c)), axis=1).astype(jnp.int32)


def cell_boxes(cells: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """Flat cell indices -> their rectangles [i/H, j/W, (i+1)/H, (j+1)/W] (float64).

  Args:
    cells: int [...] flat row-major indices into an H x W grid (`argmax_cells`).
    grid: (H, W).

  Returns:
    float64 [..., 4] normalised [ymin, xmin, ymax, xmax].
  """
  h, w = grid
  cells = np.asarray(cells, np.int64)
  row, col = cells // w, cells % w
  return np.stack([row / h, col / w, (row + 1) / h, (col + 1) / w], axis=-1)


def pointing_game(
  cells: np.ndarray, grid: tuple[int, int], boxes: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Pointing-game accuracy of attention masks from their argmax cells, per attribute.

  For every positive (label == 1) pair (image n, attribute c), the argmax cell
  (`argmax_cells`) is a hit when its rectangle (`cell_boxes`) overlaps the box;
  see `pointing_game_cells` for the overlap rule.

  Args:
    cells: int [N, C] flat argmax cells (`argmax_cells`).
    grid: (H, W) of the masks.
    boxes: float [N, C, 4] normalised [ymin, xmin, ymax, xmax] in [0, 1].
    labels: int [N, C]; only entries equal to 1 are scored.

  Returns:
    (accuracy [C] = hits / positives, nan where an attribute has no positive;
     counts [C] int, the number of positives scored).
  """
  return pointing_game_cells(cell_boxes(cells, grid), boxes, labels)


def pointing_game_cells(
  cells: np.ndarray, boxes: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Pointing-game accuracy of given cell rectangles, per attribute: the overlap rule.

  A positive (label == 1) pair is a hit when the cell overlaps the box with a
  positive-length overlap on both axes (open intervals: a cell that only touches
  the box edge is a miss; a degenerate point box counts when strictly inside the
  cell).

  Args:
    cells: float [N, C, 4] normalised [ymin, xmin, ymax, xmax] of each
      attribute's argmax cell.
    boxes: float [N, C, 4] normalised [ymin, xmin, ymax, xmax] in [0, 1].
    labels: int [N, C]; only entries equal to 1 are scored.

  Returns:
    (accuracy [C] = hits / positives, nan where an attribute has no positive;
     counts [C] int, the number of positives scored).
  """
  hit = _overlaps(np.asarray(cells), np.asarray(boxes))
  positive = np.asarray(labels) == 1
  counts = positive.sum(axis=0)
  hits = (hit & positive).sum(axis=0)
  with np.errstate(invalid='ignore', divide='ignore'):
    accuracy = np.where(counts > 0, hits / counts, np.nan)
  return accuracy, counts


def _overlaps(cells: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """Positive-length overlap on both axes of [..., 4] rectangles (open intervals)."""
  c_ymin, c_xmin, c_ymax, c_xmax = (cells[..., k] for k in range(4))
  b_ymin, b_xmin, b_ymax, b_xmax = (boxes[..., k] for k in range(4))
  return (c_ymin < b_ymax) & (c_ymax > b_ymin) & (c_xmin < b_xmax) & (c_xmax > b_xmin)


def pointing_game_chance(
  boxes: np.ndarray, labels: np.ndarray, grid: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
  """The pointing-game accuracy of a mask whose argmax is a uniformly random cell.

  The baseline that gives `pointing_game` its meaning: the expected hit rate when
  the argmax cell is drawn uniformly from the h x w grid, i.e. per positive pair
  the fraction of cells that overlap the box, averaged over the positives of each
  attribute. Every cell is scored with the rule of the measured rate
  (`cell_boxes`, then `pointing_game_cells`'s overlap), so a box edge on a cell
  edge counts the same in both.

  Args:
    boxes: float [N, C, 4] normalised [ymin, xmin, ymax, xmax].
    labels: int [N, C]; only entries equal to 1 are scored.
    grid: (h, w) of the attention masks.

  Returns:
    (chance accuracy [C], nan where an attribute has no positive; counts [C]).
  """
  boxes, labels = np.asarray(boxes), np.asarray(labels)
  h, w = grid
  cells_hit = np.zeros(labels.shape, np.int64)
  for cell in range(h * w):
    cells_hit += _overlaps(cell_boxes(np.full(labels.shape, cell), grid), boxes)
  fraction = cells_hit / (h * w)
  positive = labels == 1
  counts = positive.sum(axis=0)
  with np.errstate(invalid='ignore', divide='ignore'):
    chance = np.where(counts > 0, (fraction * positive).sum(axis=0) / counts, np.nan)
  return chance, counts


def make_train_metrics(term_names: Sequence[str]) -> type[clu_metrics.Collection]:
  """A clu `Collection` averaging the loss and each of its terms over steps.

  Args:
    term_names: the names of the loss terms (e.g. the keys of `total_loss`'s
      terms: 'primary', 'attention_0', ...).

  Returns:
    A `Collection` class with an `Average` named 'loss' and one per term; build
    it per step with `.single_from_model_output(loss=..., **terms)` (jit-able)
    and `.merge` the steps.
  """
  names = ['loss', *[name for name in term_names if name != 'loss']]
  return clu_metrics.Collection.create(
    **{name: clu_metrics.Average.from_output(name) for name in names}
  )
