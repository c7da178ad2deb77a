"""The run folder (workdir): the name of every file in it, and its readers and writers.

Training writes through this module and every tool (`evaluate`, `predict`,
`export`, the experiment scripts) reads through it, so the layout lives here only:

  config.json                  the resolved config (`write_config` / `load_config`)
  attributes.json              attribute names and train positive ratios, written when
                               training starts, so a run restores without its dataset
                               (`write_attributes` / `load_attributes`)
  checkpoints/<step>           the latest k train states (`checkpoint_dir('latest')`)
  best/<step>                  the state with the best validation metric (one kept)
  metrics.jsonl                one JSON object per logged step (`metrics_path`)
  results.json, results.md     the final validation and test metrics (`write_results`)
  attention.png                the end-of-run attention grid (`attention_path`)
  thresholds.json              per-attribute thresholds tuned by `jaxattr.evaluate
                               --tune_thresholds` for one checkpoint (`write_thresholds`
                               / `load_thresholds`)
  eval_<split>_<which>.json    a `jaxattr.evaluate` report (`eval_report_path`)

Only `params` and `batch_stats` are read from a checkpoint by the tools (Orbax
partial restore, `restore_variables`), so the optimizer state and the prediction
history never reach memory.
"""

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxattr import metrics

CONFIG = 'config.json'
ATTRIBUTES = 'attributes.json'
CHECKPOINT_DIRS = {'latest': 'checkpoints', 'best': 'best'}
CHECKPOINT_CHOICES = ('best', 'latest', 'auto')
METRICS = 'metrics.jsonl'
RESULTS = 'results.json'
RESULTS_MARKDOWN = 'results.md'
ATTENTION = 'attention.png'
THRESHOLDS = 'thresholds.json'


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


def write_config(workdir: str | Path, config: ml_collections.ConfigDict) -> Path:
  """Writes the resolved config to `workdir/config.json`; returns the path."""
  path = Path(workdir) / CONFIG
  path.write_text(config.to_json_best_effort(indent=2) + '\n')
  return path


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
    options=ocp.CheckpointManagerOptions(create=False),
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
  """
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  manager = _manager(Path(workdir), ref.which)
  if manager is None:
    raise RunError(f'{workdir}: no {ref.which} checkpoint.')
  try:
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
  finally:
    manager.close()


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


def attention_path(workdir: str | Path) -> Path:
  """`workdir/attention.png`: the end-of-run attention grid."""
  return Path(workdir) / ATTENTION


def write_results(workdir: str | Path, results: dict[str, Any], markdown: str) -> Path:
  """Writes the final results as `results.json` and `results.md`; returns the json path."""
  workdir = Path(workdir)
  (workdir / RESULTS_MARKDOWN).write_text(markdown)
  path = workdir / RESULTS
  path.write_text(metrics.to_json(results, indent=2) + '\n')
  return path


def load_results(workdir: str | Path) -> dict[str, Any] | None:
  """The final results of a run, None if it has not finished (no results.json)."""
  path = Path(workdir) / RESULTS
  return json.loads(path.read_text()) if path.is_file() else None


def eval_report_path(workdir: str | Path, split: str, which: str) -> Path:
  """Where `jaxattr.evaluate` writes its report of `split` and checkpoint `which`."""
  return Path(workdir) / f'eval_{split}_{which}.json'
