"""Shared plumbing of the builders that read a dataset the user downloaded by hand.

None of the real datasets can be fetched by jaxattr (their terms must be accepted
on the official pages), so each builder reads a folder the user points it at: the
TFDS `manual_dir`. This module holds what all those builders share:

  * `ManualDirBuilder`: the base class. It turns a missing or incomplete folder
    into ONE `DataError` that lists what is missing, the layout expected and the
    official download page; it reads and validates images, and, only when asked
    (`skip_bad_images=True`), skips unreadable images, logs them and lists them
    in `bad_images.txt` in the prepared dataset's folder.
  * `incomplete_error`, `find_first`, `missing_files`: finding the user's files.

Images are read with `jaxattr.data.images` (safe decode, pixel limit, stored
encoding); MATLAB annotations with `jaxattr.data.matlab`.
"""

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image
from tensorflow_datasets.core import constants

from jaxattr.data import common, images
from jaxattr.data.common import DataError

T = TypeVar('T')

# How many missing files an error message lists before it summarises the rest.
MAX_LISTED = 20
BAD_IMAGES_FILE = 'bad_images.txt'
# The attribute of `tfds.core.FileReaderBuilder` that caches `info`'s feature specs.
TFDS_FEATURE_SPECS_CACHE = '_example_specs'


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


def missing_files(paths: Iterable[Path]) -> list[Path]:
  """The paths that are not existing files, in the order given."""
  return [p for p in paths if not p.is_file()]


# ----------------------------------------------------------------------------
# The base builder.


class ManualDirBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A `GeneratorBasedBuilder` over a folder the user downloaded by hand.

  Subclasses set `DISPLAY_NAME`, `SOURCE` (official page name and URL) and
  `LAYOUT` (the expected folder layout); `MANUAL_DOWNLOAD_INSTRUCTIONS` is built
  from them. `info` holds the canonical features, `ATTRIBUTE_NAMES` (names fixed
  by the release), `HOMEPAGE`, `CITATION`, how images are stored (`ENCODING`) and,
  as its description, the docstring of the builder's module.

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
  ATTRIBUTE_NAMES: ClassVar[Sequence[str]] = ()
  HOMEPAGE: ClassVar[str] = ''
  CITATION: ClassVar[str] = ''
  ENCODING: ClassVar[str] = 'jpeg'

  def __init__(
    self,
    *,
    skip_bad_images: bool = False,
    manual_dir: os.PathLike | str | None = None,
    max_image_pixels: int = images.MAX_PIXELS,
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
      max_image_pixels: an image with more pixels (width x height) is refused
        before it is decoded, as a bad image (`images.MAX_PIXELS` explains the
        default).
      **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (data_dir, config, ...).
    """
    self._skip_bad_images = skip_bad_images
    self._max_image_pixels = max_image_pixels
    self._bad_images: list[tuple[str, str, str]] = []
    self._given_manual_dir = manual_dir
    # The folder `download_and_prepare` resolved (so errors can name it).
    self._resolved_manual_dir: Path | None = None
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

  def _info(self) -> tfds.core.DatasetInfo:
    """The canonical features and the names; the builder module's docstring describes it."""
    return common.make_info(
      self,
      self._expected_names(),
      description=sys.modules[type(self).__module__].__doc__ or '',
      homepage=self.HOMEPAGE,
      citation=self.CITATION,
      encoding_format=self.ENCODING,
    )

  def _expected_names(self) -> list[str]:
    """`ATTRIBUTE_NAMES`, or the names read from the user's files (NAMES_FROM_DATA)."""
    return self._attribute_names() if self.NAMES_FROM_DATA else list(self.ATTRIBUTE_NAMES)

  def _check_names(self, path: Path, names: Sequence[str]) -> None:
    """A `DataError` naming `path` if the attribute names it states are not the expected ones."""
    expected = self._expected_names()
    if list(names) != expected:
      why = ' (the ones this builder was set up with)' if self.NAMES_FROM_DATA else ''
      raise DataError(f'{path}: the attributes are {list(names)}, expected {expected}{why}.')

  # -- manual dir --------------------------------------------------------------

  def _error(self, root: os.PathLike | str, missing: Sequence[str]) -> DataError:
    return incomplete_error(self._display_name(), root, missing, self._layout(), self.SOURCE)

  def _display_name(self) -> str:
    return self.DISPLAY_NAME

  def _layout(self) -> str:
    return self.LAYOUT

  def _manual_root(self, dl_manager: tfds.download.DownloadManager) -> Path:
    """The user's folder; a `DataError` naming it if it is absent or empty."""
    root = self._resolved_manual_dir
    if root is not None and not (root.is_dir() and any(root.iterdir())):
      raise self._error(root, [f'{root} (the folder does not exist or is empty)'])
    try:
      return Path(os.fspath(dl_manager.manual_dir))
    except AssertionError as e:  # TFDS's own check, should ours ever be bypassed.
      raise self._error(root or '<manual_dir>', [f'the manual dir ({e})']) from e

  def _require_layout(
    self, root: Path, files: Mapping[Path, str], folders: Mapping[Path, str]
  ) -> None:
    """One error listing every missing annotation file and image folder.

    Args:
      root: the user's folder (the error names it and the expected layout).
      files: file that must exist -> what it is (e.g. 'annotation file').
      folders: folder that must exist -> what it holds.
    """
    missing = [f'{path} ({what})' for path, what in files.items() if not path.is_file()]
    missing += [f'{path} ({what})' for path, what in folders.items() if not path.is_dir()]
    if missing:
      raise self._error(root, missing)

  def _read_annotation(
    self, root: Path, file_name: str, image_folder: str, holds: str, read: Callable[[Path], T]
  ) -> tuple[Path, T]:
    """Reads the annotation file `root/file_name` once the folder's layout is checked.

    Args:
      root: the user's folder.
      file_name: the annotation file, relative to `root`.
      image_folder: the folder of images, relative to `root`.
      holds: what the image folder holds (named in the error if it is absent).
      read: the file's reader; its result has the `attribute_names` the file states,
        checked against the builder's (`_check_names`).

    Returns:
      `(path of the annotation file, what read returned)`.
    """
    path = root / file_name
    self._require_layout(root, {path: 'annotation file'}, {root / image_folder: holds})
    annotation = read(path)
    self._check_names(path, annotation.attribute_names)
    return path, annotation

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
    """`images.read_image`, or None when the image is bad and bad images are skipped."""
    try:
      return images.read_image(path, self._max_image_pixels)
    except DataError as e:
      if not self._skip_bad_images:
        raise
      self._bad_images.append((split, image_id, str(e)))
      return None

  def _stored_examples(
    self, split: str, rows: Iterable[tuple[Path, str, np.ndarray]]
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    """A split's canonical examples, one per image, keyed by their `index`.

    Images are stored as `ENCODING`. A bad image stops the build, or is skipped
    (`skip_bad_images`) and the index stays contiguous; the skipped ones are
    reported at the end of the split.

    Args:
      split: the split's name.
      rows: (image path, image_id, labels) per example, in the split's order.

    Yields:
      `(index, example)` for TFDS.
    """
    index = 0
    for path, image_id, labels in rows:
      loaded = self._read_image(split, path, image_id)
      if loaded is None:
        continue
      image = images.stored_bytes(*loaded, self.ENCODING)
      yield index, common.example(image, labels, index, image_id)
      index += 1
    self._report_bad_images(split, index)

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
    # FileReaderBuilder caches the serialized feature specs derived from `info` in
    # a private functools.cached_property; TFDS has no public way to reset it.
    # tests/test_custom.py checks it is still there, so a TFDS upgrade that moves
    # it fails loudly instead of reading with stale features.
    self.__dict__.pop(TFDS_FEATURE_SPECS_CACHE, None)
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
    given = config.manual_dir or self._given_manual_dir
    # Resolved here, as TFDS would (`<download_dir>/manual`), and handed to TFDS
    # explicitly: the builder then knows the folder without reading TFDS internals.
    downloads = Path(os.fspath(download_dir or self.data_dir_root / 'downloads'))
    self._resolved_manual_dir = Path(os.fspath(given or downloads / 'manual'))
    config = dataclasses.replace(config, manual_dir=self._resolved_manual_dir)
    if self.NAMES_FROM_DATA:
      if self.data_path.exists() and not config.download_mode.overwrite_dataset:
        if given is not None:
          self._check_prepared(self._resolved_manual_dir)
      else:
        names = tuple(self._read_attribute_names(self._resolved_manual_dir))
        if names != self._data_names:
          self._data_names = names
          self._rebuild_info()
    super().download_and_prepare(download_dir=download_dir, download_config=config, **kwargs)
