"""The quick tier (`pytest -m "not slow"`) still tests every module of `jaxattr/`.

Read statically: a test file counts for the modules it imports (`import jaxattr.x`,
`from jaxattr import x`, `from jaxattr.x import y`, at any depth of the file, also in
the code strings it hands to `python -c`) or runs (`python -m jaxattr.x`), when at least
one of its tests is not marked `slow` (by a decorator or the module's `pytestmark`).
The packages on the way count with a module.

The entry points `jaxattr.main` and `jaxattr.distributed` are tested only through
processes; their quickest such tests (a config refused before any work, processes that
cannot join) stay in the quick tier so that it keeps a test of each.
"""

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / 'jaxattr'


def _is_slow(decorators: list[ast.expr]) -> bool:
  return any(ast.unparse(d) == 'pytest.mark.slow' for d in decorators)


def _has_quick_test(tree: ast.Module) -> bool:
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(
      isinstance(t, ast.Name) and t.id == 'pytestmark' for t in node.targets
    ):
      if _is_slow([node.value]):
        return False
  return any(
    isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    and node.name.startswith('test_')
    and not _is_slow(node.decorator_list)
    for node in tree.body
  )


def _module_file(name: str) -> Path | None:
  """jaxattr/a/b.py or jaxattr/a/b/__init__.py for 'jaxattr.a.b', else None."""
  if not (name == 'jaxattr' or name.startswith('jaxattr.')) or not name.isascii():
    return None
  path = REPO.joinpath(*name.split('.'))
  for candidate in (path.with_suffix('.py'), path / '__init__.py'):
    if candidate.is_file():
      return candidate
  return None


def _names(tree: ast.AST) -> set[str]:
  """Dotted names the code imports or runs with `-m`, and those of its code strings."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
      text = node.value.strip()
      if _module_file(text):  # `python -m jaxattr.x`.
        names.add(text)
      else:  # Code for `python -c`: its import lines.
        for line in text.splitlines():
          line = line.strip()
          if line.startswith(('import jaxattr', 'from jaxattr')):
            try:
              names |= _names(ast.parse(line))
            except SyntaxError:
              pass
  return names


def _imported_modules(tree: ast.AST) -> set[Path]:
  files = set()
  for name in _names(tree):
    parts = name.split('.')
    for i in range(1, len(parts) + 1):  # The packages on the way are imported too.
      found = _module_file('.'.join(parts[:i]))
      if found:
        files.add(found)
  return files


def test_every_module_of_jaxattr_is_imported_by_a_quick_test_file():
  covered = set()
  for test_file in sorted((REPO / 'tests').glob('test_*.py')):
    tree = ast.parse(test_file.read_text(), filename=str(test_file))
    if _has_quick_test(tree):
      covered |= _imported_modules(tree)
  modules = set(PACKAGE.rglob('*.py'))
  missing = sorted(str(m.relative_to(REPO)) for m in modules - covered)
  assert not missing, f'No quick test file imports: {", ".join(missing)}'


def test_the_scan_reads_marks_imports_and_commands():
  """The reading above, on hand-written files."""
  tree = ast.parse(
    'import pytest\n'
    'from jaxattr import losses, not_a_module\n'
    'from jaxattr.models import vit\n'
    'CODE = f"from jaxattr import history\\nhistory.init({1})"\n'
    'def helper():\n'
    '  import jaxattr.data.wider\n'
    '  return ["-m", "jaxattr.main"]\n'
    '@pytest.mark.slow\n'
    'def test_a(): pass\n'
    'def test_b(): pass\n'
  )
  assert _has_quick_test(tree)
  expected = {
    'jaxattr/__init__.py',
    'jaxattr/losses.py',
    'jaxattr/history.py',
    'jaxattr/main.py',
    'jaxattr/models/__init__.py',
    'jaxattr/models/vit.py',
    'jaxattr/data/__init__.py',
    'jaxattr/data/wider.py',
  }
  assert {str(p.relative_to(REPO)) for p in _imported_modules(tree)} == expected
  slow = ast.parse('import pytest\npytestmark = pytest.mark.slow\ndef test_a(): pass\n')
  assert not _has_quick_test(slow)
  only_slow = ast.parse('import pytest\n@pytest.mark.slow\ndef test_a(): pass\n')
  assert not _has_quick_test(only_slow)
