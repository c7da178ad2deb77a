"""Checkpoints of the whole train state with Orbax: the latest k, and the best.

Two `ocp.CheckpointManager`s under the workdir:
  checkpoints/<step>  the latest `keep` states (periodic, end of epoch, preemption);
  best/<step>         the state with the best validation metric so far (one kept).
Saves are asynchronous; Orbax writes each checkpoint to a temporary directory
(`<step>.orbax-checkpoint-tmp`) and renames it when complete, and the older ones
are deleted only after that, so a run killed during a save restarts from the
previous complete checkpoint and never lists a partial one. The training loop
also removes such leftovers at start (`cleanup_tmp`); tools that only restore
leave them alone, since a live run may be writing one.

Damage (bit rot, a partial copy): once a save is complete, process 0 writes the
sha256 of every file of the step into `<step>/jaxattr_checksums.json`, so a restore
finds a changed or missing file before reading it (TensorStore notices only some
corruption: most flipped bytes decompress, without an error, into wrong weights).
A step that fails its checksums or cannot be restored is damaged: `restore` raises
a one-line `CheckpointError` naming it (the tools print it), and a training restart
(`restore_latest`) falls back to the newest readable step, moves the damaged newer
ones out of Orbax's reach into `<workdir>/damaged/` (Orbax would otherwise
garbage-collect them as old steps) and never deletes them.

Several processes (multi-host): every process constructs the managers and calls
every save and restore (Orbax synchronises them); process 0, Orbax's primary
host, creates, renames and deletes the directories, writes the checksums, and each
process writes the array shards it owns. The workdir must be on a file system that
all hosts see.

Older runs: a state field that is empty in the target (`{}`, e.g. the EMA of a run
without one) and absent from the checkpoint, which was saved before the field
existed, restores as empty; any other difference of structure is an error.
"""

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jaxattr.run import layout


class CheckpointError(Exception):
  """A checkpoint that cannot be read (damaged, incomplete); the message is one line."""


def one_line(error: BaseException, limit: int = 300) -> str:
  """The first line of an error's message (TensorStore's run to dozens), shortened."""
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else type(error).__name__
  return text if len(text) <= limit else text[: limit - 3] + '...'


# --- Checksums ------------------------------------------------------------------------


def _files(step_dir: Path) -> list[Path]:
  return sorted(p for p in step_dir.rglob('*') if p.is_file() and p.name != layout.CHECKSUMS)


def _sha256(path: Path) -> str:
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def write_checksums(step_dir: str | Path) -> Path:
  """Writes the sha256 of every file of a complete step directory into it.

  Args:
    step_dir: e.g. `<workdir>/checkpoints/24`, after Orbax committed it.

  Returns:
    The path of the checksum file.
  """
  step_dir = Path(step_dir)
  sums = {str(p.relative_to(step_dir)): _sha256(p) for p in _files(step_dir)}
  path = step_dir / layout.CHECKSUMS
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps({'sha256': sums}, indent=0) + '\n')
  tmp.replace(path)  # Atomic: a reader never sees half a list.
  return path


def verify_checksums(step_dir: str | Path) -> bool:
  """Checks a step directory against its checksum file.

  Args:
    step_dir: a step directory.

  Returns:
    True if verified; False if it has no checksum file (older runs, or a run killed
    before writing it): only Orbax's own checks apply then.

  Raises:
    CheckpointError: a file is missing or its content changed.
  """
  step_dir = Path(step_dir)
  path = step_dir / layout.CHECKSUMS
  if not path.is_file():
    return False
  try:
    sums = json.loads(path.read_text())['sha256']
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f'{step_dir}: damaged: its {path.name} cannot be read ({e}).') from e
  for name, digest in sums.items():
    file = step_dir / name
    if not file.is_file():
      raise CheckpointError(f'{step_dir}: incomplete: {name} is missing.')
    if _sha256(file) != digest:
      raise CheckpointError(f'{step_dir}: damaged: {name} does not match its sha256.')
  return True


# --- The train state's checkpoints --------------------------------------------------------


def _empty_fields_not_saved(manager: ocp.CheckpointManager, step: int, target: Any) -> list[str]:
  """The fields of a dataclass `target` that are `{}` there and absent from the checkpoint."""
  if not dataclasses.is_dataclass(target):
    return []
  fields = [(f.name, getattr(target, f.name)) for f in dataclasses.fields(target)]
  empty = [name for name, value in fields if isinstance(value, dict) and not value]
  if not empty:
    return []
  saved = manager.item_metadata(step).tree
  return [name for name in empty if name not in saved]


