"""A run's checkpoints as the tools read them: which one, and its variables only.

Only the model's variables are read from a checkpoint (Orbax partial restore,
`restore_variables`), so the optimizer state and the prediction history never reach
memory: the EMA of the weights when the run kept one (`train.ema_decay`, the weights
it evaluated and selected with), else `params` and `batch_stats`. The training loop
restores whole train states through `jaxattr.checkpoints`.
"""

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxattr import checkpoints
from jaxattr.run import layout


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
  """Which checkpoint of a run: 'best' or 'latest', and its step."""

  which: str
  step: int


def _manager(workdir: Path, which: str) -> ocp.CheckpointManager | None:
  directory = layout.checkpoint_dir(workdir, which)
  if not directory.is_dir():
    return None
  return ocp.CheckpointManager(
    directory.absolute(),
    item_handlers=ocp.PyTreeCheckpointHandler(),
    # No root metadata: writing it ends in a barrier of all processes, and process 0 calls
    # this alone (main's workdir check) while the others wait, so the barrier would hang.
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
    layout.RunError: if the workdir has no such checkpoint.
  """
  if which not in layout.CHECKPOINT_CHOICES:
    raise ValueError(f'checkpoint must be one of {layout.CHECKPOINT_CHOICES}, not {which!r}.')
  workdir = Path(workdir)
  layout.require_dir(workdir)
  for candidate in ('best', 'latest') if which == 'auto' else (which,):
    step = checkpoint_step(workdir, candidate)
    if step is not None:
      return CheckpointRef(candidate, step)
  if which == 'auto':
    where = ' or '.join(str(layout.checkpoint_dir(workdir, w)) for w in ('best', 'latest'))
    raise layout.RunError(f'{workdir}: no checkpoint in {where}.')
  directory = layout.checkpoint_dir(workdir, which)
  raise layout.RunError(f'{workdir}: no {which} checkpoint in {directory}.')


def restore_variables(
  workdir: str | Path, ref: CheckpointRef, sharding: jax.sharding.Sharding | None = None
) -> dict[str, Any]:
  """The variables of a checkpoint that the run evaluated, nothing else (partial restore).

  Those are the EMA's `params` and `batch_stats` when the run kept an EMA of the
  weights, else the trained ones (runs saved before the EMA existed have none).

  Args:
    workdir: the run's workdir.
    ref: which checkpoint (`resolve_checkpoint`).
    sharding: where the arrays go; default the first device.

  Returns:
    `{'params': ..., 'batch_stats': ...}`, the variables of `model.apply`.

  Raises:
    layout.RunError: no such checkpoint, or it is damaged or incomplete (one line naming it:
      its checksums, `checkpoints.verify_checksums`, or the first line of Orbax's error).
  """
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  manager = _manager(Path(workdir), ref.which)
  if manager is None:
    raise layout.RunError(f'{workdir}: no {ref.which} checkpoint.')
  step_dir = layout.checkpoint_dir(workdir, ref.which) / str(ref.step)
  try:
    checkpoints.verify_checksums(step_dir)
    return _restore_params(manager, ref, sharding)
  except checkpoints.CheckpointError as e:
    raise layout.RunError(str(e)) from e
  except Exception as e:  # noqa: BLE001  (TensorStore's errors run to a hundred lines)
    raise layout.RunError(f'{step_dir}: cannot be read ({checkpoints.one_line(e)}).') from e
  finally:
    manager.close()


def _restore_params(manager: ocp.CheckpointManager, ref: CheckpointRef, sharding) -> dict:
  """Orbax's partial restore of the EMA's or the trained variables (errors pass through)."""
  saved = manager.item_metadata(ref.step).tree
  ema = isinstance(saved.get('ema'), Mapping) and bool(saved['ema'])
  variables = saved['ema'] if ema else saved
  target = {
    key: jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), variables[key]
    )
    for key in ('params', 'batch_stats')
  }
  if ema:
    target = {'ema': target}
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), target)
  restored = manager.restore(
    ref.step,
    args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
  )
  return restored['ema'] if ema else restored
