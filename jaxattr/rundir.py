"""The run folder (workdir): the name of every file in it, and its readers and writers.

Training writes through this module and every tool (`evaluate`, `predict`,
`export`, the experiment scripts) reads through it, so the layout lives here only:

  config.json                  the resolved config (`record_config` / `load_config`)
  attributes.json              attribute names and train positive ratios, written when
                               training starts, so a run restores without its dataset
                               (`write_attributes` / `load_attributes`)
  checkpoints/<step>           the latest k train states (`checkpoint_dir('latest')`)
  best/<step>                  the state with the best validation metric (one kept)
  metrics.jsonl                one JSON object per logged step (`metrics_path`)
  log.txt                      the full log of the run, libraries' INFO lines included
                               (the console shows the run's own lines; `log_path`)
  results.json, results.md     the final validation and test metrics (`write_results`)
  attention.png                the end-of-run attention grid (`attention_path`)
  thresholds.json              per-attribute thresholds tuned by `jaxattr.evaluate
                               --tune_thresholds` for one checkpoint (`write_thresholds`
                               / `load_thresholds`)
  eval_<split>_<which>.json    a `jaxattr.evaluate` report (`eval_report_path`)
  config_history.jsonl         append-only: the original config, then each change a
                               resumed run was allowed, with its step (`record_config`)
  run.lock                     the lock of the run writing the folder, and who holds
                               it (`WorkdirLock`)
  damaged/                     checkpoints set aside because they cannot be read
                               (`checkpoints.Checkpointer.restore_latest`)

Only `params` and `batch_stats` are read from a checkpoint by the tools (Orbax
partial restore, `restore_variables`), so the optimizer state and the prediction
history never reach memory.
"""

import contextlib
import dataclasses
import fcntl
import json
import logging as std_logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jaxattr import checkpoints, metrics

CONFIG = 'config.json'
ATTRIBUTES = 'attributes.json'
CHECKPOINT_DIRS = {'latest': 'checkpoints', 'best': 'best'}
CHECKPOINT_CHOICES = ('best', 'latest', 'auto')
METRICS = 'metrics.jsonl'
RESULTS = 'results.json'
RESULTS_MARKDOWN = 'results.md'
ATTENTION = 'attention.png'
THRESHOLDS = 'thresholds.json'
CONFIG_HISTORY = 'config_history.jsonl'
LOCK = 'run.lock'
LOG = 'log.txt'


class RunError(Exception):
  """A workdir that cannot be used (missing, no checkpoint, no attribute names)."""


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
  """Which checkpoint of a run: 'best' or 'latest', and its step."""

  which: str
  step: int


def _require_dir(workdir: Path) -> None:
  if not workdir.is_dir():
    raise RunError(f'{workdir}: no such workdir.')