class Checkpointer:
  """Saves and restores a train-state pytree (latest k + best)."""

  def __init__(self, workdir: str | Path, keep: int = 2, cleanup_tmp: bool = False):
    """Opens (creates) `workdir/checkpoints` and `workdir/best`.

    Args:
      workdir: the run's workdir.
      keep: how many of the latest checkpoints to keep.
      cleanup_tmp: delete unfinished saves left by a killed run (the training
        loop only: a reader must not delete a live run's save in progress).
    """
    workdir = Path(workdir).absolute()
    self.workdir = workdir
    self._unsealed: list[tuple[ocp.CheckpointManager, int]] = []  # Saves without checksums.
    # The handler named, so that a fresh manager reads a step's tree metadata (restore).
    handler = dict(item_handlers=ocp.StandardCheckpointHandler())
    common = dict(
      create=True,
      cleanup_tmp_directories=cleanup_tmp,
      multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=0),
    )
    self.latest = ocp.CheckpointManager(
      layout.checkpoint_dir(workdir, 'latest'),
      **handler,
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, **common),
    )
    self.best = ocp.CheckpointManager(
      layout.checkpoint_dir(workdir, 'best'),
      **handler,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda metrics: metrics['value'], best_mode='max', **common
      ),
    )

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def best_step(self) -> int | None:
    return self.best.best_step()

  def restore(self, target: Any, which: str = 'latest', step: int | None = None) -> Any:
    """Restores a checkpoint into the structure, shapes and shardings of `target`.

    Args:
      target: a pytree like the saved state (concrete or `jax.ShapeDtypeStruct`s).
      which: 'latest' or 'best'.
      step: a specific step; default the newest (latest) or the best.

    Returns:
      The restored pytree.

    Raises:
      CheckpointError: it is damaged or incomplete (one line naming it).
    """
    manager = self.latest if which == 'latest' else self.best
    if step is None:
      step = manager.latest_step() if which == 'latest' else manager.best_step()
    if step is None:
      raise FileNotFoundError(f'No {which} checkpoint in {manager.directory}.')
    logging.info('Restoring %s checkpoint of step %d from %s', which, step, manager.directory)
    step_dir = Path(manager.directory) / str(step)
    verify_checksums(step_dir)
    try:
      absent = _empty_fields_not_saved(manager, step, target)
      if not absent:
        return manager.restore(step, args=ocp.args.StandardRestore(target))
      saved = {
        f.name: getattr(target, f.name) for f in dataclasses.fields(target) if f.name not in absent
      }
      restored = manager.restore(step, args=ocp.args.StandardRestore(saved))
      return target.replace(**restored, **{name: {} for name in absent})
    except Exception as e:  # noqa: BLE001  (TensorStore, Orbax and OS errors alike)
      raise CheckpointError(f'{step_dir}: cannot be read ({one_line(e)}).') from e

  def restore_latest(self, target: Any) -> Any | None:
    """Restores the newest readable latest-k checkpoint (a training restart).

    A newer checkpoint that cannot be read is skipped with a warning saying why; once
    an older one restores, the skipped ones are moved to `<workdir>/damaged/`, so that
    Orbax neither lists nor garbage-collects them (nothing is deleted). When none can
    be read nothing is moved, and the error names them all.

    Args:
      target: a pytree like the saved state.

    Returns:
      The restored pytree, or None when there is no checkpoint.

    Raises:
      CheckpointError: there are checkpoints but none can be read.
    """
    skipped: list[tuple[int, CheckpointError]] = []
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        state, error = self.restore(target, 'latest', step), None
      except CheckpointError as e:
        state, error = None, e
      if jax.process_count() > 1:  # Every process must resume from the same step.
        from jax.experimental import multihost_utils

        failed = multihost_utils.process_allgather(np.int32(error is not None))
        if error is None and np.any(failed):
          error = CheckpointError(f'step {step}: another process could not read it.')
      if error is None:
        for skipped_step, _ in skipped:
          self._set_aside(skipped_step)
        if skipped:
          logging.warning(
            'Resuming from step %d, the newest readable checkpoint (skipped: %s).',
            step,
            ', '.join(str(s) for s, _ in skipped),
          )
        return state
      logging.warning('Skipping the checkpoint of step %d: %s', step, error)
      skipped.append((step, error))
    if skipped:
      reasons = ' '.join(str(e) for _, e in skipped)
      raise CheckpointError(
        f'No checkpoint in {self.latest.directory} can be read: {reasons} Nothing was moved '
        'or deleted; restore the files, or train in another --workdir.'
      )
    return None

  def _set_aside(self, step: int) -> None:
    """Moves a damaged latest-k step to `<workdir>/damaged/checkpoints-<step>` (process 0)."""
    source = Path(self.latest.directory) / str(step)
    if jax.process_index() == 0:
      target = self.workdir / layout.DAMAGED / f'{source.parent.name}-{step}'
      target.parent.mkdir(exist_ok=True)
      n = 1
      while target.exists():  # Damaged twice at the same step: keep both.
        n += 1
        target = target.with_name(f'{source.parent.name}-{step}.{n}')
      source.rename(target)
      logging.warning(
        'Moved the damaged checkpoint of step %d to %s (kept, not deleted).', step, target
      )
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
    self.latest.reload()

  def save(self, step: int, state: Any, force: bool = True) -> None:
    """Saves `state` as the latest checkpoint of `step` (asynchronously)."""
    if step in self.latest.all_steps():
      return
    self._seal()
    self.latest.save(step, args=ocp.args.StandardSave(state), force=force)
    self._unsealed.append((self.latest, step))

  def save_best(self, step: int, state: Any, value: float) -> None:
    """Saves `state` as the best so far, with its validation metric `value`."""
    if step in self.best.all_steps():
      return
    self._seal()
    self.best.save(
      step, args=ocp.args.StandardSave(state), metrics={'value': float(value)}, force=True
    )
    self._unsealed.append((self.best, step))

  def _seal(self) -> None:
    """Writes the checksums of the saves issued so far, once they are complete.

    Orbax's next save waits for the previous one anyway, so waiting here costs
    nothing more; hashing costs process 0 about a second per GB.
    """
    if not self._unsealed:
      return
    self.latest.wait_until_finished()
    self.best.wait_until_finished()
    if jax.process_index() == 0:
      for manager, step in self._unsealed:
        step_dir = Path(manager.directory) / str(step)
        if step_dir.is_dir():  # Not garbage-collected meanwhile.
          write_checksums(step_dir)
    self._unsealed = []

  def reached_preemption(self, step: int) -> bool:
    """True when the cluster (via JAX's distributed runtime) announced preemption."""
    return self.latest.reached_preemption(step)

  def wait(self) -> None:
    """Waits for the saves in flight and writes their checksums."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()
    self._seal()

  def close(self) -> None:
    self._seal()
    self.latest.close()
    self.best.close()
