"""The commands of README.md and docs/*.md, checked in a dry form.

Nothing is trained or downloaded: every shell command block is split into
commands, and for each `python -m MODULE ...` / `python path.py ...` the test
checks that the module or script exists, that each `--flag` is one the module
defines (read from its source: `flags.DEFINE_*('name', ...)` calls, so no
module is imported), that `--config=FILE[:arg]` / `--sweep=FILE[:arg]` load and
that each `--config.a.b=...` override names a field of that config. Files the
commands read, relative links and `pip install '.[extra]'` extras must exist;
converted ImageNet weights go to one place, `pretrained/<arch>_v1`, wherever a
document writes or reads them; Python blocks compile.
"""

import ast
import functools
import importlib.util
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ml_collections
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
SHELL_LANGUAGES = ('', 'bash', 'sh', 'shell', 'console')
# Where the documents keep converted ImageNet weights (one folder per arch and version).
WEIGHTS = re.compile(r'pretrained/([a-z0-9_]+|\{backbone\})_v[12]')
# Flags every absl program has.
ABSL_FLAGS = frozenset(
  'help helpfull helpshort helpxml flagfile undefok verbosity v logtostderr alsologtostderr '
  'log_dir stderrthreshold showprefixforinfo logger_levels only_check_args run_with_pdb '
  'pdb_post_mortem pdb run_with_profiling profile_file use_cprofile_for_profiling'.split()
)
# Flags whose value is a file the command writes, or a run folder it may create.
OUTPUT_FLAGS = frozenset({'out', 'output', 'workdir', 'attention'})
# Parts of a document's command that stand for the reader's own values.
PLACEHOLDER = re.compile(r'\.\.\.|\$|/path/to|<|\{(?!backbone\})')
REPO_DIRS = ('configs/', 'experiments/', 'jaxattr/', 'docs/', 'tests/')


@dataclass
class Block:
  path: Path
  line: int  # 1-based line of the opening fence
  language: str
  text: str

  def where(self) -> str:
    return f'{self.path.relative_to(ROOT)}:{self.line}'


@dataclass
class Command:
  block: Block
  words: list[str]
  flags: list[tuple[str, str | None]] = field(default_factory=list)


def code_blocks(path: Path) -> list[Block]:
  """The fenced code blocks of a markdown file."""
  blocks, current, lines = [], None, path.read_text().splitlines()
  for number, line in enumerate(lines, 1):
    stripped = line.strip()
    if current is None and stripped.startswith('```'):
      current = Block(path, number, stripped[3:].strip().lower(), '')
    elif current is not None and stripped.startswith('```'):
      blocks.append(current)
      current = None
    elif current is not None:
      current.text += line + '\n'
  assert current is None, f'{path}: unclosed code block at line {current.line}'
  return blocks


def shell_commands(block: Block) -> Iterator[list[str]]:
  """The simple commands of a shell block, as word lists (pipes, `&&`, `;`, `&` split)."""
  text = block.text.replace('\\\n', ' ')
  pending = ''
  for line in text.splitlines():
    if not pending and (not line.strip() or line.lstrip().startswith('#')):
      continue
    pending += line
    lexer = shlex.shlex(pending, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = '#'
    try:
      tokens = list(lexer)
    except ValueError:  # A quote that closes on a later line (or not shell at all).
      pending += '\n'
      continue
    pending = ''
    words: list[str] = []
    for token in [*tokens, ';']:
      if token and set(token) <= set('();<>|&'):
        if words:
          yield words
        words = []
      else:
        words.append(token)


def python_invocation(words: list[str]) -> tuple[str, str, list[str]] | None:
  """('module' | 'script', name, arguments) of the python call in `words`, if any."""
  for i, word in enumerate(words):
    if re.fullmatch(r'(.*/)?python3?', word):
      rest = words[i + 1 :]
      if len(rest) >= 2 and rest[0] == '-m':
        return 'module', rest[1], rest[2:]
      if rest and rest[0].endswith('.py'):
        return 'script', rest[0], rest[1:]
      return None
  return None


def parse_flags(arguments: list[str]) -> list[tuple[str, str | None]]:
  """(name, value) of each `--name[=value]` argument; `[--x=y]` (optional) counts."""
  out = []
  for argument in arguments:
    argument = argument.strip('[]')
    if argument.startswith('--') and len(argument) > 2:
      name, eq, value = argument[2:].partition('=')
      out.append((name, value if eq else None))
  return out


def all_commands() -> list[Command]:
  commands = []
  for path in DOCUMENTS:
    for block in code_blocks(path):
      if block.language not in SHELL_LANGUAGES:
        continue
      for words in shell_commands(block):
        commands.append(Command(block, words))
        # A command given as one quoted argument (`gcloud ... --command='...'`).
        for word in words:
          if 'python' in word and ' ' in word:
            inner = Block(block.path, block.line, block.language, word.split('=', 1)[-1])
            commands.extend(Command(block, w) for w in shell_commands(inner))
  return commands


COMMANDS = all_commands()
PYTHON_COMMANDS = [(c, python_invocation(c.words)) for c in COMMANDS]
PYTHON_COMMANDS = [(c, p) for c, p in PYTHON_COMMANDS if p is not None]


def module_file(kind: str, name: str) -> Path | None:
  """The source file of a repo module or script; None if it is not the repo's."""
  if kind == 'script':
    return ROOT / name
  top = name.split('.')[0]
  if not (ROOT / top).is_dir():
    return None
  base = ROOT.joinpath(*name.split('.'))
  return base / '__main__.py' if base.is_dir() else base.with_suffix('.py')


@functools.cache
def _flags_and_imports(path: Path) -> tuple[dict[str, str], tuple[Path, ...]]:
  """The flags one file defines (name -> DEFINE_ kind) and the repo modules it imports."""
  tree = ast.parse(path.read_text())
  flags: dict[str, str] = {}
  imports = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Call):
      func = node.func
      name = func.attr if isinstance(func, ast.Attribute) else getattr(func, 'id', '')
      first = node.args[0] if node.args else None
      if name.startswith('DEFINE_') and isinstance(first, ast.Constant):
        flags[first.value] = name
    elif isinstance(node, ast.ImportFrom | ast.Import):
      names = (
        [f'{node.module}.{a.name}' for a in node.names] + [node.module]
        if isinstance(node, ast.ImportFrom) and node.module
        else [a.name for a in node.names]
      )
      for imported in names:
        if imported.split('.')[0] in ('jaxattr', 'experiments', 'configs'):
          file = module_file('module', imported)
          if file is not None and file.is_file():
            imports.append(file)
  return flags, tuple(imports)


