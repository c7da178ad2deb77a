"""Tests of jaxattr.metrics against sklearn, a loop transcription of VOCap and hand values."""

import json

import jax
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from jaxattr import metrics


def _voc_reference(scores, labels):
  """The ECCV'16 WIDER official AP (MATLAB VOCap) as plain loops, unknowns dropped."""
  keep = [i for i in range(len(labels)) if labels[i] != -1]
  s = [float(scores[i]) for i in keep]
  y = [int(labels[i]) for i in keep]
  npos = sum(1 for v in y if v == 1)
  if npos == 0:
    return float('nan')
  order = sorted(range(len(s)), key=lambda i: -s[i])  # Stable, like MATLAB sort.
  tp = fp = 0
  rec, prec = [], []
  for i in order:
    tp += y[i] == 1
    fp += y[i] == 0
    rec.append(tp / npos)
    prec.append(tp / (tp + fp))
  mrec = [0.0, *rec, 1.0]
  mpre = [0.0, *prec, 0.0]
  for i in range(len(mpre) - 2, -1, -1):
    mpre[i] = max(mpre[i], mpre[i + 1])
  return sum(
    (mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]
  )


def _random_split(seed, n=300, c=6, decimals=2, dtype=np.float32):
  rng = np.random.default_rng(seed)
  labels = rng.choice(np.array([-1, 0, 1], np.int8), size=(n, c), p=[0.1, 0.6, 0.3])
  scores = rng.random((n, c))
  # Correlate scores with labels a little, and round so that many ties exist.
  scores = np.clip(scores + 0.3 * (labels == 1), 0, 1)
  if decimals is not None:
    scores = np.round(scores, decimals)
  return scores.astype(dtype), labels


# --- Average precision ---------------------------------------------------------

# Scores rounded to 2 or 1 decimals (many ties) or not, in float32 or float64.
SCORE_KINDS = [(2, np.float32), (1, np.float64), (None, np.float64), (None, np.float32)]


@pytest.mark.parametrize('decimals,dtype', SCORE_KINDS)
def test_sklearn_ap_matches_sklearn(decimals, dtype):
  scores, labels = _random_split(0, decimals=decimals, dtype=dtype)
  got = metrics.average_precision(scores, labels, 'sklearn')
  for c in range(labels.shape[1]):
    keep = labels[:, c] != -1
    expected = average_precision_score(labels[keep, c] == 1, scores[keep, c])
    assert got[c] == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize('decimals,dtype', SCORE_KINDS)
def test_voc_ap_matches_loop_reference(decimals, dtype):
  scores, labels = _random_split(1, decimals=decimals, dtype=dtype)
  got = metrics.average_precision(scores, labels, 'voc')
  for c in range(labels.shape[1]):
    assert got[c] == pytest.approx(_voc_reference(scores[:, c], labels[:, c]), rel=1e-12)


def test_ap_hand_cases():
  def ap(scores, labels, method):
    scores = np.asarray(scores, np.float32)[:, None]
    return float(metrics.average_precision(scores, np.asarray(labels)[:, None], method)[0])

  # Sorted labels 1 0 1 0: precision 1, 1/2, 2/3, 1/2; monotone 1, 2/3, 2/3, 1/2.
  # VOC: (1 + 2/3) / 2; sklearn: precision at the positives, (1 + 2/3) / 2.
  assert ap([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], 'voc') == pytest.approx(5 / 6)
  assert ap([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], 'sklearn') == pytest.approx(5 / 6)
  # Sorted labels 0 1 1: precision 0, 1/2, 2/3; monotone 2/3, 2/3, 2/3.
  # VOC: (2/3 + 2/3) / 2 = 2/3; sklearn: (1/2 + 2/3) / 2 = 7/12.
  assert ap([0.9, 0.8, 0.7], [0, 1, 1], 'voc') == pytest.approx(2 / 3)
  assert ap([0.9, 0.8, 0.7], [0, 1, 1], 'sklearn') == pytest.approx(7 / 12)
  # Unknowns are dropped: same as the previous case.
  assert ap([0.9, 0.8, 0.7, 0.6, 0.5], [-1, 0, 1, -1, 1], 'voc') == pytest.approx(2 / 3)
  assert ap([0.9, 0.8, 0.7, 0.6, 0.5], [-1, 0, 1, -1, 1], 'sklearn') == pytest.approx(7 / 12)


