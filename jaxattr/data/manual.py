"""Shared plumbing of the builders that read a dataset the user downloaded by hand.

None of the real datasets can be fetched by jaxattr (their terms must be accepted
on the official pages), so each builder reads a folder the user points it at: the
TFDS `manual_dir`. This module holds what all those builders share:

  * `ManualDirBuilder`: the base class. It turns a missing or incomplete folder
    into ONE `DataError` that lists what is missing, the layout expected and the
    official download page; it reads and validates images, and, only when asked
    (`skip_bad_images=True`), skips unreadable images, logs them and lists them
    in `bad_images.txt` in the prepared dataset's folder.
  * image helpers: decode with PIL, convert to RGB, keep the original bytes
    when they already are what the dataset stores (no lossy re-encoding).
  * MATLAB helpers: `scipy.io.loadmat` wraps every value of a cell or struct in
    1x1 arrays; `mat_unwrap`, `mat_field`, `mat_strings` and `mat_ints` peel
    them off whatever the orientation (1xN or Nx1) the file uses.
"""

import dataclasses
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image
from tensorflow_datasets.core import constants

from jaxattr.data.common import DataError

# How many missing files an error message lists before it summarises the rest.
MAX_LISTED = 20
JPEG_QUALITY = 95
BAD_IMAGES_FILE = 'bad_images.txt'
_PIL_FORMATS = {'jpeg': 'JPEG', 'png': 'PNG'}


def how_to_pass_manual_dir() -> str:
  """The sentence that tells users how to hand their folder to jaxattr."""
  return (
    'Pass the folder with --config.data.manual_dir=<folder> (in TFDS terms: '
    'builder.download_and_prepare(download_config='
    'tfds.download.DownloadConfig(manual_dir=<folder>))).'
  )


def incomplete_error(
  dataset: str,
  root: os.PathLike | str,
  missing: Sequence[str],
  layout: str,
  source: str,
) -> DataError:
  """One error that says everything a user needs to fix their manual download.

  Args:
    dataset: human-readable dataset name (e.g. 'PETA (PETA.mat form)').
    root: the manual dir that was given.
    missing: what is missing, one entry per file or folder.
    layout: the expected layout, several lines.
    source: where the dataset is officially obtained (page name and URL).

  Returns:
    A `DataError` to raise.
  """
  lines = [f'{dataset}: the manual download at {root} is missing or incomplete. Missing:']
  lines += [f'  - {m}' for m in missing[:MAX_LISTED]]
  if len(missing) > MAX_LISTED:
    lines.append(f'  ... and {len(missing) - MAX_LISTED} more ({len(missing)} in all).')
  lines.append('Expected layout:')
  lines += [f'  {line}' for line in layout.strip('\n').splitlines()]
  lines.append(
    f'Download the dataset by hand from its official page, {source}, unpack it, '
    f'and make the folder look like the layout above. {how_to_pass_manual_dir()}'
  )
  return DataError('\n'.join(lines))


def find_first(root: Path, relative_paths: Iterable[str]) -> Path | None:
  """The first of `relative_paths` (tried in order) that exists under `root`."""
  for relative in relative_paths:
    candidate = root / relative
    if candidate.exists():
      return candidate
  return None


def read_image(path: os.PathLike | str) -> tuple[bytes, Image.Image]:
  """Reads and fully decodes one image file.

  Args:
    path: the image file.

  Returns:
    The file's bytes and the decoded PIL image (any mode; `format` is set).

  Raises:
    DataError: naming the path, if the file is missing or cannot be decoded.
  """
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except FileNotFoundError as e:
    raise DataError(f'{path}: image file is missing.') from e
  except OSError as e:
    raise DataError(f'{path}: cannot read image file ({e}).') from e
  try:
    image = Image.open(io.BytesIO(raw))
    # open() only parses the header; load() decodes every pixel, which is what
    # catches truncated or corrupt data here rather than in the training loop.
    image.load()
  # PIL reports malformed files with many exception types (OSError,
  # SyntaxError, ValueError, struct.error, DecompressionBombError, ...).
  except Exception as e:  # noqa: BLE001
    raise DataError(f'{path}: corrupt or unreadable image ({type(e).__name__}: {e}).') from e
  if image.width < 1 or image.height < 1:
    raise DataError(f'{path}: image has no pixels ({image.width}x{image.height}).')
  return raw, image


def to_rgb(image: Image.Image) -> Image.Image:
  """The image as 8-bit RGB (grayscale, palette, CMYK and alpha images converted)."""
  return image if image.mode == 'RGB' else image.convert('RGB')


def encode_image(image: Image.Image, encoding_format: str) -> bytes:
  """Encodes an image as `encoding_format` ('jpeg' or 'png') after converting to RGB."""
  buffer = io.BytesIO()
  if encoding_format == 'jpeg':
    to_rgb(image).save(buffer, format='JPEG', quality=JPEG_QUALITY)
  elif encoding_format == 'png':
    to_rgb(image).save(buffer, format='PNG')
  else:
    raise ValueError(f"encoding_format must be 'jpeg' or 'png', got {encoding_format!r}.")
  return buffer.getvalue()


