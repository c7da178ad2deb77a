"""Checks a resolved run config before any work: every problem, one line each.

  problems = config_validation.validate(config, num_devices=jax.device_count())
  config_validation.exit_if_problems(problems, 'jaxattr.main')   # exit code 2

`validate` reads every field of configs/default.py and returns one line per
problem, `config.<field>: <what it must be>, got <value>`, so a run with three bad
values says all three at once instead of dying on the first in a traceback minutes
later. Choices come from the modules that own them (backbones from the model
registry, datasets from the TFDS builders jaxattr registers, levels and
aggregations from `jaxattr.models`, loss modes from `jaxattr.losses`, optimizers and
schedules from `jaxattr.train`), so a new choice there is valid here without an edit.

Fields that a config file adds beyond configs/default.py are not checked; fields it
lacks are reported as missing. The tools (`evaluate`, `predict`, `export`,
`experiments/launch.py`) check their flags with the small helpers here and report
the same way (`exit_if_problems`).
"""

import math
import numbers
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

EXIT_CODE = 2  # The conventional code of a command-line usage error.
DTYPES = ('float32', 'bfloat16', 'float16')
SELECTION_METRICS = ('map', 'ma', 'f1')
AP_DEFINITIONS = ('voc', 'sklearn')
_MISSING = object()


# --- Helpers the tools share ----------------------------------------------------------


def exit_if_problems(problems: Sequence[str], program: str) -> None:
  """Prints each problem on its own line to stderr and exits with code 2, if any.

  Args:
    problems: lines, each naming a field or flag and what is wrong with it.
    program: the program's name, which starts the first line.
  """
  if not problems:
    return
  noun = 'problem' if len(problems) == 1 else 'problems'
  lines = [f'{program}: {len(problems)} {noun}, nothing was done:', *problems]
  sys.stderr.write('\n'.join(lines) + '\n')
  sys.stderr.flush()
  raise SystemExit(EXIT_CODE)


def is_int(value: Any) -> bool:
  """An integer that is not a bool (True is an int in Python)."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
  """A finite real number that is not a bool."""
  return (
    isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
  )


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None):
  """One problem line if `value` is not an int in [minimum, maximum], else None."""
  if not is_int(value) or (minimum is not None and value < minimum):
    bound = {None: 'an integer', 0: 'an integer >= 0', 1: 'a positive integer'}.get(
      minimum, f'an integer >= {minimum}'
    )
  elif maximum is not None and value > maximum:
    bound = f'an integer <= {maximum}'
  else:
    return None
  return f'{name}: must be {bound}, got {value!r}'


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> str | None:
  """One problem line if `value` is not one of `choices`, else None."""
  choices = list(choices)
  if value in choices:
    return None
  return f'{name}: must be one of {", ".join(map(repr, choices))}; got {value!r}'


def check_dir(name: str, value: str, must_exist: bool = True) -> str | None:
  """One problem line if a folder flag names a file, or (must_exist) nothing at all."""
  path = Path(value).expanduser()
  if path.exists() and not path.is_dir():
    return f'{name}: {value} is a file, not a folder'
  if must_exist and not path.exists():
    return f'{name}: no such folder: {value}'
  return None


def divisible_batch(name: str, value: Any, num_devices: int | None) -> str | None:
  """One problem line unless `value` is a positive multiple of `num_devices`."""
  devices = num_devices or 1
  if is_int(value) and value > 0 and value % devices == 0:
    return None
  if devices == 1:
    return f'{name}: must be a positive integer, got {value!r}'
  return f'{name}: must be a positive multiple of {devices} devices, got {value!r}'


def _run_folder(name: str, value: str | None, required: bool = True) -> str | None:
  if not value:
    return f'{name}: required' if required else None
  return check_dir(name, value)


def _device_count() -> int:
  import jax

  return jax.device_count()


def evaluate_flags(flags: Any) -> list[str]:
  """Problems of `jaxattr.evaluate`'s flags (--workdir, --split, --batch_size, --data_dir)."""
  problems = [_run_folder('--workdir', flags.workdir)]
  if not flags.split:
    problems.append('--split: must not be empty')
  if flags.batch_size is not None:
    problems.append(divisible_batch('--batch_size', flags.batch_size, _device_count()))
  if flags.data_dir:
    problems.append(check_dir('--data_dir', flags.data_dir))
  return [p for p in problems if p]


