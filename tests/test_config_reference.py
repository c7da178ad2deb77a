"""docs/config.md is the generated config reference of the current schema."""

import ast

from jaxattr import config_reference, schema
from tests.conftest import REPO

SOURCE = """
FIELDS: dict[str, Field] = {
  'seed': Field(0),
  # --- Data ---
  # The builder.
  # Registered by jaxattr.data.
  'data.name': Field('x', None, 'why'),  # Beside it.

  'data.size': Field(
    224,  # Pixels.
    integer(1),
  ),
}
"""


def test_committed_reference_matches_the_schema():
  committed = (REPO / 'docs' / 'config.md').read_text()
  assert committed == config_reference.reference(), (
    f'docs/config.md is out of date: run `{config_reference.COMMAND}`'
  )


def test_every_field_has_a_row_with_its_default_and_resume_rule():
  text = config_reference.reference()
  rows = {}
  for line in text.splitlines():
    if line.startswith('| `'):
      cells = [c.strip() for c in line.strip('|').split(' | ')]
      rows[cells[0].strip('`')] = cells
  assert set(rows) == set(schema.FIELDS)
  for name, spec in schema.FIELDS.items():
    default = rows[name][1].strip('`')
    if name == 'evals':
      assert default == '{}'
    else:
      assert ast.literal_eval(default) == spec.default, name
  assert rows['data.random_flip'][2] == 'may change'
  assert rows['model.backbone'][2] == "fixed: the checkpoint holds this architecture's parameters"
  assert rows['model.depth'][2].startswith('depends on the values: ')


def test_comments_are_read_from_above_and_beside_an_entry():
  assert config_reference.field_comments(SOURCE) == {
    'seed': '',
    'data.name': 'The builder. Registered by jaxattr.data. Beside it.',
    'data.size': 'Pixels.',
  }
