"""Every figure that README.md and every page of docs/ prints comes from a committed file.

The sources a figure may come from, and why each is one:

- Result files: markdown files under experiments/results/ that name the command that
  made them, the commit it ran at and the machine it ran on. Where one of the three was
  not recorded when the figure was measured, the file says so ('commit not recorded')
  rather than naming a guess.
- Published files: result files that copy numbers others published (paper.md: the
  paper's tables; published.md: torchvision's ImageNet accuracies, constants of the peers'
  code and protocols). Nobody here ran them, so instead of a command, commit and machine
  each names its source (a table of the paper, or a URL), under a line starting with
  'Published by others'.
- Constants: docs/config.md, generated from jaxattr/schema.py by
  `python -m jaxattr.config_reference` and held equal to the code by
  tests/test_config_reference.py. A config default (the ImageNet mean and std, the
  learning rate) is code, not a measurement, so a page may quote it.
- Defaults of duration flags (`--join_timeout_s`, `--interval_s`: seconds), read from
  their `flags.DEFINE_*` calls in jaxattr/ and experiments/: code, as config defaults are.
- Backbone parameter counts (`resnet18 11.7M` in prose, `| `resnet18` | 11.7 M | ...`
  as the README's table row, or a table row ending in its count as docs/pretrained.md's
  CLIP table): they are the registry's, so they are compared with
  `registry.BACKBONES[name].num_params` here instead of with a file.

Measurements are not quoted from memory: the demo's history, the ablations' readings, the
Slurm run and the benchmarks live in result files with their own provenance, and docs/
keeps the guide text, the commands (which tests/test_docs.py checks) and links to them.

A figure is a number with a decimal point, a percentage or a duration (`4 min 15 s`);
version numbers (`3.11`, `glibc ≥ 2.35`, `0.10.2`, `1.1.0`) and HTML attributes are not
figures. Each figure must appear, digit for digit, in at least one source.
"""

import re

import pytest

from tests.conftest import REPO

README = REPO / 'README.md'
PAGES = [README, *sorted((REPO / 'docs').glob('*.md'))]
RESULTS = sorted((REPO / 'experiments' / 'results').glob('*.md'))
CONSTANTS = [REPO / 'docs' / 'config.md']
SOURCES = [*RESULTS, *CONSTANTS]
# A flag whose name ends in `_s` holds seconds; its default is a constant of the code.
DURATION_FLAG = re.compile(r"DEFINE_\w+\(\s*'\w+_s',\s*(\d+(?:\.\d+)?)")
# The line that makes a result file a published one; its source follows it.
PUBLISHED = re.compile(r'^Published by others\b', flags=re.M)
SOURCE = re.compile(r'\bTable \d|https?://\S+')

# Not figures: versions of Python, glibc, packages and data, and HTML tags (image widths).
VERSIONS = re.compile(r'Python 3\.\d+|glibc (?:≥ )?\d+\.\d+|\d+\.\d+\.\d+|==\d+(\.\d+)*|<[^>]*>')
# Parameter counts of backbones: a table row whose first cell is the backbone, counted in
# a later cell ('| `resnet18` | 11.7 M | ...'), or 'resnet18 11.7M' in prose.
PARAMETER_ROW = re.compile(r'^(\| `(\w+)` \|(?:[^|\n]*\|)*?) ([\d.]+) M \|', flags=re.M)
PARAMETER_PROSE = re.compile(r'\b([a-z][a-z0-9_]*)\s+(\d+\.\d)M\b')
DURATION = re.compile(r'\b\d+(?:\.\d+)? (?:min|h)(?: \d+(?:\.\d+)? s)?\b|\b\d+(?:\.\d+)? s\b')
DECIMAL = re.compile(r'(?<![\d.])\d+\.\d+(?!\.?\d)')
PERCENT = re.compile(r'(?<![\d.])\d+(?:\.\d+)? ?%')


def parameter_counts(text: str) -> list[tuple[str, str]]:
  """(backbone, millions as written) of each parameter count in a markdown text."""
  rows = [(name, count) for _, name, count in PARAMETER_ROW.findall(text)]
  return rows + PARAMETER_PROSE.findall(text)


