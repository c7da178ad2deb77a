"""Tests of jaxattr.evaluators: exact, order-free gathering, the step, the registry, the tables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattr import evaluators, metrics, schema, train
from jaxattr.evaluators import attributes, report
from jaxattr.evaluators import common as evaluation

NAMES = ['a', 'b', 'c']


def _split(n=12, seed=0):
  """Probabilities with exact ties (saturated sigmoids give 1.0) and labels."""
  rng = np.random.default_rng(seed)
  probs = rng.choice(np.float32([1.0, 0.75, 0.25]), size=(n, 3))
  labels = rng.integers(0, 2, size=(n, 3)).astype(np.int8)
  labels[0] = 1  # Every attribute (but a, below) has a positive and a negative.
  labels[1] = 0
  # Attribute a: every score tied at 1.0, one positive (example 3). Its VOC AP is
  # the precision at the positive's rank: 1/4 in index order, 1/5 in the order of
  # 2 processes (0, 2, 4, 1, 3, ...).
  probs[:, 0] = 1.0
  labels[:, 0] = np.arange(n) == 3
  return probs, labels


def _batches(probs, labels, order, batch):
  """Eval-step outputs over `order` in padded batches of `batch` rows."""
  outs = []
  for start in range(0, len(order), batch):
    rows = order[start : start + batch]
    pad = batch - len(rows)
    idx = np.concatenate([rows, np.zeros(pad, int)])
    outs.append(
      {
        'probs': probs[idx],
        'labels': labels[idx],
        'index': idx.astype(np.int32),
        'mask': np.arange(batch) < len(rows),
      }
    )
  return outs


def _two_process_order(n, local_batch):
  """The gather order of 2 processes: each global batch is process 0's rows, then 1's.

  Process p reads examples p, p + 2, ... (`shard(2, p)`), `local_batch` at a time.
  """
  shards = [np.arange(p, n, 2) for p in range(2)]
  order = []
  for start in range(0, len(shards[0]), local_batch):
    for shard in shards:
      order += list(shard[start : start + local_batch])
  return np.array(order)


def test_metrics_do_not_depend_on_gather_order_with_tied_scores():
  probs, labels = _split()
  n = len(probs)
  one = evaluation.gather(_batches(probs, labels, np.arange(n), 5))
  two = evaluation.gather(_batches(probs, labels, _two_process_order(n, 3), 6))
  shuffled = evaluation.gather(_batches(probs, labels, np.random.default_rng(1).permutation(n), 4))
  for data in (one, two, shuffled):
    np.testing.assert_array_equal(data['index'], np.arange(n))
    np.testing.assert_array_equal(data['probs'], probs)
    assert 'mask' not in data
  expected = metrics.compute_metrics(probs, labels, NAMES)
  for data in (one, two, shuffled):
    assert attributes.compute_results(data, NAMES, 0.5) == {**expected, 'num_examples': n}
  # The sort matters: in the 2-process order the tied scores rank differently and
  # the VOC AP (ties in input order) changes.
  order = _two_process_order(n, 3)
  assert metrics.average_precision(probs, labels, 'voc')[0] == pytest.approx(1 / 4)
  assert metrics.average_precision(probs[order], labels[order], 'voc')[0] == pytest.approx(1 / 5)


def test_gather_drops_padding_and_refuses_duplicates():
  probs, labels = _split(5)
  data = evaluation.gather(_batches(probs, labels, np.array([4, 2, 0, 1, 3]), 4))
  np.testing.assert_array_equal(data['index'], np.arange(5))
  np.testing.assert_array_equal(data['labels'], labels)
  with pytest.raises(AssertionError, match='saw an example twice'):
    evaluation.gather(_batches(probs, labels, np.array([0, 1, 1, 2]), 4), 'test')


def test_eval_step_reduces_masks_to_cells():
  def infer_fn(variables, images):
    b = images.shape[0]
    a = jnp.zeros((b, 2, 2, 3)).at[:, 1, 0, :].set(1.0)  # Cell (1, 0) = index 2.
    s = jnp.ones((b, 1, 1, 3)).at[..., 1].set(-1.0)  # a * s: attribute 1 peaks elsewhere.
    return {'probs': jnp.full((b, 3), variables['p']), 'masks': (a,), 'confidences': (s,)}

  batch = {
    'image': jnp.zeros((2, 8, 8, 3), jnp.uint8),
    'labels': jnp.ones((2, 3), jnp.int8),
    'mask': jnp.array([True, False]),
    'index': jnp.array([7, 0]),
  }
  step = jax.jit(lambda v, b: evaluation.eval_step(v, b, infer_fn=infer_fn, levels=(4,)))
  out = step({'p': 0.25}, batch)
  assert set(out) == {'probs', 'labels', 'mask', 'index'}  # No boxes: no cells.
  np.testing.assert_allclose(out['probs'], 0.25)
  out = step({'p': 0.25}, {**batch, 'cue_boxes': jnp.zeros((2, 3, 4))})
  np.testing.assert_array_equal(out['cells_mask_4'], [[2, 2, 2]] * 2)
  # a * s: attribute 1 is -1 at (1, 0) and 0 elsewhere, so the first cell wins.
  np.testing.assert_array_equal(out['cells_weighted_4'], [[2, 0, 2]] * 2)


def test_pointing_game_reports_measured_and_chance_with_one_rule():
  n = 4
  boxes = np.zeros((n, 3, 4), np.float32)
  boxes[:, :, :] = [0.0, 0.0, 0.5, 0.5]  # The top-left cell of a 2x2 grid.
  labels = np.array([[1, 1, 0]] * n, np.int8)
  cells = np.array([[0, 3, 0], [0, 3, 0], [1, 0, 0], [0, 0, 0]], np.int32)
  data = {
    'probs': np.full((n, 3), 0.5, np.float32),
    'labels': labels,
    'index': np.arange(n),
    'cue_boxes': boxes,
    'cells_mask_4': cells,
  }
  result = attributes.compute_results(data, NAMES, 0.5, grids={4: (2, 2)})
  game = result['pointing_game']['mask_4']
  # Attribute a: 3 of 4 hits; b: 2 of 4; c has no positive.
  assert game['per_attribute'] == {'a': 0.75, 'b': 0.5, 'c': None}
  assert game['overall'] == pytest.approx(5 / 8)
  # One cell of four overlaps the box: chance 1/4 for every positive.
  assert game['chance'] == pytest.approx(0.25)
  assert game['chance_per_attribute'] == {'a': 0.25, 'b': 0.25, 'c': None}
  lines = report.pointing_game_lines(result)
  assert lines == ['pointing game mask_4: 62.5 % (chance 25.0 %)']


def test_selection_key_and_markdown():
  probs, labels = _split()
  result = attributes.compute_results(
    evaluation.gather(_batches(probs, labels, np.arange(12), 12)), NAMES, 0.5
  )
  config = type('C', (), {})()
  config.eval = type('E', (), {'metric': 'map', 'ap': 'sklearn'})()
  assert result[attributes.metric_key(config.eval)] == result['map_sklearn']
  config.eval.metric = 'f1'
  assert result[attributes.metric_key(config.eval)] == result['f1']
  text = report.results_markdown('d', 'Best step 3 of 3.', {'validation': result, 'test': result})
  assert f'| test | {100 * result["map_voc"]:.2f} |' in text
  assert text.count('| a |') == 1


def test_markdown_marks_undefined_metrics():
  assert report.pct(0.12345) == '12.35'
  assert report.pct(None) == 'n/a' and report.pct(float('nan')) == 'n/a'


def test_itstime_is_a_period_and_the_last_step():
  due = [s for s in range(1, 21) if train.itstime(s, 8, last=20)]
  assert due == [8, 16, 20]
  assert [s for s in range(1, 21) if train.itstime(s, 0)] == []
  assert [s for s in range(1, 10) if train.itstime(s, 3)] == [3, 6, 9]


def test_default_evals_select_on_validation_and_test_at_the_end():
  config = schema.load_recipe('test').get_config()
  assert len(config.evals) == 0  # Derived, so an older config.json resumes unchanged.
  specs = evaluators.declared(config)
  assert specs['val']['split'] == 'validation' and specs['val']['every_epochs'] == 1
  assert specs['test'] == {'type': 'attributes', 'split': 'test', 'at_end': True}
  assert evaluators.selection_metric(config) == 'val/map_voc'
  config.eval.metric = 'f1'
  assert evaluators.selection_metric(config) == 'val/f1'
  assert schema.validate(config) == []


def test_each_evaluator_type_checks_its_options():
  config = schema.load_recipe('test').get_config()
  with config.unlocked():
    config.evals.v = dict(type='attributes', split='validation', every_epochs=1, select=True)
    config.evals.t = dict(type='thresholds', split='test', at_end=True)
    config.evals.p = dict(type='pointing', split='test', at_end=True, limit=-1, size=3)
    config.evals.n = dict(type='attributes', split='test')
    config.evals.x = dict(type='accuracy', split='test')
  assert [p for p in schema.validate(config) if 'config.evals' in p] == [
    'config.evals.n: never runs; set every_epochs > 0 or at_end=True',
    "config.evals.p.size: not an option of type 'pointing' "
    '(at_end, every_epochs, limit, results_key, split, type)',
    'config.evals.p.limit: must be an integer >= 0, got -1',
    'config.evals.t.split: thresholds are never tuned on the test split',
    "config.evals.x.type: must be one of 'attributes', 'pointing', 'thresholds'; got 'accuracy'",
  ]
  with config.unlocked():
    config.evals = dict(
      t=dict(type='attributes', split='test', every_epochs=1, select=True),
      u=dict(type='attributes', split='validation', every_epochs=1, peers_protocol=True),
    )
  assert [p for p in schema.validate(config) if 'config.evals' in p] == [
    'config.evals.t.select: the selecting evaluator runs during training (every_epochs > 0) '
    'on a split other than test',
    "config.evals.u.peers_protocol: reads split='test' every epoch, with select=False and "
    'at_end=False',
  ]
  peers = evaluators.add_peers_protocol(schema.load_recipe('test').get_config())
  assert set(peers.evals) == {'val', 'test', 'test_every_epoch'}
  assert schema.validate(peers) == []
  assert evaluators.selection_metric(peers) == 'val/map_voc'


def test_peers_curve_and_its_table():
  """The best test epoch from the logged rows; rows without its metric are not epochs."""
  spec = evaluators.resolve('p', dict(type='attributes', split='test', every_epochs=1))
  plain = attributes.AttributesEvaluator('p', spec, ctx=None)
  rows = [{'step': 8, 'p/map_voc': 0.3, 'p/f1': 0.1}, {'step': 16, 'p/map_voc': 0.2}]
  assert plain.curve(rows, 'map_voc') is None
  peers = attributes.AttributesEvaluator('p', {**spec, 'peers_protocol': True}, ctx=None)
  curve = peers.curve([*rows, {'step': 16, 'train/loss': 1.0}], 'map_voc')
  assert curve['best'] == {'step': 8, 'map_voc': 0.3, 'f1': 0.1}
  assert [e['step'] for e in curve['per_epoch']] == [8, 16]
  text = report.results_markdown('d', 's', {'peers': curve})
  label = "best epoch on test (the peers' protocol; optimistic)"
  assert f'peers: {label}: map_voc 30.00 at step 8' in text
  assert '| 16 | 20.00 | n/a |' in text


def test_peers_protocol_is_a_recipe_argument():
  """`--config=configs/<recipe>.py:peers_protocol` declares what `add_peers_protocol` does."""
  recipe = schema.load_recipe('test')
  by_arg = recipe.get_config('peers_protocol')
  assert (
    by_arg.evals.to_dict() == evaluators.add_peers_protocol(recipe.get_config()).evals.to_dict()
  )
  assert by_arg.evals.test_every_epoch.peers_protocol is True
  assert by_arg.evals.val.select is True  # Validation still selects.
  assert schema.validate(by_arg) == []
  with pytest.raises(ValueError, match="'peers_protocol'"):
    recipe.get_config('nosuch')
