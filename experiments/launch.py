r"""Runs an ablation sweep sequentially, one training subprocess per run; re-running resumes.

  python -m experiments.launch --sweep=experiments/wider_table2.py:synthetic \
      --workdir=runs/table2
  python -m experiments.launch --sweep=experiments/wider_table2.py --workdir=runs/table2 \
      --config.data.manual_dir=/data/wider_attribute --config.data.data_dir=/data/tfds

A sweep file has `get_config(arg)` (the base config) and `sweep(add)`, which calls
`add(**overrides)` once per run with dotted config keys (and `seed`). Run k goes to
`<workdir>/<sweep name>/<override string>`, e.g.
`runs/table2/wider_table2_synthetic/levels=4,primary=weighted_focal,attention=bce,seed=1`.

Each run is `python -m jaxattr.main --config=<sweep file>:<arg> --workdir=<run dir>
--config.<key>=<value> ...` (the command is logged and written to the run dir as
`command.txt`, so any run can be repeated by hand), followed by the extra
`--config.*` arguments given to the launcher (data paths, ...), in which `{key}`
becomes the run's value of that swept key (its short name or dotted name), e.g.
`--config.model.pretrained=pretrained/{backbone}_v1`. A subprocess per run
keeps compile caches and host memory from growing over a long sweep. A run whose
`results.json` exists is skipped; an interrupted run resumes from its checkpoint,
since the training loop itself resumes. The output of run k is in `<run dir>/train.log`.

Run it from the repository root: the sweep files import `experiments.sweeps`, and
each run's subprocess starts there too (`python -m` puts the working directory on
the import path).
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from absl import app, flags, logging

from jaxattr.run import layout

ROOT = Path(__file__).resolve().parents[1]

_UNSAFE = re.compile(r'[^A-Za-z0-9._+=-]')


class Sweep:
  """A loaded sweep file: its module, argument, name and runs (override dicts, in order)."""

  def __init__(self, spec: str):
    path, _, arg = spec.partition(':')
    self.path = Path(path).resolve()
    if not self.path.is_file():
      raise FileNotFoundError(f'Sweep file {path} not found.')
    self.arg = arg or None
    self.module = load_module(self.path)
    stem = self.path.stem
    self.name = f'{stem}_{_UNSAFE.sub("_", arg)}' if arg else stem
    self.runs = collect_runs(self.module)
    self.run_names = run_names(self.runs)

  @property
  def config_spec(self) -> str:
    return f'{self.path}:{self.arg}' if self.arg else str(self.path)

  def base_config(self):
    return self.module.get_config(self.arg)

  def run_dirs(self, workdir: str | os.PathLike) -> list[Path]:
    root = Path(workdir).resolve() / self.name
    return [root / name for name in self.run_names]


def load_module(path: str | os.PathLike) -> ModuleType:
  """Imports a sweep file by path (it needs not be in a package)."""
  path = Path(path)
  spec = importlib.util.spec_from_file_location(f'_sweep_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for attr in ('get_config', 'sweep'):
    if not hasattr(module, attr):
      raise ValueError(f'{path} is not a sweep file: it has no `{attr}`.')
  return module


def collect_runs(module: ModuleType) -> list[dict[str, Any]]:
  """The override dicts that `module.sweep(add)` asks for, in order.

  Raises:
    ValueError: if the sweep asks for the same run twice.
  """
  runs: list[dict[str, Any]] = []

  def add(**overrides):
    if overrides in runs:
      raise ValueError(f'The sweep adds the run {overrides} twice.')
    runs.append(dict(overrides))

  module.sweep(add)
  return runs


def short_keys(keys: Sequence[str]) -> dict[str, str]:
  """The shortest dotted suffix of each key that no other key of the sweep ends with.

  E.g. {'model.attention.levels': 'levels', 'loss.attention': 'attention'}; two
  keys ending alike ('a.x', 'b.x') keep their full names.
  """
  keys = list(dict.fromkeys(keys))
  out = {}
  for key in keys:
    parts = key.split('.')
    for n in range(1, len(parts) + 1):
      suffix = '.'.join(parts[-n:])
      clashes = [k for k in keys if k != key and (k == suffix or k.endswith('.' + suffix))]
      if not clashes:
        out[key] = suffix
        break
    else:
      out[key] = key
  return out


def format_value(value: Any) -> str:
  """A value as it appears in a run name: (3, 4) -> '3-4', () -> 'none', True -> 'true'."""
  if isinstance(value, tuple | list):
    return '-'.join(format_value(v) for v in value) if value else 'none'
  if isinstance(value, bool):
    return str(value).lower()
  return str(value)


def override_string(overrides: dict[str, Any], names: dict[str, str] | None = None) -> str:
  """A readable, filesystem-safe name of one run, e.g. 'levels=4,attention=bce,seed=1'.

  Args:
    overrides: dotted config keys -> values.
    names: short name of each key (see `short_keys`); default the keys' last parts.

  Returns:
    `name=value` pairs in the order of `overrides`, joined by commas; characters
    outside [A-Za-z0-9._+=-] become '_'.
  """
  names = names or {k: k.rsplit('.', 1)[-1] for k in overrides}
  pairs = (f'{names[k]}={format_value(v)}' for k, v in overrides.items())
  return ','.join(_UNSAFE.sub('_', p) for p in pairs) or 'base'


def run_names(runs: Sequence[dict[str, Any]]) -> list[str]:
  """The override string of every run of a sweep, with key names shortened sweep-wide."""
  names = short_keys([k for r in runs for k in r])
  out = [override_string(r, names) for r in runs]
  if len(set(out)) != len(out):
    raise ValueError(f'Two runs of the sweep get the same name: {out}.')
  return out


def config_args(overrides: dict[str, Any]) -> list[str]:
  """`--config.<key>=<value>` arguments that ml_collections' config_flags parse back.

  Tuples are written as Python literals ('(3, 4)', '(4,)', '()'), strings bare.
  """
  args = []
  for key, value in overrides.items():
    text = repr(tuple(value)) if isinstance(value, tuple | list) else str(value)
    args.append(f'--config.{key}={text}')
  return args


def is_finished(run_dir: str | os.PathLike) -> bool:
  """Whether a run wrote complete test results (a half-written file counts as not)."""
  path = Path(run_dir) / layout.RESULTS
  if not path.is_file():
    return False
  try:
    return 'test' in json.loads(path.read_text())
  except json.JSONDecodeError:
    return False


_PLACEHOLDER = re.compile(r'\{([A-Za-z0-9_.]+)\}')


def substitute(arg: str, overrides: dict[str, Any], names: dict[str, str] | None = None) -> str:
  """Replaces `{key}` in a passed-through argument by the run's value of that key.

  Args:
    arg: e.g. '--config.model.pretrained=pretrained/{backbone}_v1'.
    overrides: the run's overrides (dotted keys -> values).
    names: short name of each key (see `short_keys`).

  Returns:
    The argument with every placeholder replaced ('{backbone}' -> 'resnet50').

  Raises:
    KeyError: for a placeholder that names no swept key of the run.
  """
  names = names or {k: k.rsplit('.', 1)[-1] for k in overrides}
  lookup = {**{names[k]: v for k, v in overrides.items()}, **overrides}

  def replace(match):
    if match.group(1) not in lookup:
      raise KeyError(f'{arg}: {{{match.group(1)}}} is not a swept key ({sorted(lookup)}).')
    return format_value(lookup[match.group(1)])

  return _PLACEHOLDER.sub(replace, arg)


def run_command(
  sweep: Sweep, run_dir: Path, overrides: dict[str, Any], passthrough: Sequence[str] = ()
) -> list[str]:
  """The training command of one run (overrides first, then the launcher's extra args)."""
  names = short_keys([k for r in sweep.runs for k in r])
  return [
    sys.executable,
    '-m',
    'jaxattr.main',
    f'--config={sweep.config_spec}',
    f'--workdir={run_dir}',
    *config_args(overrides),
    *(substitute(arg, overrides, names) for arg in passthrough),
  ]


def launch(
  sweep: Sweep,
  workdir: str | os.PathLike,
  passthrough: Sequence[str] = (),
  dry_run: bool = False,
  stop_on_failure: bool = False,
) -> list[str]:
  """Runs the unfinished runs of `sweep` one after another.

  Args:
    sweep: the loaded sweep.
    workdir: root folder; runs go to `workdir/<sweep.name>/<run name>`.
    passthrough: extra `--config.*` arguments for every run.
    dry_run: only log what would run.
    stop_on_failure: stop at the first run that exits with an error.

  Returns:
    The names of the runs that failed.
  """
  run_dirs = sweep.run_dirs(workdir)
  todo = [k for k, d in enumerate(run_dirs) if not is_finished(d)]
  logging.info(
    'Sweep %s: %d runs, %d finished, %d to run, in %s.',
    sweep.name,
    len(run_dirs),
    len(run_dirs) - len(todo),
    len(todo),
    run_dirs[0].parent if run_dirs else workdir,
  )
  failed, durations = [], []
  for position, k in enumerate(todo):
    run_dir, overrides = run_dirs[k], sweep.runs[k]
    command = run_command(sweep, run_dir, overrides, passthrough)
    eta = ''
    if durations:
      eta = f', about {sum(durations) / len(durations) * (len(todo) - position) / 60:.0f} min left'
    logging.info(
      'Run %d/%d (%d of %d to do%s): %s',
      k + 1,
      len(run_dirs),
      position + 1,
      len(todo),
      eta,
      run_dir.name,
    )
    logging.info('  %s', ' '.join(command))
    if dry_run:
      continue
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / layout.COMMAND).write_text(' '.join(command) + '\n')
    (run_dir / layout.OVERRIDES).write_text(json.dumps(overrides) + '\n')
    start = time.time()
    with open(run_dir / layout.TRAIN_LOG, 'a') as log:
      code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    durations.append(time.time() - start)
    if code == 0 and is_finished(run_dir):
      logging.info('  done in %.0f s.', durations[-1])
      continue
    logging.error(
      '  FAILED (exit code %d) after %.0f s; see %s',
      code,
      durations[-1],
      run_dir / layout.TRAIN_LOG,
    )
    failed.append(run_dir.name)
    if stop_on_failure:
      break
  return failed


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(the launcher's own arguments, the `--config.*` ones passed through to every run)."""
  own, passthrough = [], []
  for arg in argv:
    (passthrough if arg.startswith('--config.') else own).append(arg)
  return own, passthrough


_PASSTHROUGH: list[str] = []


def _parse(argv: list[str]) -> list[str]:
  own, passthrough = split_argv(argv)
  _PASSTHROUGH.extend(passthrough)
  return flags.FLAGS(own)


def define_flags() -> None:
  """The launcher's flags (defined only when it runs, so other scripts can import it)."""
  flags.DEFINE_string('sweep', None, 'Sweep file, optionally with an argument: path[:arg].')
  flags.DEFINE_string('workdir', None, 'Root folder of the sweep runs.')
  flags.DEFINE_bool('dry_run', False, 'Print the runs and their state; train nothing.')
  flags.DEFINE_bool(
    'stop_on_failure', False, 'Stop at the first failed run (default: go on, report at the end).'
  )
  flags.mark_flags_as_required(['sweep', 'workdir'])


def check(sweep_spec: str, workdir: str, passthrough: Sequence[str] = ()) -> list[str]:
  """Problems of the launcher's flags and of every run's resolved config, one line each.

  A problem all runs share is reported once; one of some runs only is prefixed with
  the run's name. The device count is the runs' business (not checked here).
  """
  import ast

  from jaxattr import schema

  problems = []
  if Path(workdir).exists() and not Path(workdir).is_dir():
    problems.append(f'--workdir: {workdir} is a file, not a folder')
  try:
    sweep = Sweep(sweep_spec)
  except (OSError, ValueError, TypeError) as e:
    return [*problems, f'--sweep: {e}']
  names = short_keys([k for r in sweep.runs for k in r])
  per_run = []
  for run_name, overrides in zip(sweep.run_names, sweep.runs, strict=True):
    config, found = sweep.base_config(), []
    for arg in (*config_args(overrides), *passthrough):
      key, _, text = substitute(arg, overrides, names)[len('--config.') :].partition('=')
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = text  # A bare string, as config_flags reads it.
      *parents, leaf = key.split('.')
      try:
        node = config
        for part in parents:
          node = node[part]
        node[leaf] = tuple(value) if isinstance(value, list) else value
      except KeyError:
        found.append(f'config.{key}: no such field')
      except (AttributeError, TypeError) as e:
        found.append(f'config.{key}: cannot be set to {text!r}: {e}')
    per_run.append((run_name, found + schema.validate(config)))
  everywhere = set.intersection(*(set(p) for _, p in per_run)) if per_run else set()
  problems += [p for p in per_run[0][1] if p in everywhere] if per_run else []
  problems += [f'run {n}: {p}' for n, found in per_run for p in found if p not in everywhere]
  return problems


def main(argv):
  del argv
  f = flags.FLAGS
  from jaxattr import config_validation  # Every bad flag or value, one line each; exit 2.

  problems = check(f.sweep, f.workdir, _PASSTHROUGH)
  config_validation.exit_if_problems(problems, 'experiments/launch.py')
  sweep = Sweep(f.sweep)
  failed = launch(sweep, f.workdir, _PASSTHROUGH, f.dry_run, f.stop_on_failure)
  if failed:
    logging.error('%d runs failed: %s', len(failed), ', '.join(failed))
    sys.exit(1)
  logging.info('Sweep %s complete.', sweep.name)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=_parse)
