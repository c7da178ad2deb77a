"""The layout of a run folder (workdir): the name of every file in it, and its paths.

Every reader and writer of a run folder (training, `checkpoints`, the tools, the
experiment scripts) takes its names and paths from here, so the layout is stated once:

  config.json                  the resolved config the run trains with (`run.resume`)
  config_history.jsonl         append-only: the original config, then each change a
                               resumed run was allowed, with its step (`run.resume`)
  attributes.json              attribute names and train positive ratios, written when
                               training starts, so a run restores without its dataset
  checkpoints/<step>           the latest k train states (`checkpoint_dir('latest')`)
  best/<step>                  the state with the best validation metric (one kept)
  <step>/jaxattr_checksums.json  the sha256 of every file of a saved step
  damaged/                     checkpoints set aside because they cannot be read
  metrics.jsonl                one JSON object per logged step
  log.txt                      the full log of the run, libraries' INFO lines included
                               (`log.<i>.txt` for process i > 0)
  results.json, results.md     the final validation and test metrics
  attention.png                the end-of-run attention grid
  thresholds.json              per-attribute thresholds tuned by `jaxattr.evaluate
                               --tune_thresholds` for one checkpoint
  eval_<split>_<which>.json    a `jaxattr.evaluate` report
  run.lock                     the lock of the run writing the folder (`lock.WorkdirLock`)
  command.txt, overrides.json,  written by the sweep launcher (`experiments/launch.py`):
  train.log                    the run's command, its swept values, its output

The modules beside this one read and write these files: `files` (attributes,
thresholds, results, the saved config), `restore` (a checkpoint's variables),
`logs`, `lock` and `resume`.
"""

import os
from pathlib import Path

CONFIG = 'config.json'
CONFIG_HISTORY = 'config_history.jsonl'
ATTRIBUTES = 'attributes.json'
CHECKPOINT_DIRS = {'latest': 'checkpoints', 'best': 'best'}
CHECKPOINT_CHOICES = ('best', 'latest', 'auto')
CHECKSUMS = 'jaxattr_checksums.json'  # In each step directory, beside Orbax's files.
DAMAGED = 'damaged'  # damaged/<checkpoints|best>-<step>: set aside, never deleted.
METRICS = 'metrics.jsonl'
LOG = 'log.txt'
RESULTS = 'results.json'
RESULTS_MARKDOWN = 'results.md'
ATTENTION = 'attention.png'
THRESHOLDS = 'thresholds.json'
LOCK = 'run.lock'
# The sweep launcher's files in each run folder of a sweep.
COMMAND = 'command.txt'
OVERRIDES = 'overrides.json'
TRAIN_LOG = 'train.log'


class RunError(Exception):
  """A workdir that cannot be used (missing, no checkpoint, no attribute names)."""


def require_dir(workdir: Path) -> None:
  """Raises `RunError` unless `workdir` is a folder."""
  if not workdir.is_dir():
    raise RunError(f'{workdir}: no such workdir.')


def checkpoint_dir(workdir: str | Path, which: str) -> Path:
  """`workdir/checkpoints` ('latest') or `workdir/best` ('best')."""
  return Path(workdir) / CHECKPOINT_DIRS[which]


def metrics_path(workdir: str | Path) -> Path:
  """`workdir/metrics.jsonl`: the training loop appends one JSON object per log step."""
  return Path(workdir) / METRICS


def log_path(workdir: str | Path, process_index: int = 0) -> Path:
  """The run's full log (libraries' lines included): `log.txt`, `log.<i>.txt` on process i > 0."""
  name = LOG if process_index == 0 else f'log.{process_index}.txt'
  return Path(workdir) / name


def attention_path(workdir: str | Path) -> Path:
  """`workdir/attention.png`: the end-of-run attention grid."""
  return Path(workdir) / ATTENTION


def eval_report_path(workdir: str | Path, split: str, which: str) -> Path:
  """Where `jaxattr.evaluate` writes its report of `split` and checkpoint `which`."""
  return Path(workdir) / f'eval_{split}_{which}.json'


def create_workdir(workdir: str | Path) -> Path:
  """Creates the workdir (and its parents) for writing, or says in one line why not.

  Args:
    workdir: the run's workdir.

  Returns:
    The path.

  Raises:
    RunError: a file stands where the folder (or one of its parents) should be, or the
      folder cannot be created or written.
  """
  path = Path(workdir)
  for part in (path, *path.parents):
    if part.exists():
      if not part.is_dir():
        where = 'it' if part == path else f'its parent {part}'
        raise RunError(f'{path}: cannot be used as the workdir: {where} is a file, not a folder.')
      break
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise RunError(f'{path}: cannot create the workdir: {e.strerror} ({e.filename}).') from e
  if not os.access(path, os.W_OK | os.X_OK):
    raise RunError(f'{path}: the workdir is not writable by this user.')
  return path
