"""Checkpoints of the whole train state with Orbax: the latest k, and the best.

Two `ocp.CheckpointManager`s under the workdir:
  checkpoints/<step>  the latest `keep` states (periodic, end of epoch, preemption);
  best/<step>         the state with the best validation metric so far (one kept).
Saves are asynchronous; Orbax writes each checkpoint to a temporary directory and
renames it when complete, so a run killed during a save restarts from the
previous complete checkpoint.
"""

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Saves and restores a train-state pytree (latest k + best)."""

  def __init__(self, workdir: str | Path, keep: int = 2):
    workdir = Path(workdir).absolute()
    self.latest = ocp.CheckpointManager(
      workdir / 'checkpoints',
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )
    self.best = ocp.CheckpointManager(
      workdir / 'best',
      options=ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda metrics: metrics['value'], best_mode='max', create=True
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