def predict_flags(flags: Any, inputs: Sequence[str]) -> list[str]:
  """Problems of `jaxattr.predict`'s flags and inputs (the images are checked one by one later)."""
  problems = []
  if bool(flags.workdir) == bool(flags.exported):
    problems.append('--workdir, --exported: give exactly one of them')
  elif flags.workdir:
    problems.append(_run_folder('--workdir', flags.workdir))
  elif not Path(flags.exported).expanduser().is_file():
    problems.append(f'--exported: no such file: {flags.exported}')
  problems.append(check_int('--batch_size', flags.batch_size, 1))
  problems.append(check_int('--top_k', flags.top_k, 1))
  if not inputs:
    problems.append('inputs: give at least one image or folder after the flags')
  return [p for p in problems if p]


EXPORT_PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def export_flags(flags: Any) -> list[str]:
  """Problems of `jaxattr.export`'s flags (--workdir, --output, --batch_size, --platforms)."""
  problems = [_run_folder('--workdir', flags.workdir)]
  if not flags.output:
    problems.append('--output: required')
  else:
    output = Path(flags.output).expanduser()
    if output.is_dir():
      problems.append(f'--output: {flags.output} is a folder; give a file name')
    elif not output.parent.is_dir():
      problems.append(f'--output: no such folder: {output.parent}')
  problems.append(check_int('--batch_size', flags.batch_size, 0))
  unknown = [p for p in flags.platforms or () if p not in EXPORT_PLATFORMS]
  if unknown or not flags.platforms:
    problems.append(
      f'--platforms: each must be one of {", ".join(EXPORT_PLATFORMS)}; got '
      f'{",".join(flags.platforms or ()) or "nothing"}'
    )
  return [p for p in problems if p]


# --- Registries -----------------------------------------------------------------------


def dataset_builders() -> dict[str, Any]:
  """The TFDS builder classes jaxattr defines, by name (no other TFDS dataset fits).

  Only the classes of `jaxattr.data` are looked at; TFDS's own catalogue (hundreds of
  names, which its error message lists) is never loaded. Shared bases that skip
  TFDS registration (`ManualDirBuilder`) have subclasses; the builders are the leaves.
  """
  import tensorflow_datasets as tfds

  from jaxattr.data import input_pipeline  # noqa: F401  (imports, so registers, every builder)

  found, todo = {}, [tfds.core.DatasetBuilder]
  while todo:
    cls = todo.pop()
    subclasses = cls.__subclasses__()
    todo.extend(subclasses)
    name = getattr(cls, 'name', None)
    ours = cls.__module__.startswith('jaxattr.')
    if ours and isinstance(name, str) and name and not subclasses:
      found[name] = cls
  return found


def _optimizers() -> tuple[str, ...]:
  from jaxattr import optim

  return tuple(optim.OPTIMIZERS)


def _schedules() -> tuple[str, ...]:
  from jaxattr import optim

  return tuple(optim.SCHEDULES)


# --- The config -----------------------------------------------------------------------