def test_ap_ties_by_hand():
  scores = [0.5, 0.5, 0.5, 0.2]
  # VOC keeps tied samples in input order, each its own step.
  # Order 0 1 1 0: precision 0, 1/2, 2/3, 1/2; monotone 2/3, 2/3, 2/3, 1/2 -> 2/3.
  # Order 1 1 0 0: precision 1, 1, 2/3, 1/2 -> (1 + 1) / 2 = 1.
  # sklearn: one threshold at 0.5 with tp 2, fp 1: recall 0 -> 1 at precision 2/3,
  # then recall stays 1 -> 2/3 for both orders.
  for labels, voc in (([0, 1, 1, 0], 2 / 3), ([1, 1, 0, 0], 1.0)):
    s = np.asarray(scores, np.float32)[:, None]
    y = np.asarray(labels)[:, None]
    assert float(metrics.average_precision(s, y, 'voc')[0]) == pytest.approx(voc)
    assert float(metrics.average_precision(s, y, 'sklearn')[0]) == pytest.approx(2 / 3)
    # The stable float64 path gives the same tie order as the float32 fast path.
    assert float(metrics.average_precision(s.astype(np.float64) + 1e-12, y, 'voc')[0]) == (
      pytest.approx(voc)
    )


def test_ap_without_positives_is_nan():
  scores = np.array([[0.9, 0.2], [0.1, 0.4], [0.5, 0.3]], np.float32)
  labels = np.array([[0, -1], [0, -1], [-1, -1]])
  for method in metrics.AP_METHODS:
    assert np.all(np.isnan(metrics.average_precision(scores, labels, method)))
  with pytest.raises(ValueError):
    metrics.average_precision(scores, labels, 'auc')
  with pytest.raises(ValueError):
    metrics.average_precision(np.full((3, 2), np.nan), labels)


# --- PETA-style metrics --------------------------------------------------------

_PROBS = np.array(
  [
    [0.9, 0.2, 0.6, 0.1],
    [0.4, 0.7, 0.5, 0.9],
    [0.1, 0.3, 0.2, 0.2],
    [0.8, 0.6, 0.9, 0.3],
  ]
)
_LABELS = np.array(
  [
    [1, 0, 1, 0],
    [1, 1, -1, 0],
    [0, 0, 0, 0],
    [0, -1, 1, 0],
  ],
  np.int8,
)
# Predictions (strict p > 0.5; 0.5 is negative):
#   [1 0 1 0], [0 1 0 1], [0 0 0 0], [1 1 1 0].


def test_label_based_by_hand():
  result = metrics.label_based(_PROBS, _LABELS)
  # attr0: labels 1 1 0 0, pred 1 0 0 1: P 2, N 2, TP 1, TN 1, FP 1 -> mA 1/2.
  # attr1: labels 0 1 0 ?, pred 0 1 0 (1): P 1, N 2, TP 1, TN 2, FP 0 -> mA 1.
  # attr2: labels 1 ? 0 1, pred 1 (0) 0 1: P 2, N 1, TP 2, TN 1, FP 0 -> mA 1.
  # attr3: labels 0 0 0 0, pred 0 1 0 0: P 0, N 4, TN 3, FP 1 -> mA (0 + 3/4)/2.
  np.testing.assert_allclose(result['ma_per_attribute'], [0.5, 1.0, 1.0, 0.375])
  assert result['ma'] == pytest.approx(2.875 / 4)
  np.testing.assert_allclose(result['precision'], [0.5, 1.0, 1.0, 0.0])
  np.testing.assert_allclose(result['recall'], [0.5, 1.0, 1.0, 0.0])
  np.testing.assert_allclose(result['f1'], [0.5, 1.0, 1.0, 0.0])
  np.testing.assert_array_equal(result['positives'], [2, 1, 2, 0])
  np.testing.assert_array_equal(result['negatives'], [2, 2, 1, 4])


