"""Your own attributes: a folder of person images plus a CSV of labels.

Layout (see docs/custom_data.md), either one file with a `split` column:

  <manual_dir>/labels.csv     image,split,<attr1>,<attr2>,...

or one file per split, without that column (validation and test optional):

  <manual_dir>/train.csv      image,<attr1>,<attr2>,...
  <manual_dir>/validation.csv
  <manual_dir>/test.csv

`image` is the image path relative to the manual dir (sub-folders allowed),
`split` is train / validation / test, and every other column is an attribute,
named by its header, in header order. Values: 1 (present), 0 (absent), -1 or
empty (unknown). Rows keep their file order within a split (that is `index`);
`image_id` is the `image` value as written. Images (any format PIL reads) are
stored as JPEG: byte for byte when already an RGB JPEG, re-encoded (quality 95)
otherwise.

The attribute names come from the CSV header, so the builder reads them from
the manual dir (see `manual.ManualDirBuilder`, NAMES_FROM_DATA). A prepared
dataset remembers the SHA-256 of its CSV files; preparing again from changed
files raises an error instead of silently reusing the old build.
"""

import csv
import hashlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from jaxattr.data import manual
from jaxattr.data.common import DataError

SPLITS = ('train', 'validation', 'test')
SINGLE_FILE = 'labels.csv'
SPLIT_FILES = {split: f'{split}.csv' for split in SPLITS}
IMAGE_COLUMN = 'image'
SPLIT_COLUMN = 'split'
_VALUES = {'1': 1, '0': 0, '-1': -1, '': -1}

_LAYOUT = """\
<manual_dir>/labels.csv      header: image,split,<attr1>,<attr2>,...  (split: train/validation/test)
  or
<manual_dir>/train.csv       header: image,<attr1>,<attr2>,...
<manual_dir>/validation.csv  (optional, same header)
<manual_dir>/test.csv        (optional, same header)
<manual_dir>/<the image paths named in the CSV, relative to <manual_dir>>
Label values: 1 = present, 0 = absent, -1 or empty = unknown."""


class CustomRow(NamedTuple):
  """One labelled image."""

  image: str  # As written in the CSV (relative to the manual dir).
  labels: np.ndarray  # int8 [C].


class CustomLabels(NamedTuple):
  """The parsed CSV file(s)."""

  attribute_names: list[str]
  splits: dict[str, list[CustomRow]]  # Only the splits that have rows.
  files: list[Path]  # The CSV files read (for the fingerprint).


def csv_files(root: Path) -> list[Path]:
  """The label files under `root`: [labels.csv] or the per-split files present.

  Raises:
    DataError: if both forms are present, or neither.
  """
  single = root / SINGLE_FILE
  per_split = [root / name for name in SPLIT_FILES.values() if (root / name).is_file()]
  if single.is_file() and per_split:
    raise DataError(
      f'{root}: found both {SINGLE_FILE} and per-split files '
      f'({", ".join(p.name for p in per_split)}); keep one form.'
    )
  if single.is_file():
    return [single]
  return per_split


def _read_header(path: Path, with_split: bool) -> tuple[list[str], list[list[str]]]:
  """The checked header and the data rows, each with its line number, of one CSV file."""
  try:
    # utf-8-sig: spreadsheets often write a byte-order mark before the header.
    with open(path, encoding='utf-8-sig', newline='') as f:
      reader = csv.reader(f)
      rows = [(reader.line_num, row) for row in reader]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(f'{path}: cannot read CSV ({e}).') from e
  if not rows:
    raise DataError(f'{path}: empty file; expected a header line.')
  header = [h.strip() for h in rows[0][1]]
  required = [IMAGE_COLUMN] + ([SPLIT_COLUMN] if with_split else [])
  for column in required:
    if header.count(column) != 1:
      raise DataError(f'{path}:1: the header must have exactly one {column!r} column: {header}.')
  if not with_split and SPLIT_COLUMN in header:
    raise DataError(
      f'{path}:1: per-split files must not have a {SPLIT_COLUMN!r} column (the file name '
      'is the split).'
    )
  names = [h for h in header if h not in required]
  if not names:
    raise DataError(f'{path}:1: no attribute columns in the header {header}.')
  if any(not n for n in names):
    raise DataError(f'{path}:1: an attribute column has an empty name: {header}.')
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise DataError(f'{path}:1: duplicate attribute columns {duplicates}.')
  return header, rows[1:]


