"""Reading MATLAB annotation files (PETA, PA-100K and RAP v2 ship theirs as .mat).

`scipy.io.loadmat` wraps every value of a cell or struct in 1x1 arrays;
`mat_unwrap`, `mat_field`, `mat_strings`, `mat_ints` and `mat_matrix` peel them
off whatever the orientation (1xN or Nx1) the file uses, and every error names
the file and the variable.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from jaxattr.data.common import DataError


def load_mat(path: Path) -> dict[str, Any]:
  """`scipy.io.loadmat` with errors that name the file.

  Args:
    path: a MATLAB v4-v7.2 .mat file.

  Returns:
    The variables of the file.

  Raises:
    DataError: if the file is missing, corrupt or in the HDF5 (v7.3) format.
  """
  try:
    return scipy.io.loadmat(os.fspath(path))
  except FileNotFoundError as e:
    raise DataError(f'{path}: annotation file is missing.') from e
  except NotImplementedError as e:
    raise DataError(
      f'{path}: MATLAB v7.3 (HDF5) files cannot be read with scipy; re-save it in '
      f"MATLAB with save('{path.name}', '-struct', ..., '-v7') ({e})."
    ) from e
  except Exception as e:  # noqa: BLE001  (scipy raises ValueError, TypeError, OSError...)
    raise DataError(f'{path}: cannot read MATLAB file ({type(e).__name__}: {e}).') from e


def load_variables(path: Path, names: Sequence[str]) -> dict[str, Any]:
  """`load_mat`, checking that the file holds the variables `names`.

  Raises:
    DataError: as `load_mat`, or naming the absent variables and those the file holds.
  """
  contents = load_mat(path)
  absent = [name for name in names if name not in contents]
  if absent:
    raise DataError(f'{path}: variables {absent} are missing (found {sorted(contents)}).')
  return contents


def mat_unwrap(value: Any) -> Any:
  """Peels the 1x1 cell/struct arrays loadmat puts around a single value."""
  while (
    isinstance(value, np.ndarray)
    and value.size == 1
    and (value.dtype == object or value.dtype.names is not None)
  ):
    value = value.reshape(-1)[0]
  return value


def mat_field(struct: Any, name: str, path: Path) -> Any:
  """Field `name` of a MATLAB struct (1x1 struct array or record).

  Args:
    struct: the struct as loaded by loadmat.
    name: field name.
    path: the .mat file (for the error message).

  Returns:
    The field's value with its 1x1 wrappers removed.

  Raises:
    DataError: if the value is not a struct or has no such field.
  """
  record = mat_unwrap(struct)
  names = getattr(getattr(record, 'dtype', None), 'names', None)
  if not names or name not in names:
    raise DataError(f'{path}: expected a struct with a field {name!r}; found fields {names}.')
  return mat_unwrap(record[name])


def mat_string(value: Any) -> str:
  """One MATLAB string (a char array, possibly inside a 1x1 cell)."""
  value = mat_unwrap(value)
  if isinstance(value, np.ndarray):
    if value.size == 0:
      return ''
    if value.dtype.kind == 'U':
      return ''.join(str(s) for s in value.reshape(-1))
    value = mat_unwrap(value.reshape(-1)[0])
  return str(value).strip()


def mat_strings(cell: Any, path: Path, what: str) -> list[str]:
  """A cell array of strings (any orientation) as a list.

  Args:
    cell: the cell array as loaded by loadmat.
    path: the .mat file (for the error message).
    what: name of the variable (for the error message).

  Returns:
    The strings in MATLAB's linear (column-major) order, which for an Nx1 or 1xN
    cell is simply their order.

  Raises:
    DataError: if `cell` is not a cell array.
  """
  if not isinstance(cell, np.ndarray) or cell.dtype != object:
    raise DataError(f'{path}: {what} should be a cell array of strings, got {type(cell)}.')
  return [mat_string(item) for item in cell.reshape(-1, order='F')]


def mat_ints(value: Any, path: Path, what: str) -> np.ndarray:
  """A numeric MATLAB vector (1xN or Nx1) as a 1-D int64 array.

  Args:
    value: the array as loaded by loadmat.
    path: the .mat file (for the error message).
    what: name of the variable (for the error message).

  Returns:
    int64 [N].

  Raises:
    DataError: if the value is not a numeric vector of whole numbers.
  """
  array = np.asarray(mat_unwrap(value))
  if array.dtype.kind not in 'iuf' or (array.ndim == 2 and min(array.shape) > 1):
    raise DataError(f'{path}: {what} should be a numeric vector, got {array.dtype} {array.shape}.')
  flat = array.reshape(-1)
  if array.dtype.kind == 'f' and not np.all(np.equal(np.mod(flat, 1), 0)):
    raise DataError(f'{path}: {what} should hold whole numbers.')
  return flat.astype(np.int64)


def mat_matrix(
  value: Any, path: Path, what: str, shape: tuple[int | None, int | None]
) -> np.ndarray:
  """A numeric MATLAB matrix, checked against an expected shape.

  Args:
    value: the array as loaded by loadmat.
    path: the .mat file (for the error message).
    what: name of the variable (for the error message).
    shape: expected (rows, columns); None = any.

  Returns:
    The matrix as int64.

  Raises:
    DataError: naming the file and variable if it is not a matrix of that shape.
  """
  array = np.asarray(mat_unwrap(value))
  if array.ndim != 2 or array.dtype.kind not in 'iufb':
    raise DataError(f'{path}: {what} should be a numeric matrix, got {array.dtype} {array.shape}.')
  for axis, (want, got) in enumerate(zip(shape, array.shape, strict=True)):
    if want is not None and want != got:
      kind = 'rows' if axis == 0 else 'columns (labels per row)'
      raise DataError(f'{path}: {what} has {got} {kind}, expected {want}.')
  return array.astype(np.int64)


def check_values(labels: np.ndarray, allowed: Sequence[int], path: Path, what: str) -> None:
  """Raises a `DataError` naming the first row whose labels are outside `allowed`."""
  bad = ~np.isin(labels, np.asarray(allowed))
  if bad.any():
    row, col = (int(i) for i in np.argwhere(bad)[0])
    raise DataError(
      f'{path}: {what} row {row + 1}, column {col + 1} holds {labels[row, col]}; '
      f'allowed values are {list(allowed)}.'
    )
