"""Checks of values and flags that report every problem at once, one line each.

The config's fields are checked with the check builders here (`integer`, `number`,
`choice`, ...; `jaxattr.schema` declares each field's check), and so are the tools'
flags (`evaluate`, `predict`, `export`, `experiments/launch.py`); each reports the
same way (`exit_if_problems`: one line per problem, exit code 2).
"""

import math
import numbers
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

EXIT_CODE = 2  # The conventional code of a command-line usage error.


# --- Checks of one value --------------------------------------------------------------


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


def run_folder(name: str, value: str | None) -> str | None:
  """A required flag naming an existing run folder (the tools' --workdir)."""
  return check_dir(name, value) if value else f'{name}: required'


def divisible_batch(name: str, value: Any, num_devices: int | None) -> str | None:
  """One problem line unless `value` is a positive multiple of `num_devices`."""
  devices = num_devices or 1
  if is_int(value) and value > 0 and value % devices == 0:
    return None
  if devices == 1:
    return f'{name}: must be a positive integer, got {value!r}'
  return f'{name}: must be a positive multiple of {devices} devices, got {value!r}'


# --- Checks of a config field -----------------------------------------------------------
# A check is called as `check(name, value, config, num_devices)`, with `name` the field's
# `config.<path>` and its value present, and returns its problem lines (or one line, or
# None). `jaxattr.schema` declares each field's check with these.

Check = Callable[[str, Any, Any, int | None], Any]  # (name, value, config, num_devices).


def problem_lines(result: Any) -> list[str]:
  """A check's result (one line, None or several) as a list of problem lines."""
  if result is None:
    return []
  if isinstance(result, str):
    return [result]
  return [line for line in result if line]


def integer(minimum: int | None = None, maximum: int | None = None) -> Check:
  """An int (not a bool) in [minimum, maximum]."""
  return lambda name, value, *_: check_int(name, value, minimum, maximum)


def number(
  low: float | None = None,
  high: float | None = None,
  *,
  open_low: bool = False,
  below: float | None = None,
) -> Check:
  """A finite real number in [low, high] ((low, ...] if `open_low`; < `below` if given)."""

  def check(name, value, *_):
    if not is_number(value):
      return f'{name}: must be a finite number, got {value!r}'
    if low is not None and (value <= low if open_low else value < low):
      return f'{name}: must be {">" if open_low else ">="} {low}, got {value!r}'
    if high is not None and value > high:
      return f'{name}: must be <= {high}, got {value!r}'
    if below is not None and value >= below:
      return f'{name}: must be in {"(" if open_low else "["}{low}, {below}), got {value!r}'
    return None

  return check


def boolean() -> Check:
  """True or False."""

  def check(name, value, *_):
    if not isinstance(value, bool):
      return f'{name}: must be True or False, got {value!r}'
    return None

  return check


def string(*, nonempty: bool = False) -> Check:
  """A string (not empty if `nonempty`)."""

  def check(name, value, *_):
    if not isinstance(value, str):
      return f'{name}: must be a string, got {value!r}'
    if nonempty and not value:
      return f'{name}: must not be empty'
    return None

  return check


def choice(choices: Iterable[Any] | Callable[[], Iterable[Any]]) -> Check:
  """One of `choices` (a callable is asked when the check runs: the registries)."""
  return lambda name, value, *_: check_choice(
    name, value, choices() if callable(choices) else choices
  )


def tuple_of(length: int | None, each: Callable[[Any], bool], what: str) -> Check:
  """A tuple of values that each pass `each` (`length` of them unless None)."""

  def check(name, value, *_):
    ok = isinstance(value, tuple | list) and all(each(v) for v in value)
    if not ok or (length is not None and len(value) != length):
      count = f'{length} ' if length is not None else ''
      return f'{name}: must be a tuple of {count}{what}, got {value!r}'
    return None

  return check


def then(first: Check, *more: Check) -> Check:
  """`first`, and when it passes, each of `more` (relations that need a valid value)."""

  def check(*args):
    problems = problem_lines(first(*args))
    if problems:
      return problems
    return [line for c in more for line in problem_lines(c(*args))]

  return check


def batch() -> Check:
  """A global batch: a positive multiple of the run's devices."""
  return lambda name, value, config, num_devices: divisible_batch(name, value, num_devices)
