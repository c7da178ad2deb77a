"""Tests of the configs: they load from any directory, and a copy of one works too."""

import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Parses --config the way jaxattr.main does and prints the fields the test checks.
_LOAD = textwrap.dedent(
  """
  import sys
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, '', lock_config=True)
  flags.FLAGS(['prog', '--config=' + sys.argv[1]])
  c = flags.FLAGS.config
  print(c.data.name, c.data.builder_config or '-', c.model.backbone, c.loss.attribute_reduction)
  """
)


def _load(spec: str, cwd: Path) -> str:
  proc = subprocess.run(
    [sys.executable, '-c', _LOAD, spec], cwd=cwd, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout.strip()


@pytest.mark.slow
def test_configs_load_from_another_directory_and_as_copies(tmp_path):
  cwd = tmp_path / 'elsewhere'
  cwd.mkdir()
  wider = 'wider_attribute - resnet50 mean'
  assert _load(f'{REPO}/configs/wider.py:resnet50', cwd) == wider
  assert _load(f'{REPO}/configs/pa100k.py', cwd) == 'pa100k - resnet101 mean'
  assert _load(f'{REPO}/configs/test.py', cwd) == 'synthetic_attributes tiny resnet18 sum'
  # A user's edited copy of a recipe, in a folder of their own.
  copy = tmp_path / 'mine' / 'my_peta.py'
  copy.parent.mkdir()
  shutil.copy(REPO / 'configs' / 'peta.py', copy)
  copy.write_text(
    copy.read_text().replace(
      "config.model.backbone = 'resnet101'", "config.model.backbone = 'resnet50'"
    )
  )
  assert _load(f'{copy}:vespa', cwd) == 'peta vespa resnet50 mean'
  # And a copy of another recipe.
  shutil.copy(REPO / 'configs' / 'demo.py', tmp_path / 'mine' / 'demo.py')
  assert _load(str(tmp_path / 'mine' / 'demo.py'), cwd) == 'synthetic_attributes small resnet18 sum'


def test_peta_states_its_split():
  from jaxattr import schema

  peta = schema.load_recipe('peta')
  assert peta.get_config().data.builder_config == 'mat0'
  paper = peta.get_config('vespa')
  assert paper.data.builder_config == 'vespa'
  assert 'VeSPA split' in peta.__doc__ and 'configs/peta.py:vespa' in peta.__doc__


def test_recipes_are_loaded_by_path_never_imported():
  """configs/ is a folder of recipe files, not a package: code loads them by path."""
  imports = []
  for folder in ('jaxattr', 'experiments', 'tests', 'configs'):
    for path in sorted((REPO / folder).rglob('*.py')):
      for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
          modules = [node.module or '']
        elif isinstance(node, ast.Import):
          modules = [alias.name for alias in node.names]
        else:
          continue
        imports += [
          f'{path.relative_to(REPO)}:{node.lineno}: {m}'
          for m in modules
          if m.split('.')[0] == 'configs' or m.startswith('jaxattr.configs')
        ]
  assert imports == []
  assert not list((REPO / 'jaxattr' / 'configs').glob('*.py'))
