"""The config reference (docs/config.md), generated from the schema's `FIELDS`.

  python -m jaxattr.config_reference > docs/config.md

One row per field of `jaxattr.schema.FIELDS`: its name, its default, whether a resumed
run may change it (and why not), and the comments written beside its entry in
`jaxattr/schema.py`. The schema is the one place a field is declared, so the reference
reads its text from there instead of keeping a second copy; `tests/test_config_reference.py`
checks that the committed page equals this output, so a new field means rerunning the
command above.
"""

import ast
import inspect
import io
import sys
import tokenize
from typing import Any

import ml_collections

from jaxattr import schema

COMMAND = 'python -m jaxattr.config_reference > docs/config.md'
HEADER = '| field | default | resumed run | notes |'


def field_comments(source: str) -> dict[str, str]:
  """The comments of each `FIELDS` entry in the schema's source.

  A field's comment is the block of comment lines right above its entry (up to a blank
  line, code or a `# ---` section rule) and any comment on the entry's own lines.

  Args:
    source: the text of jaxattr/schema.py.

  Returns:
    field name -> its comments joined into one line ('' if none).
  """
  comments = {
    token.start[0]: token.string.lstrip('#').strip()
    for token in tokenize.generate_tokens(io.StringIO(source).readline)
    if token.type == tokenize.COMMENT
  }
  lines = source.splitlines()
  entries = None
  for node in ast.walk(ast.parse(source)):
    target = getattr(node, 'target', None) or (getattr(node, 'targets', None) or [None])[0]
    if isinstance(node, ast.AnnAssign | ast.Assign) and getattr(target, 'id', '') == 'FIELDS':
      entries = node.value
  assert isinstance(entries, ast.Dict), 'jaxattr/schema.py: no FIELDS = {...} literal'
  out = {}
  for key, value in zip(entries.keys, entries.values, strict=True):
    above, number = [], key.lineno - 1
    while number >= 1 and lines[number - 1].strip().startswith('#'):
      if lines[number - 1].strip().startswith('# ---'):
        break
      above.insert(0, comments[number])
      number -= 1
    beside = [comments[n] for n in range(key.lineno, value.end_lineno + 1) if n in comments]
    out[key.value] = ' '.join(above + beside)
  return out


def _default(value: Any) -> str:
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if isinstance(value, ml_collections.FieldReference):  # A field of several types.
    value = value.get()
  return f'`{value!r}`'


def _resume(fixed: Any) -> str:
  if fixed is None:
    return 'may change'
  if callable(fixed):
    return 'depends on the values: ' + inspect.getdoc(fixed).replace('\n', ' ')
  return f'fixed: {fixed}'


def _cell(text: str) -> str:
  return text.replace('|', '\\|')


def reference() -> str:
  """docs/config.md: the markdown table of every config field."""
  notes = field_comments(inspect.getsource(schema))
  lines = [
    '# Config reference',
    '',
    f'Generated from `jaxattr/schema.py` by `{COMMAND}`; do not edit by hand',
    '(`tests/test_config_reference.py` checks that this page matches the code).',
    '',
    'Every field of a run config, its default (`configs/default.py`; a recipe in',
    '`configs/` changes some), and whether a resumed run may change it: a change to a',
    '"may change" field needs `--allow_config_change`; a "fixed" field is refused even',
    'then, for the reason given (start a new workdir). Override any field on the command',
    'line, e.g. `--config.train.num_epochs=60`.',
  ]
  groups: dict[str, list[str]] = {}
  for name in schema.FIELDS:
    groups.setdefault(name.split('.')[0] if '.' in name else 'top level', []).append(name)
  for group, names in groups.items():
    lines += ['', f'## {group}', '', HEADER, '|---|---|---|---|']
    for name in names:
      spec = schema.FIELDS[name]
      cells = [f'`{name}`', _default(spec.default), _resume(spec.fixed), notes.get(name, '')]
      lines.append('| ' + ' | '.join(_cell(c) for c in cells) + ' |')
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  sys.stdout.write(reference())
