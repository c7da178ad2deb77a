"""Resuming a run folder: its config.json against the new config, and the config history.

A folder without config.json, or without a checkpoint, takes any config. Otherwise
an identical config resumes, and a different one needs `--allow_config_change`;
fields that a resumed run cannot change are refused even then, with the reason the
schema gives (`jaxattr.schema.fixed_reason`). The config a run trains with is
recorded in config.json, and each allowed change, with its step, in
config_history.jsonl.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging

from jaxattr import schema
from jaxattr.run import layout


class ConfigChanged(layout.RunError):
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
  """The fields whose values differ, `{'a.b': (old, new)}` (an absent one: `schema.MISSING`).

  Args:
    old: a config (ConfigDict or its JSON data), e.g. the workdir's config.json.
    new: another.

  Returns:
    The differences, in sorted field order.
  """
  a, b = _flatten(_as_json(old)), _flatten(_as_json(new))
  return {
    key: (a.get(key, schema.MISSING), b.get(key, schema.MISSING))
    for key in sorted(a.keys() | b.keys())
    if a.get(key, schema.MISSING) != b.get(key, schema.MISSING)
  }


def _value(value: Any) -> str:
  return value if value is schema.MISSING else json.dumps(value)


def _has_checkpoint(workdir: Path) -> bool:
  """Whether `checkpoints/` holds a committed step (Orbax names it by the bare number).

  A directory listing, not an Orbax manager: process 0 calls this alone, while the
  other processes wait for its verdict, and a manager may synchronise processes.
  """
  directory = layout.checkpoint_dir(workdir, 'latest')
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def check_resume(
  workdir: str | Path, config: ml_collections.ConfigDict, allow_change: bool = False
) -> dict[str, tuple[Any, Any]]:
  """Whether `config` may run in `workdir`, by the config the folder records.

  A folder without config.json, or without a checkpoint (nothing was trained), takes
  any config. Otherwise an identical config resumes; a different one is refused with
  its differing fields unless `allow_change`, and even then when a field of
  the schema fixes on resume (architecture, dataset, split, image size, history length, ...)
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
  path = Path(workdir) / layout.CONFIG
  if not path.is_file():
    return {}
  try:
    old = json.loads(path.read_text())
  except ValueError as e:
    raise layout.RunError(
      f'{path}: not valid JSON ({e}); the folder no longer says what ran.'
    ) from e
  diffs = config_differences(old, config)
  if not diffs or not _has_checkpoint(workdir):
    return diffs  # Identical, or nothing trained yet: nothing to protect.
  lines, fixed = [], 0
  for field, (a, b) in diffs.items():
    reason = schema.fixed_reason(field, a, b)
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
      f'step go to {layout.CONFIG_HISTORY}), or use another --workdir.'
    )
  else:
    return diffs
  raise ConfigChanged('\n'.join([head, *lines, tail]))


def _now() -> str:
  return time.strftime('%Y-%m-%d %H:%M:%S %Z')


def load_config_history(workdir: str | Path) -> list[dict[str, Any]]:
  """The entries of `workdir/config_history.jsonl`, oldest first ([] if none)."""
  path = Path(workdir) / layout.CONFIG_HISTORY
  if not path.is_file():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append_history(workdir: Path, entry: dict[str, Any]) -> None:
  with open(Path(workdir) / layout.CONFIG_HISTORY, 'a') as f:
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
  path = Path(workdir) / layout.CONFIG
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
      'Config changed at step %d (recorded in %s): %s',
      step,
      layout.CONFIG_HISTORY,
      ', '.join(changed),
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


def changes_markdown(changes: list[dict[str, Any]]) -> str:
  """The paragraph of results.md that lists a run's config changes (`config_changes`)."""
  title = 'This run changed its config while training'
  lines = [f'**{title}** (all configs: {layout.CONFIG_HISTORY}):', '']
  for change in changes:
    fields = ', '.join(
      f'{k} {_value(a)} -> {_value(b)}' for k, (a, b) in (change.get('changed') or {}).items()
    )
    lines.append(f'- from step {change["step"]}: {fields}')
  return '\n'.join(lines) + '\n'