# --- config.json --------------------------------------------------------------------


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples of configs/default.py; dicts recursively."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The resolved config a run saved in `workdir/config.json`.

  Args:
    workdir: the run's workdir.

  Returns:
    The config, with JSON lists turned back into tuples (e.g. `attention.levels`).

  Raises:
    RunError: if the workdir or its config.json is missing.
  """
  workdir = Path(workdir)
  _require_dir(workdir)
  path = workdir / CONFIG
  if not path.is_file():
    raise RunError(f'{path}: missing; is {workdir} the workdir of a jaxattr run?')
  return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))


# --- attributes.json ----------------------------------------------------------------


def write_attributes(workdir: str | Path, names: Sequence[str], positive_ratio: np.ndarray) -> Path:
  """Writes the attribute names and train positive ratios; returns the path."""
  path = Path(workdir) / ATTRIBUTES
  data = {'names': list(names), 'positive_ratio': np.asarray(positive_ratio).tolist()}
  path.write_text(json.dumps(data) + '\n')
  return path


def load_attributes(workdir: str | Path) -> tuple[list[str], np.ndarray | None]:
  """Attribute names (and train positive ratios if known) of a run.

  Read from `attributes.json` (written when training starts); runs that predate it
  fall back to the per-attribute keys of `results.json` (written at the end).

  Args:
    workdir: the run's workdir.

  Returns:
    (names, positive ratios float32 [C] or None).

  Raises:
    RunError: if neither file is there.
  """
  workdir = Path(workdir)
  path = workdir / ATTRIBUTES
  if path.is_file():
    data = json.loads(path.read_text())
    ratio = data.get('positive_ratio')
    return list(data['names']), None if ratio is None else np.asarray(ratio, np.float32)
  results = workdir / RESULTS
  if results.is_file():
    return list(json.loads(results.read_text())['test']['per_attribute']), None
  raise RunError(f'{workdir}: neither {ATTRIBUTES} nor {RESULTS}; attribute names unknown.')


# --- checkpoints/ and best/ ---------------------------------------------------------


def checkpoint_dir(workdir: str | Path, which: str) -> Path:
  """`workdir/checkpoints` ('latest') or `workdir/best` ('best')."""
  return Path(workdir) / CHECKPOINT_DIRS[which]


def _manager(workdir: Path, which: str) -> ocp.CheckpointManager | None:
  directory = checkpoint_dir(workdir, which)
  if not directory.is_dir():
    return None
  return ocp.CheckpointManager(
    directory.absolute(),
    item_handlers=ocp.PyTreeCheckpointHandler(),
    # No root metadata: writing it ends in a barrier of all processes, and process 0 calls
    # this alone (main's workdir check) while the others wait: a multi-process resume hung.
    options=ocp.CheckpointManagerOptions(create=False, save_root_metadata=False),
  )


def checkpoint_step(workdir: str | Path, which: str) -> int | None:
  """The step of the run's 'best' or 'latest' checkpoint, None if there is none."""
  manager = _manager(Path(workdir), which)
  if manager is None:
    return None
  try:
    # The best directory keeps exactly one checkpoint: its newest is the best.
    return manager.latest_step()
  finally:
    manager.close()


def resolve_checkpoint(workdir: str | Path, which: str = 'auto') -> CheckpointRef:
  """The checkpoint to load: 'best', 'latest', or 'auto' (best, else latest).

  Args:
    workdir: the run's workdir.
    which: 'best', 'latest' or 'auto'.

  Returns:
    The `CheckpointRef`.

  Raises:
    RunError: if the workdir has no such checkpoint.
  """
  if which not in CHECKPOINT_CHOICES:
    raise ValueError(f'checkpoint must be one of {CHECKPOINT_CHOICES}, not {which!r}.')
  workdir = Path(workdir)
  _require_dir(workdir)
  for candidate in ('best', 'latest') if which == 'auto' else (which,):
    step = checkpoint_step(workdir, candidate)
    if step is not None:
      return CheckpointRef(candidate, step)
  if which == 'auto':
    where = ' or '.join(str(checkpoint_dir(workdir, w)) for w in ('best', 'latest'))
    raise RunError(f'{workdir}: no checkpoint in {where}.')
  raise RunError(f'{workdir}: no {which} checkpoint in {checkpoint_dir(workdir, which)}.')


def restore_variables(
  workdir: str | Path, ref: CheckpointRef, sharding: jax.sharding.Sharding | None = None
) -> dict[str, Any]:
  """`params` and `batch_stats` of a checkpoint, nothing else (partial restore).

  Args:
    workdir: the run's workdir.
    ref: which checkpoint (`resolve_checkpoint`).
    sharding: where the arrays go; default the first device.

  Returns:
    `{'params': ..., 'batch_stats': ...}`, the variables of `model.apply`.

  Raises:
    RunError: no such checkpoint, or it is damaged or incomplete (one line naming it:
      its checksums, `checkpoints.verify_checksums`, or the first line of Orbax's error).
  """
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  manager = _manager(Path(workdir), ref.which)
  if manager is None:
    raise RunError(f'{workdir}: no {ref.which} checkpoint.')
  step_dir = checkpoint_dir(workdir, ref.which) / str(ref.step)
  try:
    checkpoints.verify_checksums(step_dir)
    return _restore_params(manager, ref, sharding)
  except checkpoints.CheckpointError as e:
    raise RunError(str(e)) from e
  except Exception as e:  # noqa: BLE001  (TensorStore's errors run to a hundred lines)
    raise RunError(f'{step_dir}: cannot be read ({checkpoints.one_line(e)}).') from e
  finally:
    manager.close()


def _restore_params(manager: ocp.CheckpointManager, ref: CheckpointRef, sharding) -> dict:
  """Orbax's partial restore of `params` and `batch_stats` (errors pass through)."""
  saved = manager.item_metadata(ref.step).tree
  target = {
    key: jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), saved[key]
    )
    for key in ('params', 'batch_stats')
  }
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), target)
  return manager.restore(
    ref.step,
    args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
  )