def figures(text: str) -> set[str]:
  """The figures of a markdown text (durations, decimals, percentages), as written."""
  text = VERSIONS.sub('', text)
  text = PARAMETER_PROSE.sub('', PARAMETER_ROW.sub(r'\1 |', text))
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


def flag_defaults() -> str:
  """The defaults of the duration flags in jaxattr/ and experiments/, as `300 s`."""
  files = [*(REPO / 'jaxattr').rglob('*.py'), *(REPO / 'experiments').glob('*.py')]
  found = {m for path in files for m in DURATION_FLAG.findall(path.read_text())}
  return ', '.join(f'{float(seconds):g} s' for seconds in sorted(found))


def untraced(page: str, sources: list[str]) -> list[str]:
  """The figures of a page that no source holds."""
  return sorted(f for f in figures(page) if not any(appears(f, s) for s in sources))


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_figure_is_in_a_result_file(page):
  sources = [*(path.read_text() for path in SOURCES), flag_defaults()]
  missing = untraced(page.read_text(), sources)
  name = page.relative_to(REPO)
  assert not missing, (
    f'{name} prints figures that no file under experiments/results/ holds (nor docs/config.md '
    f'nor a duration flag default): {missing}'
  )


def test_parameter_counts_are_the_registrys():
  from jaxattr.models import registry

  for page in PAGES:
    for name, millions in parameter_counts(page.read_text()):
      where = f'{page.relative_to(REPO)}: {name} {millions} M'
      assert name in registry.BACKBONES, f'{where}: no such backbone in the registry'
      expected = round(registry.BACKBONES[name].num_params / 1e6, 1)
      assert float(millions) == expected, f'{where}, the registry counts {expected} M'


def test_flag_defaults_are_read():
  assert '300 s' in flag_defaults().split(', '), "main.py's --join_timeout_s default not found"


def test_readme_has_figures_to_check():
  assert len(figures(README.read_text())) >= 10, 'The figure finder found almost nothing.'


def test_result_files_name_their_provenance():
  for path in RESULTS:
    text = path.read_text()
    name = path.relative_to(REPO)
    if PUBLISHED.search(text):
      assert SOURCE.search(text), f'{name}: published, but names no table of the paper or URL'
      continue
    for label, named in (
      ('command', r'python3? (-m )?\S'),
      ('commit', r'\bcommits? [0-9a-f]{7,40}\b'),
      ('machine', r'\bmachine\b'),
    ):
      unrecorded = rf'\b{label}s? (?:was |were )?not recorded'
      assert re.search(named, text, flags=re.I) or re.search(unrecorded, text, flags=re.I), (
        f'{name}: names no {label} (nor says that it was not recorded)'
      )


def test_figure_finder_on_a_known_text():
  text = (
    'Python 3.11, jax 0.10.2, data 1.1.0: test mAP 78.5 (sunglass 38.2 %) '
    'in 4 min 15 s, 0.39x PyTorch, ±1.11; 14 attributes at 112 px; glibc ≥ 2.35.\n'
    '| `resnet18` | 11.7 M | `resnet18-f37072fd.pth` |\n'
    '| `clip_vit_b_16` | `openai:ViT-B-16` | 86.2 M |\n'
    'Parameters: resnet18 11.7M, resnet50\n25.6M.\n'
  )
  assert figures(text) == {'78.5', '38.2%', '4 min 15 s', '0.39', '1.11'}
  assert parameter_counts(text) == [
    ('resnet18', '11.7'),
    ('clip_vit_b_16', '86.2'),
    ('resnet18', '11.7'),
    ('resnet50', '25.6'),
  ]
  assert untraced(text, ['mAP 78.5; 38.2%; 4 min 15 s; 0.39 and 1.11']) == []
  assert untraced(text, ['mAP 78.56; 38.2 %; 4 min 15 s; 10.39, 1.11']) == ['0.39', '78.5']
