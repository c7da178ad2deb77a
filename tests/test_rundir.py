"""Tests of jaxattr.run: the run folder's files round-trip and fail with clear errors, and
only `jaxattr.run.layout` spells their names."""

import ast
import json
import re
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from jaxattr.run import files, layout, restore, resume

REPO = Path(__file__).resolve().parents[1]


def test_config_round_trip_restores_tuples(tmp_path):
  config = ml_collections.ConfigDict({'model': {'levels': (3, 4)}, 'seed': 1})
  path = resume.record_config(tmp_path, config, 0)
  assert path == tmp_path / 'config.json'
  loaded = files.load_config(tmp_path)
  assert loaded.model.levels == (3, 4) and loaded.seed == 1


def test_missing_workdir_and_config_are_run_errors(tmp_path):
  with pytest.raises(layout.RunError, match='no such workdir'):
    files.load_config(tmp_path / 'absent')
  with pytest.raises(layout.RunError, match='config.json: missing'):
    files.load_config(tmp_path)
  with pytest.raises(layout.RunError, match='attribute names unknown'):
    files.load_attributes(tmp_path)
  with pytest.raises(layout.RunError, match='no checkpoint in'):
    restore.resolve_checkpoint(tmp_path)


def test_attributes_round_trip_and_results_fallback(tmp_path):
  files.write_attributes(tmp_path, ['a', 'b'], np.array([0.25, 0.5]))
  names, ratio = files.load_attributes(tmp_path)
  assert names == ['a', 'b']
  np.testing.assert_array_equal(ratio, np.float32([0.25, 0.5]))
  # A run older than attributes.json: the names come from results.json.
  old = tmp_path / 'old'
  old.mkdir()
  files.write_results(old, {'test': {'per_attribute': {'x': {}, 'y': {}}}}, '# r\n')
  assert files.load_attributes(old) == (['x', 'y'], None)
  assert (old / 'results.md').read_text() == '# r\n'


def test_results_are_standard_json(tmp_path):
  path = files.write_results(tmp_path, {'map': float('nan')}, '')
  assert json.loads(path.read_text()) == {'map': None}


def test_thresholds_belong_to_one_checkpoint(tmp_path):
  ref = restore.CheckpointRef('best', 7)
  files.write_thresholds(tmp_path, ref, {'a': 0.25, 'b': 0.75}, 'validation')
  np.testing.assert_array_equal(files.load_thresholds(tmp_path, ['a', 'b'], ref), [0.25, 0.75])
  assert files.load_thresholds(tmp_path, ['a', 'b'], restore.CheckpointRef('best', 8)) is None
  assert files.load_thresholds(tmp_path, ['b', 'a'], ref) is None
  saved = json.loads((tmp_path / 'thresholds.json').read_text())
  assert saved['tuned_on'] == 'validation' and saved['checkpoint'] == 'best'


def test_layout_names():
  assert layout.checkpoint_dir('w', 'latest').as_posix() == 'w/checkpoints'
  assert layout.checkpoint_dir('w', 'best').as_posix() == 'w/best'
  assert layout.metrics_path('w').as_posix() == 'w/metrics.jsonl'
  assert layout.eval_report_path('w', 'test', 'best').as_posix() == 'w/eval_test_best.json'
  with pytest.raises(ValueError, match='checkpoint must be one of'):
    restore.resolve_checkpoint('w', 'newest')


# --- The layout is spelled in one module ---------------------------------------------------

FILE_NAMES = (
  layout.CONFIG,
  layout.CONFIG_HISTORY,
  layout.ATTRIBUTES,
  layout.CHECKSUMS,
  layout.METRICS,
  layout.LOG,
  layout.RESULTS,
  layout.RESULTS_MARKDOWN,
  layout.ATTENTION,
  layout.THRESHOLDS,
  layout.LOCK,
  layout.COMMAND,
  layout.OVERRIDES,
  layout.TRAIN_LOG,
)
# A file name as a word of a string: 'results.json', 'see results.json', 'a/results.json'.
_FILE_NAME = re.compile(
  r'(?<![\w.-])('
  + '|'.join(map(re.escape, FILE_NAMES))
  + r')(?![\w-])'
  + r'|(?<![\w.-])eval_\S*\.json|(?<![\w.-])log\.\S*\.txt'
)
DIRS = (*layout.CHECKPOINT_DIRS.values(), layout.DAMAGED)
# 'best' and 'latest' also name a checkpoint (`--checkpoint=best`): as a folder only in a path.
KINDS = tuple(layout.CHECKPOINT_DIRS)


def _docstrings(tree: ast.AST) -> set[int]:
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
      body = node.body
      if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        found.add(id(body[0].value))
  return found


def spelled_layout_names(source: str) -> list[str]:
  """The string literals of Python source that spell a run-folder name: `line: text`.

  Docstrings are prose and are not counted; f-strings are read with `*` for each field.
  """
  tree = ast.parse(source)
  skip = _docstrings(tree)
  parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.JoinedStr):
      text = ''.join(v.value if isinstance(v, ast.Constant) else '*' for v in node.values)
      skip.update(id(v) for v in node.values)
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
      text = node.value
    else:
      continue
    parent = parents.get(id(node))
    in_path = isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Div)
    if (
      _FILE_NAME.search(text)
      or any(d in text.split('/') for d in DIRS if '/' in text)
      or (text in DIRS and (in_path or text not in KINDS))
    ):
      found.append((node.lineno, f'{node.lineno}: {text!r}'))
  return [line for _, line in sorted(found)]


def test_the_scan_finds_each_way_of_spelling_a_name():
  source = """
\"\"\"Docstrings may name results.json and best/.\"\"\"
a = Path(w) / 'results.json'
b = Path(w) / 'best'
c = f'eval_{split}_{which}.json'
d = 'checkpoints'
e = 'see log.txt for the details'
f = 'w/damaged/7'
ok = resolve_checkpoint(w, 'best')
ok = 'results.jsonl.bak.json_x'
"""
  assert [line.split(':')[0] for line in spelled_layout_names(source)] == [
    '3',
    '4',
    '5',
    '6',
    '7',
    '8',
  ]


def test_only_the_layout_module_spells_run_folder_names():
  sources = sorted((REPO / 'jaxattr').rglob('*.py')) + sorted((REPO / 'experiments').glob('*.py'))
  sources.remove(REPO / 'jaxattr' / 'run' / 'layout.py')
  found = {
    str(path.relative_to(REPO)): names
    for path in sources
    if (names := spelled_layout_names(path.read_text()))
  }
  assert found == {}