# --- thresholds.json ----------------------------------------------------------------


def write_thresholds(
  workdir: str | Path, ref: CheckpointRef, thresholds: dict[str, float], tuned_on: str
) -> Path:
  """Writes per-attribute thresholds tuned (max F1) for the checkpoint `ref`.

  Args:
    workdir: the run's workdir.
    ref: the checkpoint they were tuned for.
    thresholds: {attribute name: threshold}, in model order.
    tuned_on: the split they were tuned on.

  Returns:
    The path.
  """
  path = Path(workdir) / THRESHOLDS
  data = {
    'checkpoint': ref.which,
    'step': ref.step,
    'tuned_on': tuned_on,
    'criterion': 'per-attribute F1',
    'thresholds': thresholds,
  }
  path.write_text(metrics.to_json(data, indent=2) + '\n')
  return path


def load_thresholds(
  workdir: str | Path, names: Sequence[str], ref: CheckpointRef
) -> np.ndarray | None:
  """Tuned per-attribute thresholds of `ref`'s checkpoint, if `evaluate` wrote them.

  Thresholds tuned for another checkpoint are not used (they belong to other weights).

  Args:
    workdir: the run's workdir.
    names: the attribute names, in model order.
    ref: the checkpoint the thresholds must have been tuned for.

  Returns:
    float64 [C], or None.
  """
  path = Path(workdir) / THRESHOLDS
  if not path.is_file():
    return None
  data = json.loads(path.read_text())
  if data.get('step') != ref.step or list(data['thresholds']) != list(names):
    return None
  return np.asarray([data['thresholds'][n] for n in names], np.float64)


# --- Results and logs ---------------------------------------------------------------


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


def write_results(workdir: str | Path, results: dict[str, Any], markdown: str) -> Path:
  """Writes the final results as `results.json` and `results.md`; returns the json path.

  A run whose config changed while it trained (`config_history.jsonl`) says so in
  both: `results['config_changes']`, and a paragraph under the markdown's title.
  """
  workdir = Path(workdir)
  changes = config_changes(workdir)
  if changes:
    results = {**results, 'config_changes': changes}
    title, _, rest = markdown.partition('\n')
    markdown = f'{title}\n\n{_changes_markdown(changes)}{rest}'
  (workdir / RESULTS_MARKDOWN).write_text(markdown)
  path = workdir / RESULTS
  path.write_text(metrics.to_json(results, indent=2) + '\n')
  return path


# Libraries whose INFO lines go to the log file only (TFDS writes four per evaluation).
QUIET_LIBRARIES = ('tensorflow_datasets', 'tensorflow', 'jax', 'orbax')


@contextlib.contextmanager
def logging_to(workdir: str | Path):
  """While active: every log line also goes to `log_path`; the console shows the run.

  The console (absl's handler) drops the INFO lines of `QUIET_LIBRARIES`, so it
  shows progress, metrics and checkpoints; their warnings and errors still show.

  Args:
    workdir: the run's workdir.

  Yields:
    Nothing; the handlers are removed on exit.
  """
  console = logging.get_absl_handler()
  to_file = std_logging.FileHandler(log_path(workdir, jax.process_index()))
  to_file.setFormatter(logging.PythonFormatter())
  quiet = checkpoints.DropLibraryInfo(QUIET_LIBRARIES)
  std_logging.getLogger().addHandler(to_file)
  console.addFilter(quiet)
  try:
    yield
  finally:
    console.removeFilter(quiet)
    std_logging.getLogger().removeHandler(to_file)
    to_file.close()


class MetricsWriter:
  """The training loop's scalars: clu's writer (TensorBoard + log) and `metrics.jsonl`.

  Process 0 writes both; the others only log.
  """

  def __init__(self, workdir: str | Path):
    from clu import metric_writers  # Imports TensorFlow: only the loop writes.

    self.is_main = jax.process_index() == 0
    self.clu = metric_writers.create_default_writer(str(workdir), just_logging=not self.is_main)
    self.jsonl = open(metrics_path(workdir), 'a') if self.is_main else None  # noqa: SIM115

  def scalars(self, step: int, scalars: dict[str, float]) -> None:
    """Writes `scalars` of `step` to both."""
    scalars = {k: float(v) for k, v in scalars.items()}
    self.clu.write_scalars(step, scalars)
    if self.jsonl:
      self.jsonl.write(metrics.to_json({'step': step, **scalars}) + '\n')
      self.jsonl.flush()

  def close(self) -> None:
    """Flushes and closes both."""
    self.clu.close()
    if self.jsonl:
      self.jsonl.close()


