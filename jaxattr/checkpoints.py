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

Several processes (multi-host): every process constructs the managers and calls
every save and restore (Orbax synchronises them); process 0, Orbax's primary
host, creates, renames and deletes the directories, and each process writes the
array shards it owns. The workdir must be on a file system that all hosts see.
"""

import logging as std_logging
import os
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from absl import logging


class DropLibraryInfo(std_logging.Filter):
  """Drops log records below WARNING that come from inside the given packages."""

  def __init__(self, packages: tuple[str, ...]):
    super().__init__()
    self._parts = tuple(f'{os.sep}{p}{os.sep}' for p in packages)

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
      p in record.pathname for p in self._parts
    )


def quiet_orbax_logs() -> None:
  """Hides Orbax's INFO lines (about 20 per save) from absl's log; keeps its warnings."""
  logging.get_absl_handler().addFilter(DropLibraryInfo(('orbax',)))


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
    common = dict(
      create=True,
      cleanup_tmp_directories=cleanup_tmp,
      multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=0),
    )
    self.latest = ocp.CheckpointManager(
      workdir / 'checkpoints',
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, **common),
    )
    self.best = ocp.CheckpointManager(
      workdir / 'best',
      options=ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda metrics: metrics['value'], best_mode='max', **common
      ),
    )

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of the complete latest-k checkpoints, oldest first."""
    return sorted(self.latest.all_steps())

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
    """
    manager = self.latest if which == 'latest' else self.best
    if step is None:
      step = manager.latest_step() if which == 'latest' else manager.best_step()
    if step is None:
      raise FileNotFoundError(f'No {which} checkpoint in {manager.directory}.')
    logging.info('Restoring %s checkpoint of step %d from %s', which, step, manager.directory)
    return manager.restore(step, args=ocp.args.StandardRestore(target))

  def save(self, step: int, state: Any, force: bool = True) -> None:
    """Saves `state` as the latest checkpoint of `step` (asynchronously)."""
    if step in self.latest.all_steps():
      return
    self.latest.save(step, args=ocp.args.StandardSave(state), force=force)

  def save_best(self, step: int, state: Any, value: float) -> None:
    """Saves `state` as the best so far, with its validation metric `value`."""
    if step in self.best.all_steps():
      return
    self.best.save(
      step, args=ocp.args.StandardSave(state), metrics={'value': float(value)}, force=True
    )

  def reached_preemption(self, step: int) -> bool:
    """True when the cluster (via JAX's distributed runtime) announced preemption."""
    return self.latest.reached_preemption(step)

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()
