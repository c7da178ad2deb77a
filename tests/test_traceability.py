"""Every figure the README (and the docs pages listed in TRACED) prints comes from a
committed result file.

A result file is a markdown file under experiments/results/ that names the command
that made it, the commit it ran at and the machine it ran on (the paper's own numbers
are in experiments/results/paper.md, which names the paper's table for each). A figure
is a number with a decimal point, a percentage or a duration (`4 min 15 s`); version
numbers (`3.11`, `0.10.2`, `1.1.0`), HTML attributes and the backbone table's parameter
counts (checked against the registry by tests/test_docs.py) are not figures. Each figure
must appear, digit for digit, in at least one result file.
"""

import re

import pytest

from tests.conftest import REPO

README = REPO / 'README.md'
# The pages whose every figure is traced. The other docs pages still quote measurements
# that no result file holds (docs/experiments.md's history of the demo, for one).
TRACED = [README, REPO / 'docs' / 'training.md', REPO / 'docs' / 'results.md']
RESULTS = sorted((REPO / 'experiments' / 'results').glob('*.md'))
PAPER = REPO / 'experiments' / 'results' / 'paper.md'

# Not figures: versions of Python, packages and data, HTML tags (image widths), and the
# backbone table's rows.
VERSIONS = re.compile(r'Python 3\.\d+|\d+\.\d+\.\d+|==\d+(\.\d+)*|<[^>]*>')
BACKBONE_ROW = re.compile(r'^\| `\w+` \| [\d.]+ M \| .*$', flags=re.M)
DURATION = re.compile(r'\b\d+(?:\.\d+)? (?:min|h)(?: \d+(?:\.\d+)? s)?\b|\b\d+(?:\.\d+)? s\b')
DECIMAL = re.compile(r'(?<![\d.])\d+\.\d+(?!\.?\d)')
PERCENT = re.compile(r'(?<![\d.])\d+(?:\.\d+)? ?%')


def figures(text: str) -> set[str]:
  """The figures of a markdown text (durations, decimals, percentages), as written."""
  text = BACKBONE_ROW.sub('', VERSIONS.sub('', text))
  found = set(DURATION.findall(text))
  text = DURATION.sub('', text)
  found |= {p.replace(' ', '') for p in PERCENT.findall(text)}
  found |= set(DECIMAL.findall(PERCENT.sub('', text)))
  return found


def appears(figure: str, text: str) -> bool:
  """Whether `figure` is written in `text` (a percentage with or without its space)."""
  if figure.endswith('%'):
    number = re.escape(figure[:-1])
    return re.search(rf'(?<![\d.]){number} ?%', text) is not None
  return re.search(rf'(?<![\d.]){re.escape(figure)}(?!\d)', text) is not None


def untraced(readme: str, sources: list[str]) -> list[str]:
  """The README's figures that no result file holds."""
  return sorted(f for f in figures(readme) if not any(appears(f, s) for s in sources))


@pytest.mark.parametrize('page', TRACED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_figure_is_in_a_result_file(page):
  sources = [path.read_text() for path in RESULTS]
  missing = untraced(page.read_text(), sources)
  name = page.relative_to(REPO)
  assert not missing, (
    f'{name} prints figures that no file under experiments/results/ holds: {missing}'
  )


def test_readme_has_figures_to_check():
  assert len(figures(README.read_text())) >= 10, 'The figure finder found almost nothing.'


def test_result_files_name_command_commit_and_machine():
  for path in RESULTS:
    text = path.read_text()
    if path == PAPER:
      assert re.search(r'Table \d', text), f'{path.name}: names no table of the paper'
      continue
    name = path.relative_to(REPO)
    assert re.search(r'python3? (-m )?\S', text), f'{name}: names no command'
    assert re.search(r'\bcommits? [0-9a-f]{7,40}\b', text, flags=re.I), f'{name}: no commit'
    assert re.search(r'\bmachine\b', text, flags=re.I), f'{name}: names no machine'


def test_figure_finder_on_a_known_text():
  text = (
    'Python 3.11, jax 0.10.2, data 1.1.0: test mAP 78.5 (sunglass 38.2 %) '
    'in 4 min 15 s, 0.39x PyTorch, ±1.11; 14 attributes at 112 px.\n'
    '| `resnet18` | 11.7 M | `resnet18-f37072fd.pth` |\n'
  )
  assert figures(text) == {'78.5', '38.2%', '4 min 15 s', '0.39', '1.11'}
  assert untraced(text, ['mAP 78.5; 38.2%; 4 min 15 s; 0.39 and 1.11']) == []
  assert untraced(text, ['mAP 78.56; 38.2 %; 4 min 15 s; 10.39, 1.11']) == ['0.39', '78.5']