def eval_report_path(workdir: str | Path, split: str, which: str) -> Path:
  """Where `jaxattr.evaluate` writes its report of `split` and checkpoint `which`."""
  return Path(workdir) / f'eval_{split}_{which}.json'


# --- Creating the workdir ------------------------------------------------------------


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


# --- run.lock: one writer per folder --------------------------------------------------


class RunLocked(RunError):
  """Another live run holds the workdir's lock."""


def _holder_text(holder: dict[str, Any]) -> str:
  return (
    f'pid {holder.get("pid", "?")} on host {holder.get("host", "?")} since '
    f'{holder.get("since", "?")}'
  )


class WorkdirLock:
  """The lock that makes a run the only writer of its workdir.

  `workdir/run.lock` is locked with `fcntl.flock` and holds a JSON record of the
  holder (host, pid, start time, command). The kernel releases a flock when its
  process dies, however it dies, so the lock itself is never stale: a record left
  behind by a killed run (SIGKILL, power loss) sits in an unlocked file, and the
  next run takes it over with a log line naming the dead holder. A clean release
  empties the record. The file is never deleted: unlinking a locked file would let
  a later run lock a new file of the same name while another still holds the old.

  On a file system without flock (some Lustre mounts, old NFS), the record alone
  decides: a holder on this host whose pid is gone is stale; a holder elsewhere is
  trusted until its record is removed by hand (the error message says so).

  Only process 0 of a multi-process run takes the lock (see `jaxattr.main`); the
  tools that only read (`evaluate`, `predict`, `export`) never do.
  """

  def __init__(self, workdir: str | Path):
    self.path = Path(workdir) / LOCK
    self._fd: int | None = None

  def _record(self, fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 1 << 16)
    try:
      record = json.loads(data) if data.strip() else {}
    except ValueError:
      record = {'unreadable': data[:80].decode(errors='replace')}
    return record if isinstance(record, dict) else {}

  def acquire(self) -> dict[str, Any]:
    """Takes the lock.

    Returns:
      The record of a previous holder that died without releasing it ({} if none).

    Raises:
      RunLocked: another live run holds it (the message names it).
      RunError: the lock file cannot be written.
    """
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise RunError(f'{self.path}: cannot create the lock file: {e.strerror}.') from e
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        raise self._locked(self._record(fd)) from None
      except OSError as e:  # No flock on this file system: the record decides.
        logging.warning('%s: no file locks here (%s); relying on the holder record.', self.path, e)
        previous = self._record(fd)
        if previous.get('pid') and _alive(previous):
          raise self._locked(previous) from None
      else:
        previous = self._record(fd)
      record = {
        'host': socket.gethostname(),
        'pid': os.getpid(),
        'since': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
        'command': ' '.join(sys.argv),
      }
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(record) + '\n').encode(), 0)
      os.fsync(fd)
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd
    if previous.get('pid'):
      logging.warning(
        'Took over the lock of %s left by a run that ended without releasing it (%s); '
        'its process is gone.',
        self.path.parent,
        _holder_text(previous),
      )
    return previous

  def _locked(self, holder: dict[str, Any]) -> RunLocked:
    return RunLocked(
      f'{self.path.parent}: in use by another run ({_holder_text(holder)}); wait for it to '
      f'end or use another --workdir. If that run is certainly gone, delete {self.path}.'
    )

  def release(self) -> None:
    """Empties the record and releases the lock (idempotent)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
      pass  # Closing releases the lock anyway.
    finally:
      os.close(fd)

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _alive(holder: dict[str, Any]) -> bool:
  """Whether a lock holder may still run (unknowable for another host: assumed yes)."""
  if holder.get('host') != socket.gethostname():
    return True
  try:
    os.kill(int(holder['pid']), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError, TypeError):
    return True
  return True


# --- Resuming: config.json against the new config, config_history.jsonl --------------

# Fields a resumed run cannot change, with the reason. A prefix covers its subfields.
FIXED_FIELDS = {
  'seed': 'the data order of the steps still to come follows from it (a new seed would '
  'repeat or skip examples)',
  'data.name': "the model's classes, the class weights and the prediction history belong "
  'to this dataset',
  'data.builder_config': "the model's classes, the class weights and the prediction "
  'history belong to this dataset',
  'data.train_split': "the prediction history is indexed by this split's examples",
  'data.eval_split': 'the best checkpoint and the plateau schedule compared validation '
  'metrics of this split',
  'data.image_size': "the attention classifiers' full-spatial convolutions are sized for "
  'this input',
  'model.backbone': "the checkpoint holds this architecture's parameters",
  'model.width': "the checkpoint holds this architecture's parameters",
  'model.depth': "the checkpoint holds this architecture's parameters",
  'model.param_dtype': 'the checkpoint holds parameters of this dtype',
  'model.attention': "the checkpoint holds this architecture's parameters",
  'model.pretrained': 'pretrained weights are loaded only when a run starts',
  'history.length': "the checkpoint's prediction history has this shape",
  'history.source': "the checkpoint's prediction history has this shape",
  'train.batch_size': 'the data order and the epoch boundaries are counted in steps of this batch',
  'optimizer.name': "the checkpoint holds this optimizer's state",
  'eval.metric': 'the best checkpoint so far was chosen by this metric',
  'eval.ap': 'the best checkpoint so far was chosen by this metric',
}


MISSING = '(absent)'  # The value of a field one config lacks.


class ConfigChanged(RunError):
  """The config differs from the workdir's config.json in a way this run may not resume."""


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f'{prefix}{key}.'))
    return out
  return {prefix[:-1]: tree}