def test_example_based_by_hand():
  result = metrics.example_based(_PROBS, _LABELS)
  # row0: Y {0,2}, Ŷ {0,2}: acc 1, prec 1, rec 1.
  # row1: Y {0,1}, Ŷ {1,3} (attr2 unknown): inter 1, union 3: 1/3, 1/2, 1/2.
  # row2: Y {}, Ŷ {}: 0 / eps = 0 on all three.
  # row3: Y {2}, Ŷ {0,2} (attr1 unknown, its prediction dropped): 1/2, 1/2, 1.
  assert result['acc'] == pytest.approx((1 + 1 / 3 + 0 + 0.5) / 4)
  assert result['prec'] == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
  assert result['rec'] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
  assert result['f1'] == pytest.approx(2 * 0.5 * 0.625 / 1.125)


def test_example_based_prediction_without_positives():
  # Y {} with Ŷ {0}: inter 0 -> all zero; second row Y {1}, Ŷ {}: all zero as well.
  probs = np.array([[0.9, 0.1], [0.2, 0.3]])
  labels = np.array([[0, 0], [0, 1]])
  result = metrics.example_based(probs, labels)
  assert result == {'acc': 0.0, 'prec': 0.0, 'rec': 0.0, 'f1': 0.0}


def test_compute_metrics_by_hand_and_json():
  names = ['a', 'b', 'c', 'd']
  result = metrics.compute_metrics(_PROBS, _LABELS, names)
  # AP, attr0: sorted 0.9(1) 0.8(0) 0.4(1) 0.1(0) -> (1 + 2/3)/2 both ways.
  # attr1: 0.7(1) first -> 1. attr2: 0.9(1) 0.6(1) 0.2(0) -> 1. attr3: no positive.
  assert result['per_attribute']['a']['ap_voc'] == pytest.approx(5 / 6)
  assert result['per_attribute']['a']['ap_sklearn'] == pytest.approx(5 / 6)
  assert np.isnan(result['per_attribute']['d']['ap_voc'])
  assert result['map_voc'] == pytest.approx((5 / 6 + 1 + 1) / 3)
  assert result['map_sklearn'] == pytest.approx((5 / 6 + 1 + 1) / 3)
  assert result['ma'] == pytest.approx(2.875 / 4)
  assert result['acc'] == pytest.approx(11 / 24)
  assert result['f1'] == pytest.approx(5 / 9)
  assert result['per_attribute']['d'] == {
    'ap_voc': pytest.approx(float('nan'), nan_ok=True),
    'ap_sklearn': pytest.approx(float('nan'), nan_ok=True),
    'ma': 0.375,
    'precision': 0.0,
    'recall': 0.0,
    'f1': 0.0,
    'positives': 0,
  }
  assert set(result) == {
    'map_voc',
    'map_sklearn',
    'ma',
    'acc',
    'prec',
    'rec',
    'f1',
    'per_attribute',
  }
  # Plain Python numbers only, so the dict is JSON-serialisable; to_json writes
  # the undefined APs as null (standard JSON), the rest unchanged.
  json.dumps(result)
  parsed = json.loads(metrics.to_json(result))
  assert parsed['per_attribute']['d']['ap_voc'] is None
  assert parsed['per_attribute']['d']['ap_sklearn'] is None
  assert parsed['per_attribute']['a']['ap_voc'] == result['per_attribute']['a']['ap_voc']
  assert parsed['f1'] == result['f1']
  for value in [v for k, v in result.items() if k != 'per_attribute']:
    assert type(value) is float
  with pytest.raises(ValueError):
    metrics.compute_metrics(_PROBS, _LABELS, names[:3])