@functools.cache
def defined_flags(path: Path) -> dict[str, str]:
  """name -> DEFINE_ kind of the absl flags a module and the repo modules it imports define."""
  out: dict[str, str] = {}
  todo, seen = [path], set()
  while todo:
    file = todo.pop()
    if file in seen:
      continue
    seen.add(file)
    flags, imports = _flags_and_imports(file)
    out.update(flags)
    todo.extend(imports)
  return out


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of `FILE[:arg]` (a config or a sweep file), as the CLIs load it."""
  path, _, arg = spec.partition(':')
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  module_spec = importlib.util.spec_from_file_location(f'_doc_{Path(path).stem}', ROOT / path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def has_field(config: ml_collections.ConfigDict, dotted: str) -> bool:
  node = config
  for part in dotted.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def command_id(item) -> str:
  command, (_, name, _) = item
  return f'{command.block.where()}:{name}'


@pytest.mark.parametrize('item', PYTHON_COMMANDS, ids=[command_id(i) for i in PYTHON_COMMANDS])
def test_python_command(item):
  command, (kind, name, arguments) = item
  where = f'{command.block.where()}: {" ".join(command.words)[:120]}'
  if kind == 'module':
    if name.split('.')[0] in ('jaxattr', 'experiments'):
      assert module_file(kind, name).is_file(), f'{where}: no module {name}'
    else:
      assert importlib.util.find_spec(name) is not None, f'{where}: no module {name}'
  elif not PLACEHOLDER.search(name):
    assert (ROOT / name).is_file(), f'{where}: no script {name}'
    package = (ROOT / name).parent
    assert not (package / '__init__.py').is_file(), (
      f'{where}: {name} is in a package and imports it: run it as '
      f'python -m {Path(name).with_suffix("").as_posix().replace("/", ".")}'
    )
  source = module_file(kind, name)
  if source is None or not source.is_file():
    return  # Not the repo's (venv, pytest): its flags are not ours to check.
  defined = defined_flags(source)
  config = None
  for flag, value in parse_flags(arguments):
    if flag in ('config', 'sweep') and value and not PLACEHOLDER.search(value):
      assert (ROOT / value.partition(':')[0]).is_file(), f'{where}: no file {value}'
      config = load_config(value)
  for flag, value in parse_flags(arguments):
    if flag.startswith('config.'):
      assert config is not None, f'{where}: --{flag} without --config / --sweep'
      assert has_field(config, flag[len('config.') :]), f'{where}: the config has no {flag[7:]}'
      continue
    known = flag in defined or flag in ABSL_FLAGS
    negated = flag.startswith('no') and defined.get(flag[2:]) in ('DEFINE_bool', 'DEFINE_boolean')
    assert known or negated, f'{where}: {name} defines no --{flag}'
    if (
      value
      and flag not in OUTPUT_FLAGS
      and value.startswith(REPO_DIRS)
      and not PLACEHOLDER.search(value)
    ):
      assert (ROOT / value.partition(':')[0]).exists(), f'{where}: no file {value}'


def test_every_document_has_commands_checked():
  checked = {c.block.path for c, _ in PYTHON_COMMANDS}
  assert ROOT / 'README.md' in checked
  assert len(PYTHON_COMMANDS) >= 20, 'The command parser found almost nothing to check.'


def test_pip_extras_exist():
  pyproject = tomllib.loads((ROOT / 'pyproject.toml').read_text())
  extras = set(pyproject['project']['optional-dependencies'])
  used = set()
  for command in COMMANDS:
    if command.words[:2] == ['pip', 'install']:
      for word in command.words:
        match = re.fullmatch(r'(?:\.|jaxattr)\[([\w,-]+)\]', word)
        if match:
          used.update(match.group(1).split(','))
  assert used, 'No `pip install .[extra]` in the documents.'
  assert used <= extras, f'Extras not in pyproject.toml: {sorted(used - extras)}'


def test_one_weights_path():
  """Converted weights are written and read at `pretrained/<arch>_v1` (or `_v2`) everywhere.

  A convert command writes the folder of its `--arch`; a training command reads the
  folder of its config's backbone.
  """
  converted = 0
  for command in COMMANDS:
    invocation = python_invocation(command.words)
    if invocation is None:
      continue
    _, name, arguments = invocation
    values = dict(parse_flags(arguments))
    where = command.block.where()
    if name == 'jaxattr.convert' and values.get('output'):
      match = WEIGHTS.fullmatch(values['output'])
      assert match and match.group(1) == values.get('arch'), (
        f'{where}: --arch={values.get("arch")} written to {values["output"]}'
      )
      converted += 1
    pretrained = values.get('config.model.pretrained')
    named = pretrained in ('published', 'scratch')
    if pretrained and not named and not pretrained.startswith(('torchvision:', 'openai:')):
      match = WEIGHTS.fullmatch(pretrained)
      assert match, f'{where}: weights read from {pretrained}'
      spec = values.get('config') or values.get('sweep')
      if match.group(1) != '{backbone}' and spec and not PLACEHOLDER.search(spec):
        backbone = values.get('config.model.backbone') or load_config(spec).model.backbone
        assert match.group(1) == backbone, f'{where}: {backbone} reads {pretrained}'
  assert converted, 'No document shows how to convert weights.'


LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def slug(heading: str) -> str:
  """GitHub's anchor of a markdown heading."""
  text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
  return text.replace(' ', '-')


