"""The run folder's JSON files: the saved config, attribute names, thresholds, results.

Each is written by the run (or `jaxattr.evaluate`) and read by the tools, so a run
restores, predicts and exports without its dataset.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jaxattr import metrics
from jaxattr.run import layout, resume
from jaxattr.run.restore import CheckpointRef


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples of the config (`jaxattr.schema`); dicts recursively."""
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
    layout.RunError: if the workdir or its config.json is missing.
  """
  workdir = Path(workdir)
  layout.require_dir(workdir)
  path = Path(workdir) / layout.CONFIG
  if not path.is_file():
    raise layout.RunError(f'{path}: missing; is {workdir} the workdir of a jaxattr run?')
  return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))


def write_attributes(workdir: str | Path, names: Sequence[str], positive_ratio: np.ndarray) -> Path:
  """Writes the attribute names and train positive ratios; returns the path."""
  path = Path(workdir) / layout.ATTRIBUTES
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
    layout.RunError: if neither file is there.
  """
  workdir = Path(workdir)
  path = Path(workdir) / layout.ATTRIBUTES
  if path.is_file():
    data = json.loads(path.read_text())
    ratio = data.get('positive_ratio')
    return list(data['names']), None if ratio is None else np.asarray(ratio, np.float32)
  results = Path(workdir) / layout.RESULTS
  if results.is_file():
    return list(json.loads(results.read_text())['test']['per_attribute']), None
  raise layout.RunError(
    f'{workdir}: neither {layout.ATTRIBUTES} nor {layout.RESULTS}; attribute names unknown.'
  )


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
  path = Path(workdir) / layout.THRESHOLDS
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
  path = Path(workdir) / layout.THRESHOLDS
  if not path.is_file():
    return None
  data = json.loads(path.read_text())
  if data.get('step') != ref.step or list(data['thresholds']) != list(names):
    return None
  return np.asarray([data['thresholds'][n] for n in names], np.float64)


def write_results(workdir: str | Path, results: dict[str, Any], markdown: str) -> Path:
  """Writes the final results as `results.json` and `results.md`; returns the json path.

  A run whose config changed while it trained (`config_history.jsonl`) says so in
  both: `results['config_changes']`, and a paragraph under the markdown's title.
  """
  workdir = Path(workdir)
  changes = resume.config_changes(workdir)
  if changes:
    results = {**results, 'config_changes': changes}
    title, _, rest = markdown.partition('\n')
    markdown = f'{title}\n\n{resume.changes_markdown(changes)}{rest}'
  (Path(workdir) / layout.RESULTS_MARKDOWN).write_text(markdown)
  path = Path(workdir) / layout.RESULTS
  path.write_text(metrics.to_json(results, indent=2) + '\n')
  return path