def test_to_json_is_standard_json():
  tree = {
    'nan': float('nan'),
    'inf': [float('inf'), -np.inf],
    'np': {'f32': np.float32(0.5), 'i64': np.int64(3), 'arr': np.array([1.0, np.nan])},
    'keep': ('s', True, None, 2),
  }
  text = metrics.to_json(tree)
  assert 'NaN' not in text and 'Infinity' not in text
  assert json.loads(text) == {
    'nan': None,
    'inf': [None, None],
    'np': {'f32': 0.5, 'i64': 3, 'arr': [1.0, None]},
    'keep': ['s', True, None, 2],
  }
  assert metrics.to_json({'a': 1}, indent=2) == '{\n  "a": 1\n}'


# --- Pointing game ---------------------------------------------------------------


def test_pointing_game_by_hand():
  masks = np.zeros((2, 2, 2, 3))
  boxes = np.zeros((2, 3, 4))
  labels = np.array([[1, 1, 0], [1, 1, 0]])
  # Image 0, attr 0: peak at cell (0, 1) = y [0, .5] x [.5, 1]; box inside it: hit.
  masks[0, 0, 1, 0] = 1.0
  boxes[0, 0] = [0.1, 0.6, 0.3, 0.9]
  # Image 0, attr 1: peak at (1, 0) = y [.5, 1] x [0, .5]; the box only touches its
  # edge y = .5: miss.
  masks[0, 1, 0, 1] = 1.0
  boxes[0, 1] = [0.0, 0.0, 0.5, 0.5]
  # Image 1, attr 0: peak at (1, 1); box straddles the centre: hit.
  masks[1, 1, 1, 0] = 1.0
  boxes[1, 0] = [0.4, 0.4, 0.6, 0.6]
  # Image 1, attr 1: flat mask, the tie goes to (0, 0) = y [0, .5] x [0, .5]; a point
  # box strictly inside it: hit.
  boxes[1, 1] = [0.3, 0.3, 0.3, 0.3]
  # Attr 2 has no positive, whatever its masks and boxes.
  masks[:, 0, 0, 2] = 1.0
  boxes[:, 2] = [0.0, 0.0, 1.0, 1.0]
  cells = np.asarray(metrics.argmax_cells(masks))
  np.testing.assert_array_equal(cells, [[1, 2, 0], [3, 0, 0]])  # Row-major i * W + j.
  accuracy, counts = metrics.pointing_game(cells, (2, 2), boxes, labels)
  np.testing.assert_array_equal(counts, [2, 2, 0])
  np.testing.assert_allclose(accuracy[:2], [1.0, 0.5])
  assert np.isnan(accuracy[2])


def test_pointing_game_cells_by_hand():
  labels = np.array([[1, 1], [1, 0]])
  boxes = np.array(
    [
      [[0.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.4, 0.4]],
      [[0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]],
    ]
  )
  cells = np.array(
    [
      # Overlaps [0, .5]^2 on [.25, .5]^2: hit. Disjoint from [.2, .4]^2: miss.
      [[0.25, 0.25, 0.75, 0.75], [0.5, 0.5, 1.0, 1.0]],
      # Touches the box only at the corner (.5, .5): miss. Label 0: not scored.
      [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]],
    ]
  )
  accuracy, counts = metrics.pointing_game_cells(cells, boxes, labels)
  np.testing.assert_array_equal(counts, [2, 1])
  np.testing.assert_allclose(accuracy, [0.5, 0.0])


# --- clu collections -------------------------------------------------------------


def test_train_metrics_average_terms_under_jit():
  collection = metrics.make_train_metrics(['primary', 'attention_0'])

  @jax.jit
  def step_metrics(loss, primary, attention_0):
    return collection.single_from_model_output(loss=loss, primary=primary, attention_0=attention_0)

  merged = step_metrics(1.0, 0.5, 0.5).merge(step_metrics(3.0, 1.5, 1.5))
  merged = merged.merge(step_metrics(5.0, 4.0, 1.0))
  computed = merged.compute()
  assert set(computed) == {'loss', 'primary', 'attention_0'}
  assert float(computed['loss']) == pytest.approx(3.0)
  assert float(computed['primary']) == pytest.approx(2.0)
  assert float(computed['attention_0']) == pytest.approx(1.0)