def stored_bytes(raw: bytes, image: Image.Image, encoding_format: str) -> bytes:
  """What to store for a whole source image.

  The original bytes are kept when they already are an RGB image in the stored
  format (no generation loss, no work); anything else (another format, grayscale,
  palette, alpha, CMYK) is converted to RGB and encoded.

  Args:
    raw: the file's bytes.
    image: the decoded image (from `read_image`).
    encoding_format: the dataset's storage format, 'jpeg' or 'png'.

  Returns:
    Encoded image bytes.
  """
  if image.format == _PIL_FORMATS.get(encoding_format) and image.mode == 'RGB':
    return raw
  return encode_image(image, encoding_format)


def missing_files(paths: Iterable[Path]) -> list[Path]:
  """The paths that are not existing files, in the order given."""
  return [p for p in paths if not p.is_file()]


# ----------------------------------------------------------------------------
# MATLAB files.


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


# ----------------------------------------------------------------------------
# The base builder.


class ManualDirBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A `GeneratorBasedBuilder` over a folder the user downloaded by hand.

  Subclasses set `DISPLAY_NAME`, `SOURCE` (official page name and URL) and
  `LAYOUT` (the expected folder layout); `MANUAL_DOWNLOAD_INSTRUCTIONS` is built
  from them.

  Attribute names from the data: TFDS builds `info` (features included, so the
  number of attributes) when the builder is constructed, before any manual dir
  is known. Builders whose names are only in the user's files (RAP v2's
  selection, a custom CSV header) set `NAMES_FROM_DATA = True`, implement
  `_read_attribute_names(root)`, and call `_attribute_names()` in `_info()`. The
  names then come from, in order: the prepared dataset's `metadata.json`; the
  `manual_dir` given to the constructor; the manual dir handed to
  `download_and_prepare` (which rebuilds `info` before generating). Until one
  of these is known, `info` describes zero attributes.
  """

  DISPLAY_NAME: ClassVar[str] = ''
  SOURCE: ClassVar[str] = ''
  LAYOUT: ClassVar[str] = ''
  NAMES_FROM_DATA: ClassVar[bool] = False

  def __init__(
    self,
    *,
    skip_bad_images: bool = False,
    manual_dir: os.PathLike | str | None = None,
    **kwargs: Any,
  ):
    """Creates the builder.

    Args:
      skip_bad_images: if True, a missing or undecodable image is skipped (its
        examples are left out, the split's `index` stays contiguous), logged, and
        listed in `bad_images.txt` in the prepared dataset's folder. Default False:
        the first bad image stops the build with a `DataError` naming it.
      manual_dir: the user's folder, used by `download_and_prepare` when its
        `download_config` names none (the usual way is
        `DownloadConfig(manual_dir=...)`).
      **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (data_dir, config, ...).
    """
    self._skip_bad_images = skip_bad_images
    self._bad_images: list[tuple[str, str, str]] = []
    self._given_manual_dir = manual_dir
    self._data_names: tuple[str, ...] | None = None
    self._info_cache: tfds.core.DatasetInfo | None = None
    super().__init__(**kwargs)

  def __init_subclass__(cls, **kwargs: Any):
    super().__init_subclass__(**kwargs)
    if cls.LAYOUT and not cls.__dict__.get('MANUAL_DOWNLOAD_INSTRUCTIONS'):
      cls.MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f'Download {cls.DISPLAY_NAME} by hand from {cls.SOURCE} and unpack it as:\n'
        f'{cls.LAYOUT}\n{how_to_pass_manual_dir()}'
      )

  # -- manual dir --------------------------------------------------------------

  def _error(self, root: os.PathLike | str, missing: Sequence[str]) -> DataError:
    return incomplete_error(self._display_name(), root, missing, self._layout(), self.SOURCE)

  def _display_name(self) -> str:
    return self.DISPLAY_NAME

  def _layout(self) -> str:
    return self.LAYOUT

  def _manual_root(self, dl_manager: tfds.download.DownloadManager) -> Path:
    """The user's folder; a `DataError` if it is absent or empty."""
    try:
      return Path(os.fspath(dl_manager.manual_dir))
    except AssertionError as e:
      # TFDS asserts when the folder is absent or empty; its path is only kept in
      # a private attribute, read here so the message can name it.
      given = getattr(dl_manager, '_manual_dir', None) or '<manual_dir>'
      raise self._error(given, [f'{given} (the folder does not exist or is empty)']) from e

  def _require_images(self, root: Path, paths: Iterable[Path]) -> None:
    """One error listing every missing image (unless bad images are skipped).

    Checking up front costs one stat per image and saves a user from finding the
    first missing file an hour into a build.
    """
    if self._skip_bad_images:
      return  # Each missing image is reported as skipped when it is reached.
    missing = missing_files(paths)
    if missing:
      raise self._error(root, [f'{p} (image file)' for p in missing])

  # -- images --------------------------------------------------------------------

  def _read_image(self, split: str, path: Path, image_id: str) -> tuple[bytes, Image.Image] | None:
    """`read_image`, or None when the image is bad and bad images are skipped."""
    try:
      return read_image(path)
    except DataError as e:
      if not self._skip_bad_images:
        raise
      self._bad_images.append((split, image_id, str(e)))
      return None

  def _report_bad_images(self, split: str, written: int) -> None:
    """Logs the split's skipped images and appends them to `bad_images.txt`.

    Args:
      split: the split just generated.
      written: how many examples it got.

    Raises:
      DataError: if skipping left the split empty (TFDS cannot store an empty
        split, and a user should hear that all their images are unreadable).
    """
    bad = [b for b in self._bad_images if b[0] == split]
    if not bad:
      return
    logging.warning(
      '%s %s: skipped %d bad image(s) (skip_bad_images=True): %s',
      self.name,
      split,
      len(bad),
      ', '.join(image_id for _, image_id, _ in bad),
    )
    # During download_and_prepare, data_path is the temporary folder that becomes
    # the dataset's folder, so the list ends up beside the records.
    with open(os.fspath(self.data_path / BAD_IMAGES_FILE), 'a', encoding='utf-8') as f:
      for split_name, image_id, reason in bad:
        f.write(f'{split_name}\t{image_id}\t{reason}\n')
    if not written:
      raise DataError(
        f'{self.name} {split}: all {len(bad)} image(s) of the split are bad, nothing is '
        f'left to store; the first: {bad[0][2]}'
      )

  # -- attribute names read from the user's files -------------------------------

  @property
  def info(self) -> tfds.core.DatasetInfo:
    """The `DatasetInfo`; rebuilt once the attribute names are read (NAMES_FROM_DATA)."""
    if not self.NAMES_FROM_DATA:
      return super().info
    # TFDS caches `info` for the builder's lifetime; these builders must rebuild
    # it when download_and_prepare learns the names, so they keep their own cache.
    if self._info_cache is None:
      self._info_cache = self._info()
    return self._info_cache

  def _rebuild_info(self) -> None:
    """Replaces `info` by one built with the current names, keeping what TFDS set on it."""
    old = self._info_cache
    self._info_cache = None
    # FileReaderBuilder caches the serialized feature specs derived from `info`.
    self.__dict__.pop('_example_specs', None)
    # FileReaderBuilder.__init__ set the record format on the old info.
    self.info.set_file_format(old.file_format if old is not None else None)

  def _read_attribute_names(self, root: Path) -> list[str]:
    """The attribute names stated by the user's files under `root` (NAMES_FROM_DATA)."""
    raise TypeError(f'{type(self).__name__} does not read its attribute names from data.')

  def _check_prepared(self, root: Path) -> None:
    """Called when the dataset is already prepared and a manual dir is given again.

    Raises a `DataError` if the user's files no longer match what was prepared;
    the default accepts them.
    """
    del root

  def _attribute_names(self) -> list[str]:
    """The attribute names for `_info()` of a NAMES_FROM_DATA builder."""
    if self._data_names is None:
      metadata = self.data_path / constants.METADATA_FILENAME
      if metadata.exists():
        with open(os.fspath(metadata), encoding='utf-8') as f:
          self._data_names = tuple(json.load(f)['attribute_names'])
      elif self._given_manual_dir is not None:
        self._data_names = tuple(self._read_attribute_names(Path(self._given_manual_dir)))
    return list(self._data_names or ())

  def download_and_prepare(
    self,
    *,
    download_dir: os.PathLike | str | None = None,
    download_config: tfds.download.DownloadConfig | None = None,
    **kwargs: Any,
  ) -> None:
    """`GeneratorBasedBuilder.download_and_prepare`, reading the names first if needed.

    Args:
      download_dir: as in TFDS (also the default parent of the manual dir).
      download_config: as in TFDS; `manual_dir` is the user's folder (default:
        the constructor's `manual_dir`, then TFDS's `<download_dir>/manual`).
      **kwargs: passed on (file_format, permissions).
    """
    config = download_config or tfds.download.DownloadConfig()
    if config.manual_dir is None and self._given_manual_dir is not None:
      config = dataclasses.replace(config, manual_dir=self._given_manual_dir)
    if self.NAMES_FROM_DATA:
      manual_dir = Path(
        os.fspath(
          config.manual_dir
          or Path(os.fspath(download_dir or self.data_dir_root / 'downloads')) / 'manual'
        )
      )
      if self.data_path.exists() and not config.download_mode.overwrite_dataset:
        if config.manual_dir is not None:
          self._check_prepared(manual_dir)
      else:
        names = tuple(self._read_attribute_names(manual_dir))
        if names != self._data_names:
          self._data_names = names
          self._rebuild_info()
    super().download_and_prepare(download_dir=download_dir, download_config=config, **kwargs)