@pytest.mark.parametrize('path', DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_paths_exist(path):
  text = path.read_text()
  outside_code = re.sub(r'```.*?```', '', text, flags=re.S)
  for target in LINK.findall(outside_code):
    if re.match(r'[a-z]+:', target):
      continue
    file, _, anchor = target.partition('#')
    resolved = (path.parent / file).resolve() if file else path
    assert resolved.exists(), f'{path.name}: link to missing {target}'
    if anchor and resolved.suffix == '.md':
      headings = re.findall(r'^#+\s+(.*)$', resolved.read_text(), flags=re.M)
      assert anchor in {slug(h) for h in headings}, f'{path.name}: no heading #{anchor}'
  # Repository files named in the prose (`jaxattr/metrics.py`, `configs/wider.py:resnet50`).
  for named in re.findall(r'`((?:configs|experiments|jaxattr|docs|tests)/[^`\s]*)`', outside_code):
    file = named.partition(':')[0].rstrip('/')
    if not PLACEHOLDER.search(file):
      assert (ROOT / file).exists(), f'{path.name}: names missing {named}'


@pytest.mark.parametrize('path', DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_compile(path):
  for block in code_blocks(path):
    if block.language == 'python':
      compile(block.text, block.where(), 'exec')


CLI_FILES = sorted(
  p
  for folder in ('jaxattr', 'experiments')
  for p in (ROOT / folder).rglob('*.py')
  if 'app.run(' in p.read_text()
)


@pytest.mark.parametrize('path', CLI_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_help_text_keeps_its_lines(path):
  """`--help` prints the module docstring and the flag help strings as written.

  A backslash at the end of a line in a non-raw docstring (a shell continuation in
  an example command) is a Python line continuation: the line break disappears and
  `--help` prints the next line's indentation as a run of spaces inside the line.
  """
  source = path.read_text()
  tree = ast.parse(source)
  first = tree.body[0] if tree.body else None
  if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
    segment = ast.get_source_segment(source, first)
    raw = segment.lstrip()[:1] in ('r', 'R')
    assert raw or '\\\n' not in segment, (
      f'{path.name}: the docstring continues a line with a backslash; make it r"""...""" '
      'so the shell continuation stays visible'
    )
  for node in ast.walk(tree):
    if isinstance(node, ast.Call):
      func = node.func
      name = func.attr if isinstance(func, ast.Attribute) else getattr(func, 'id', '')
      if name.startswith('DEFINE_'):
        for arg in [*node.args, *(k.value for k in node.keywords)]:
          if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            assert not re.search(r'\S(\n| {3,})\S', arg.value), (
              f'{path.name}:{node.lineno}: help text with a line break or a run of spaces'
            )


def test_backbone_table_matches_the_registry():
  """The README's backbone table lists every registered backbone with its parameter count."""
  from jaxattr.models import registry

  rows = re.findall(
    r'^\| `(\w+)` \| ([\d.]+) M \| `([\w.-]+)` \|$',
    (ROOT / 'README.md').read_text(),
    flags=re.M,
  )
  table = {name: (float(millions), file) for name, millions, file in rows}
  assert set(table) == set(registry.BACKBONES)
  for name, backbone in registry.BACKBONES.items():
    millions, file = table[name]
    assert millions == round(backbone.num_params / 1e6, 1), name
    assert backbone.url.endswith('/' + file), name