def test_pointing_game_chance_hand_cases():
  # A 4x4 grid. Attribute 0: box [0.1, 0.1, 0.4, 0.6] overlaps rows 0-1 (0.1..0.4
  # crosses 0.25) and columns 0-2 (0.1..0.6 crosses 0.25 and 0.5): 2*3/16.
  # Attribute 1: the whole image, 16/16; a negative with any box is not scored.
  boxes = np.array(
    [
      [[0.1, 0.1, 0.4, 0.6], [0.0, 0.0, 1.0, 1.0]],
      [[0.0, 0.0, 0.25, 0.25], [0.5, 0.5, 0.6, 0.6]],
    ]
  )
  labels = np.array([[1, 1], [1, 0]])
  chance, counts = metrics.pointing_game_chance(boxes, labels, (4, 4))
  # Attribute 0: mean of 6/16 and, for [0,0,.25,.25], exactly one cell (edges touch only) 1/16.
  np.testing.assert_allclose(chance, [(6 / 16 + 1 / 16) / 2, 1.0])
  np.testing.assert_array_equal(counts, [2, 1])
  # Agrees with scoring every cell as the argmax with pointing_game_cells.
  hits = []
  for i in range(4):
    for j in range(4):
      cell = np.broadcast_to([i / 4, j / 4, (i + 1) / 4, (j + 1) / 4], boxes.shape)
      hits.append(metrics.pointing_game_cells(cell, boxes, labels)[0])
  np.testing.assert_allclose(np.mean(hits, axis=0), chance)


def test_chance_uses_the_cell_rule_of_the_measured_rate():
  """Box edges exactly on cell edges (float32, as the dataset stores them).

  Chance must equal the mean, over every cell taken as the argmax, of the measured
  pointing game: the same cell rectangles, the same overlap rule.
  """
  h, w = 7, 7
  rng = np.random.default_rng(0)
  edges = rng.integers(0, 8, size=(50, 3, 4))
  lo, hi = np.minimum(edges[..., :2], edges[..., 2:]), np.maximum(edges[..., :2], edges[..., 2:])
  boxes = (np.concatenate([lo, hi], axis=-1) / 7).astype(np.float32)
  labels = rng.integers(0, 2, size=(50, 3))
  chance, counts = metrics.pointing_game_chance(boxes, labels, (h, w))
  hits = []
  for cell in range(h * w):
    masks = np.zeros((50, h, w, 3), np.float32)
    masks[:, cell // w, cell % w, :] = 1.0
    cells = np.asarray(metrics.argmax_cells(masks))
    hits.append(metrics.pointing_game(cells, (h, w), boxes, labels)[0])
  # One cell scored differently would move an attribute by 1 / (49 * positives) > 1e-4.
  np.testing.assert_allclose(np.mean(hits, axis=0), chance, rtol=0, atol=1e-12)
  np.testing.assert_array_equal(counts, labels.sum(axis=0))
  # By hand for one box: rows 2..4 and columns 0..6 of [2/7, 0, 5/7, 1] -> 3 * 7 cells
  # (in float64, where the box edges are the cell edges; rows 1 and 5 only touch it).
  one, _ = metrics.pointing_game_chance(np.array([[[2 / 7, 0, 5 / 7, 1]]]), np.array([[1]]), (h, w))
  np.testing.assert_allclose(one, [21 / 49])


def test_argmax_cells_first_maximum_under_jit():
  masks = np.zeros((1, 2, 3, 2), np.float32)
  masks[0, 1, 2, 0] = 2.0
  masks[0, 0, 1, 0] = 2.0  # Tie with (1, 2): the first in row-major order, (0, 1), wins.
  masks[0, :, :, 1] = -1.0  # Flat: cell 0.
  np.testing.assert_array_equal(jax.jit(metrics.argmax_cells)(masks), [[1, 0]])