def read_custom_labels(root: Path) -> CustomLabels:
  """Reads and checks the label CSV file(s) under `root`.

  Args:
    root: the manual dir.

  Returns:
    The attribute names (header order) and, per split, the rows in file order.

  Raises:
    DataError: naming the file and line of any malformed row; or if the files
      are missing, disagree on the header, or give no train rows.
  """
  files = csv_files(root)
  if not files:
    raise DataError(f'{root}: no {SINGLE_FILE} nor {", ".join(SPLIT_FILES.values())}.')
  with_split = files[0].name == SINGLE_FILE
  names = None
  splits: dict[str, list[CustomRow]] = {}
  for path in files:
    header, rows = _read_header(path, with_split)
    file_names = [h for h in header if h not in (IMAGE_COLUMN, SPLIT_COLUMN)]
    if names is None:
      names = file_names
    elif file_names != names:
      raise DataError(
        f'{path}:1: attribute columns {file_names} differ from {files[0].name}: {names}.'
      )
    columns = {h: i for i, h in enumerate(header)}
    attribute_columns = [columns[n] for n in names]
    for line, row in rows:
      if not row or all(not cell.strip() for cell in row):
        continue  # Blank line.
      if len(row) != len(header):
        raise DataError(f'{path}:{line}: {len(row)} columns, the header has {len(header)}.')
      image = row[columns[IMAGE_COLUMN]].strip()
      if not image:
        raise DataError(f'{path}:{line}: empty {IMAGE_COLUMN!r} value.')
      if with_split:
        split = row[columns[SPLIT_COLUMN]].strip()
        if split not in SPLITS:
          raise DataError(f'{path}:{line}: split {split!r} is not one of {list(SPLITS)}.')
      else:
        split = next(s for s, name in SPLIT_FILES.items() if name == path.name)
      values = [row[c].strip() for c in attribute_columns]
      bad = [v for v in values if v not in _VALUES]
      if bad:
        raise DataError(f'{path}:{line}: label values must be 1, 0, -1 or empty; got {bad[0]!r}.')
      labels = np.array([_VALUES[v] for v in values], dtype=np.int8)
      splits.setdefault(split, []).append(CustomRow(image, labels))
  if not splits.get('train'):
    raise DataError(f'{root}: no rows in the train split ({", ".join(str(f) for f in files)}).')
  return CustomLabels(list(names), {s: splits[s] for s in SPLITS if s in splits}, files)


def fingerprint(files: list[Path]) -> str:
  """SHA-256 over the names and contents of the label files."""
  digest = hashlib.sha256()
  for path in files:
    digest.update(path.name.encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()


class CustomAttributes(manual.ManualDirBuilder):
  """Any attributes: images plus a CSV of 1 / 0 / -1 labels."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'CSV labels, one file with a split column or one per split.'}
  DISPLAY_NAME = 'custom attributes'
  SOURCE = 'your own images and labels (see docs/custom_data.md)'
  LAYOUT = _LAYOUT
  NAMES_FROM_DATA = True

  def _labels(self, root: Path) -> CustomLabels:
    """`read_custom_labels`, with an incomplete-folder error if there is nothing to read."""
    if not root.is_dir() or not any(root.iterdir()):
      raise self._error(root, [f'{root} (the folder does not exist or is empty)'])
    if not csv_files(root):
      raise self._error(
        root,
        [f'{root / SINGLE_FILE} (or {", ".join(str(root / n) for n in SPLIT_FILES.values())})'],
      )
    return read_custom_labels(root)

  def _read_attribute_names(self, root: Path) -> list[str]:
    return self._labels(root).attribute_names

  def _check_prepared(self, root: Path) -> None:
    labels = self._labels(root)
    prepared = self.info.metadata.get('csv_sha256')
    if labels.attribute_names != self._attribute_names() or (
      prepared is not None and prepared != fingerprint(labels.files)
    ):
      raise DataError(
        f'{root}: the label files changed since the dataset at {self.data_path} was '
        'prepared from them. Delete that folder to rebuild, or use another '
        '--config.data.data_dir.'
      )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    root = self._manual_root(dl_manager)
    labels = self._labels(root)
    self._check_names(root, labels.attribute_names)
    self.info.metadata['csv_sha256'] = fingerprint(labels.files)
    self._require_images(root, [root / r.image for rows in labels.splits.values() for r in rows])
    return {
      split: self._generate_examples(root, split, rows) for split, rows in labels.splits.items()
    }

  def _generate_examples(self, root: Path, split: str, rows: list[CustomRow]):
    examples = ((root / row.image, row.image, row.labels) for row in rows)
    return self._stored_examples(split, examples)