class _Checker:
  """Collects problem lines while walking the config."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.problems: list[str] = []

  def get(self, field: str) -> Any:
    node = self.config
    for part in field.split('.'):
      try:
        node = node[part]
      except (KeyError, AttributeError, TypeError):
        self.problems.append(f'config.{field}: missing')
        return _MISSING
    return node

  def add(self, problem: str | None) -> None:
    if problem:
      self.problems.append(problem)

  def integer(self, field: str, minimum: int | None = None, maximum: int | None = None) -> Any:
    value = self.get(field)
    if value is not _MISSING:
      self.add(check_int(f'config.{field}', value, minimum, maximum))
    return value

  def number(
    self, field: str, low: float | None = None, high: float | None = None, *, open_low=False
  ) -> Any:
    """A real number in [low, high] ((low, high] if `open_low`)."""
    value = self.get(field)
    if value is _MISSING:
      return value
    if not is_number(value):
      self.problems.append(f'config.{field}: must be a finite number, got {value!r}')
    elif low is not None and (value <= low if open_low else value < low):
      relation = '>' if open_low else '>='
      self.problems.append(f'config.{field}: must be {relation} {low}, got {value!r}')
    elif high is not None and value > high:
      self.problems.append(f'config.{field}: must be <= {high}, got {value!r}')
    return value

  def boolean(self, field: str) -> Any:
    value = self.get(field)
    if value is not _MISSING and not isinstance(value, bool):
      self.problems.append(f'config.{field}: must be True or False, got {value!r}')
    return value

  def string(self, field: str, *, nonempty: bool = False) -> Any:
    value = self.get(field)
    if value is _MISSING:
      return value
    if not isinstance(value, str):
      self.problems.append(f'config.{field}: must be a string, got {value!r}')
    elif nonempty and not value:
      self.problems.append(f'config.{field}: must not be empty')
    return value

  def choice(self, field: str, choices: Iterable[Any]) -> Any:
    value = self.get(field)
    if value is not _MISSING:
      self.add(check_choice(f'config.{field}', value, choices))
    return value

  def numbers(self, field: str, length: int | None, check: Callable[[Any], bool], what: str):
    """A tuple of values that each pass `check` (`length` of them unless None)."""
    value = self.get(field)
    if value is _MISSING:
      return value
    ok = isinstance(value, tuple | list) and all(check(v) for v in value)
    if not ok or (length is not None and len(value) != length):
      count = f'{length} ' if length is not None else ''
      self.problems.append(f'config.{field}: must be a tuple of {count}{what}, got {value!r}')
      return _MISSING
    return value


def _ok(*values: Any) -> bool:
  """Whether none of the values is missing (cross-field checks need them all)."""
  return all(v is not _MISSING for v in values)


def _check_data(c: _Checker) -> None:
  builders = dataset_builders()
  name = c.choice('data.name', sorted(builders))
  builder_config = c.string('data.builder_config')
  if name in builders and isinstance(builder_config, str) and builder_config:
    configs = [b.name for b in builders[name].BUILDER_CONFIGS or ()]
    if builder_config not in configs:
      expected = ', '.join(map(repr, ["''", *configs])) if configs else "'' (it has none)"
      c.problems.append(
        f'config.data.builder_config: {name} has configs {expected}; got {builder_config!r}'
      )
  for field in ('data_dir', 'manual_dir'):
    value = c.string(f'data.{field}')
    if isinstance(value, str) and value:
      # data_dir may not exist yet (TFDS creates it); manual_dir holds the user's files.
      c.add(check_dir(f'config.data.{field}', value, must_exist=field == 'manual_dir'))
  for field in ('train_split', 'eval_split', 'test_split'):
    c.string(f'data.{field}', nonempty=True)
  image = c.integer('data.image_size', 1)
  resize = c.integer('data.resize_size', 1)
  low, high = c.integer('data.crop_min', 1), c.integer('data.crop_max', 1)
  if _ok(low, high, resize) and all(is_int(v) and v > 0 for v in (low, high, resize)):
    if not low <= high <= resize:
      c.problems.append(
        'config.data.crop_min, crop_max, resize_size: must satisfy crop_min <= crop_max <= '
        f'resize_size, got {low}, {high}, {resize}'
      )
  del image
  c.boolean('data.random_flip')
  c.numbers('data.mean', 3, is_number, 'numbers')
  c.numbers('data.std', 3, lambda v: is_number(v) and v > 0, 'positive numbers')
  from jaxattr import losses
  from jaxattr.data import input_pipeline

  c.choice('data.unknown_label', losses.UNKNOWN_MODES)
  parallel = c.get('data.num_parallel_calls')
  if _ok(parallel) and not (is_int(parallel) and (parallel == -1 or parallel >= 1)):
    c.problems.append(
      f'config.data.num_parallel_calls: must be -1 (AUTOTUNE) or a positive integer, '
      f'got {parallel!r}'
    )
  prefetch = c.get('data.prefetch')
  if _ok(prefetch) and not (is_int(prefetch) and prefetch >= -1):
    c.problems.append(
      f'config.data.prefetch: must be -1 (AUTOTUNE) or an integer >= 0, got {prefetch!r}'
    )
  c.choice('data.on_bad_image', input_pipeline.BAD_IMAGE_MODES)
  c.integer('data.max_image_pixels', 1)


def _check_pretrained(c: _Checker, backbone: Any, backbones: Sequence[str]) -> None:
  value = c.string('model.pretrained')
  if not isinstance(value, str) or not value:
    return
  prefix = 'torchvision:'
  if value.startswith(prefix):
    arch, _, weights = value[len(prefix) :].partition(':')
    if arch not in backbones:
      c.problems.append(
        f'config.model.pretrained: {value}: unknown architecture {arch!r}; '
        f'registered: {", ".join(backbones)}'
      )
    elif backbone in backbones and arch != backbone:
      c.problems.append(
        f'config.model.pretrained: {value} are weights of {arch}, but config.model.backbone '
        f'is {backbone}'
      )
    elif weights:
      try:
        from jaxattr import pretrained
      except ImportError:
        return
      available = getattr(pretrained, 'available', None)
      if available is not None and weights not in available(arch):
        c.problems.append(
          f'config.model.pretrained: {value}: no weights {weights!r} for {arch}; '
          f'known: {", ".join(available(arch))}'
        )
    return
  path = Path(value).expanduser()
  if not path.exists():
    c.problems.append(
      f'config.model.pretrained: no such file or folder: {value} (a directory written by '
      f'`python -m jaxattr.convert`, or torchvision:ARCH)'
    )


def _check_model(c: _Checker) -> None:
  from jaxattr import models

  backbones = list(models.BACKBONES)
  backbone = c.choice('model.backbone', backbones)
  c.number('model.width', 0, open_low=True)
  c.number('model.depth', 0, 1, open_low=True)
  # float64 only with `jax_enable_x64` (without it JAX computes float64 in float32): the
  # equivalence tests run in it (tests/conftest.py, FLOAT64).
  import jax

  dtypes = (*DTYPES, 'float64') if jax.config.jax_enable_x64 else DTYPES
  c.choice('model.dtype', dtypes)
  c.choice('model.param_dtype', dtypes)
  _check_pretrained(c, backbone, backbones)
  levels = c.get('model.attention.levels')
  aggregation = c.choice('model.attention.aggregation', models.AGGREGATIONS)
  if _ok(levels):
    as_tuple = tuple(levels) if isinstance(levels, tuple | list) else levels
    if as_tuple not in models.LEVELS:
      c.problems.append(
        f'config.model.attention.levels: must be one of {", ".join(map(str, models.LEVELS))}; '
        f'got {levels!r}'
      )
    elif aggregation in models.AGGREGATIONS:
      try:
        models.validate_attention(as_tuple, aggregation)
      except ValueError as e:
        c.problems.append(f'config.model.attention.aggregation: {e}')
  c.boolean('model.attention.confidence_weighting')
  c.integer('model.attention.mask_channels', 1)
  c.numbers(
    'model.attention.classifier_channels', 3, lambda v: is_int(v) and v > 0, 'positive integers'
  )


def _check_loss_and_history(c: _Checker) -> None:
  from jaxattr import history, losses

  c.choice('loss.primary', losses.PRIMARY_LOSSES)
  c.choice('loss.attention', losses.ATTENTION_LOSSES)
  c.choice('loss.class_weights', losses.CLASS_WEIGHT_MODES)
  c.number('loss.gamma', 0)
  c.choice('loss.attribute_reduction', losses.ATTRIBUTE_REDUCTIONS)
  c.integer('history.length', 1)
  c.integer('history.start_epoch', 0)
  c.choice('history.source', history.SOURCES)


def _check_optimisation(c: _Checker) -> None:
  c.choice('optimizer.name', _optimizers())
  lr = c.number('optimizer.learning_rate', 0, open_low=True)
  momentum = c.number('optimizer.momentum', 0)
  if is_number(momentum) and momentum >= 1:
    c.problems.append(f'config.optimizer.momentum: must be in [0, 1), got {momentum!r}')
  c.boolean('optimizer.nesterov')
  c.number('optimizer.weight_decay', 0)
  c.number('optimizer.grad_clip_norm', 0)
  if 'backbone_lr_scale' in c.config.optimizer:
    c.number('optimizer.backbone_lr_scale', 0)

  schedule = c.choice('schedule.name', _schedules())
  factor = c.number('schedule.factor', 0, open_low=True)
  if is_number(factor) and factor >= 1:
    c.problems.append(f'config.schedule.factor: must be in (0, 1), got {factor!r}')
  c.integer('schedule.patience', 0)
  min_lr = c.number('schedule.min_lr', 0)
  if is_number(lr) and lr > 0 and is_number(min_lr) and min_lr > lr and schedule != 'constant':
    c.problems.append(
      f'config.schedule.min_lr: must be <= config.optimizer.learning_rate ({lr!r}), got {min_lr!r}'
    )
  steps = c.numbers('schedule.step_epochs', None, lambda v: is_number(v) and v >= 0, 'epochs >= 0')
  if _ok(steps) and list(steps) != sorted(steps):
    c.problems.append(f'config.schedule.step_epochs: must be increasing, got {steps!r}')
  warmup = c.number('schedule.warmup_epochs', 0)
  epochs = c.get('train.num_epochs')
  if is_number(warmup) and is_number(epochs) and epochs > 0 and warmup > epochs:
    c.problems.append(
      f'config.schedule.warmup_epochs: must be <= config.train.num_epochs ({epochs!r}), '
      f'got {warmup!r}'
    )


def _check_loop(c: _Checker, num_devices: int | None) -> None:
  c.add(divisible_batch('config.train.batch_size', c.get('train.batch_size'), num_devices))
  c.number('train.num_epochs', 0, open_low=True)
  c.number('train.freeze_backbone_epochs', 0)
  c.integer('train.log_every_steps', 1)
  c.integer('train.checkpoint_every_steps', 1)
  c.integer('train.keep_checkpoints', 1)
  c.integer('train.max_steps', 0)

  c.add(divisible_batch('config.eval.batch_size', c.get('eval.batch_size'), num_devices))
  c.choice('eval.metric', SELECTION_METRICS)
  c.choice('eval.ap', AP_DEFINITIONS)
  c.number('eval.threshold', 0, 1)
  c.integer('eval.every_epochs', 1)
  c.boolean('eval.attention_grid')


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> list[str]:
  """Every problem of a resolved run config, one line each (empty: the config is fine).

  Reads nothing but the config, the registries and the paths it names (pretrained
  weights, manual_dir); writes nothing.

  Args:
    config: the resolved config (configs/default.py and its overrides).
    num_devices: devices of the run (the global batches must divide over them);
      None skips that check.

  Returns:
    Lines `config.<field>: must be ..., got ...`.
  """
  c = _Checker(config)
  c.integer('seed', 0, 2**32 - 1)
  _check_data(c)
  _check_model(c)
  _check_loss_and_history(c)
  _check_optimisation(c)
  _check_loop(c, num_devices)
  c.boolean('distributed')
  return c.problems
