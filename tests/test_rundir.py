"""Tests of jaxattr.rundir: the run folder's files round-trip and fail with clear errors."""

import json

import ml_collections
import numpy as np
import pytest

from jaxattr import rundir


def test_config_round_trip_restores_tuples(tmp_path):
  config = ml_collections.ConfigDict({'model': {'levels': (3, 4)}, 'seed': 1})
  path = rundir.record_config(tmp_path, config, 0)
  assert path == tmp_path / 'config.json'
  loaded = rundir.load_config(tmp_path)
  assert loaded.model.levels == (3, 4) and loaded.seed == 1


def test_missing_workdir_and_config_are_run_errors(tmp_path):
  with pytest.raises(rundir.RunError, match='no such workdir'):
    rundir.load_config(tmp_path / 'absent')
  with pytest.raises(rundir.RunError, match='config.json: missing'):
    rundir.load_config(tmp_path)
  with pytest.raises(rundir.RunError, match='attribute names unknown'):
    rundir.load_attributes(tmp_path)
  with pytest.raises(rundir.RunError, match='no checkpoint in'):
    rundir.resolve_checkpoint(tmp_path)


def test_attributes_round_trip_and_results_fallback(tmp_path):
  rundir.write_attributes(tmp_path, ['a', 'b'], np.array([0.25, 0.5]))
  names, ratio = rundir.load_attributes(tmp_path)
  assert names == ['a', 'b']
  np.testing.assert_array_equal(ratio, np.float32([0.25, 0.5]))
  # A run older than attributes.json: the names come from results.json.
  old = tmp_path / 'old'
  old.mkdir()
  rundir.write_results(old, {'test': {'per_attribute': {'x': {}, 'y': {}}}}, '# r\n')
  assert rundir.load_attributes(old) == (['x', 'y'], None)
  assert (old / 'results.md').read_text() == '# r\n'


def test_results_are_standard_json(tmp_path):
  path = rundir.write_results(tmp_path, {'map': float('nan')}, '')
  assert json.loads(path.read_text()) == {'map': None}


def test_thresholds_belong_to_one_checkpoint(tmp_path):
  ref = rundir.CheckpointRef('best', 7)
  rundir.write_thresholds(tmp_path, ref, {'a': 0.25, 'b': 0.75}, 'validation')
  np.testing.assert_array_equal(rundir.load_thresholds(tmp_path, ['a', 'b'], ref), [0.25, 0.75])
  assert rundir.load_thresholds(tmp_path, ['a', 'b'], rundir.CheckpointRef('best', 8)) is None
  assert rundir.load_thresholds(tmp_path, ['b', 'a'], ref) is None
  saved = json.loads((tmp_path / 'thresholds.json').read_text())
  assert saved['tuned_on'] == 'validation' and saved['checkpoint'] == 'best'


def test_layout_names():
  assert rundir.checkpoint_dir('w', 'latest').as_posix() == 'w/checkpoints'
  assert rundir.checkpoint_dir('w', 'best').as_posix() == 'w/best'
  assert rundir.metrics_path('w').as_posix() == 'w/metrics.jsonl'
  assert rundir.eval_report_path('w', 'test', 'best').as_posix() == 'w/eval_test_best.json'
  with pytest.raises(ValueError, match='checkpoint must be one of'):
    rundir.resolve_checkpoint('w', 'newest')