def _as_json(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  """A config as the plain JSON data config.json holds (tuples become lists)."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config))


def config_differences(old: Any, new: Any) -> dict[str, tuple[Any, Any]]:
  """The fields whose values differ, `{'a.b': (old, new)}`; absent fields are `MISSING`.

  Args:
    old: a config (ConfigDict or its JSON data), e.g. the workdir's config.json.
    new: another.

  Returns:
    The differences, in sorted field order.
  """
  a, b = _flatten(_as_json(old)), _flatten(_as_json(new))
  return {
    key: (a.get(key, MISSING), b.get(key, MISSING))
    for key in sorted(a.keys() | b.keys())
    if a.get(key, MISSING) != b.get(key, MISSING)
  }


def fixed_reason(field: str, old: Any, new: Any) -> str | None:
  """Why `field` cannot change from `old` to `new` in a resumed run (None: it can)."""
  if field == 'model.depth' and old is MISSING and new == 1.0:
    return None  # A run from before `model.depth` existed: the full depth.
  for prefix, reason in FIXED_FIELDS.items():
    if field == prefix or field.startswith(prefix + '.'):
      return reason
  if field == 'optimizer.momentum' and MISSING not in (old, new) and bool(old) != bool(new):
    return "SGD keeps a momentum state only when momentum > 0; the checkpoint's state has " + (
      'one' if old else 'none'
    )
  return None


def _value(value: Any) -> str:
  return value if value is MISSING else json.dumps(value)


def _has_checkpoint(workdir: Path) -> bool:
  """Whether `checkpoints/` holds a committed step (Orbax names it by the bare number).

  A directory listing, not an Orbax manager: process 0 calls this alone, while the
  other processes wait for its verdict, and a manager may synchronise processes.
  """
  directory = checkpoint_dir(workdir, 'latest')
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def check_resume(
  workdir: str | Path, config: ml_collections.ConfigDict, allow_change: bool = False
) -> dict[str, tuple[Any, Any]]:
  """Whether `config` may run in `workdir`, by the config the folder records.

  A folder without config.json, or without a checkpoint (nothing was trained), takes
  any config. Otherwise an identical config resumes; a different one is refused with
  its differing fields unless `allow_change`, and even then when a field of
  `FIXED_FIELDS` (architecture, dataset, split, image size, history length, ...)
  differs. Reads only.

  Args:
    workdir: the run's workdir.
    config: the resolved config of this run.
    allow_change: `--allow_config_change`.

  Returns:
    The differences that will be recorded when training starts ({} if none).

  Raises:
    ConfigChanged: the message lists the fields (old -> new) and what to do.
  """
  workdir = Path(workdir)
  path = workdir / CONFIG
  if not path.is_file():
    return {}
  try:
    old = json.loads(path.read_text())
  except ValueError as e:
    raise RunError(f'{path}: not valid JSON ({e}); the folder no longer says what ran.') from e
  diffs = config_differences(old, config)
  if not diffs or not _has_checkpoint(workdir):
    return diffs  # Identical, or nothing trained yet: nothing to protect.
  lines, fixed = [], 0
  for field, (a, b) in diffs.items():
    reason = fixed_reason(field, a, b)
    fixed += reason is not None
    note = f'  (cannot change in a resumed run: {reason})' if reason else ''
    lines.append(f'  {field}: {_value(a)} -> {_value(b)}{note}')
  head = f'{workdir}: the config differs from the one this run was trained with ({path}):'
  if fixed:
    tail = (
      'A resumed run cannot change the fields marked, even with --allow_config_change; '
      'start a new run in another --workdir.'
    )
  elif not allow_change:
    tail = (
      'Rerun with --allow_config_change to resume with the new values (the change and its '
      f'step go to {CONFIG_HISTORY}), or use another --workdir.'
    )
  else:
    return diffs
  raise ConfigChanged('\n'.join([head, *lines, tail]))


def _now() -> str:
  return time.strftime('%Y-%m-%d %H:%M:%S %Z')


def load_config_history(workdir: str | Path) -> list[dict[str, Any]]:
  """The entries of `workdir/config_history.jsonl`, oldest first ([] if none)."""
  path = Path(workdir) / CONFIG_HISTORY
  if not path.is_file():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append_history(workdir: Path, entry: dict[str, Any]) -> None:
  with open(workdir / CONFIG_HISTORY, 'a') as f:
    f.write(json.dumps(entry) + '\n')
    f.flush()
    os.fsync(f.fileno())


def record_config(workdir: str | Path, config: ml_collections.ConfigDict, step: int) -> Path:
  """Records the config a run trains with from `step` on (process 0, when training starts).

  The first start writes config.json and the first entry of config_history.jsonl. A
  start with another config (allowed by `check_resume`) appends an entry with the
  step at which it takes effect and the changed fields, then replaces config.json,
  which always holds the config in use (the tools read it); the original config
  stays the first history entry. Runs that predate the history get the old
  config.json as that first entry before the change.

  Args:
    workdir: the run's workdir.
    config: the resolved config.
    step: the step training continues from (0 for a fresh run).

  Returns:
    The path of config.json.
  """
  workdir = Path(workdir)
  path = workdir / CONFIG
  new = _as_json(config)
  old = json.loads(path.read_text()) if path.is_file() else None
  history = load_config_history(workdir)
  if old is not None and not history:  # A run from before the history: its original first.
    _append_history(workdir, {'step': 0, 'time': None, 'config': old})
    history = [{'config': old}]
  if not history:
    _append_history(workdir, {'step': int(step), 'time': _now(), 'config': new})
  elif new != history[-1]['config']:
    changed = {k: [a, b] for k, (a, b) in config_differences(history[-1]['config'], new).items()}
    entry = {'step': int(step), 'time': _now(), 'changed': changed, 'config': new}
    _append_history(workdir, entry)
    logging.warning(
      'Config changed at step %d (recorded in %s): %s', step, CONFIG_HISTORY, ', '.join(changed)
    )
  if new != old:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(config.to_json_best_effort(indent=2) + '\n')
    tmp.replace(path)  # Atomic: a reader sees the old or the new file, never half of one.
  return path


def config_changes(workdir: str | Path) -> list[dict[str, Any]]:
  """The config changes of a run: `[{'step', 'time', 'changed': {field: [old, new]}}]`."""
  return [
    {k: e.get(k) for k in ('step', 'time', 'changed')} for e in load_config_history(workdir)[1:]
  ]


def _changes_markdown(changes: list[dict[str, Any]]) -> str:
  lines = [f'**This run changed its config while training** (all configs: {CONFIG_HISTORY}):', '']
  for change in changes:
    fields = ', '.join(
      f'{k} {_value(a)} -> {_value(b)}' for k, (a, b) in (change.get('changed') or {}).items()
    )
    lines.append(f'- from step {change["step"]}: {fields}')
  return '\n'.join(lines) + '\n'
