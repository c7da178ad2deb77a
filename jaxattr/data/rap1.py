"""RAP v1 (Li et al., 2016) from the user's manual download.

`<root>/RAP_dataset/<image names>` and `<root>/RAP_annotation/RAP_annotation.mat`
with the struct `RAP_annotation` of the v1 release: `imagesname` (41,585 x 1
cell), `label` (41,585 x 92; 0 / 1, and 2 = uncertain), `attribute_eng` (92 x 1
cell of names; `attribute_chinese` beside it), `attribute_exp` (short names of
the first 51), `position` (boxes) and `partion` (sic: 5 x 1 cell of structs,
each with the 1-based rows of its `train` (the release's ReadMe name; `trainval`
is accepted too) and `test` sets). The evaluated attributes are the first 51
columns, in the file's order, named by `attribute_eng`; labels 1 / 0 and
2 -> -1 (unknown), as for RAP v2.

RAP v1 has no validation split. Model selection needs one, so the trainval rows
of a partition are divided by `holdout_validation`: an image goes to
`validation` if a hash of its name says so (about 1/6 of them, the peers' PETA
ratio of validation to train + validation), otherwise to `train`. The division
depends on nothing but the image names: it is the same for every run, every
partition and every machine. Splits: `train`, `validation`, `trainval` (train +
validation, in the file's order: the peers train on it) and `test`.

Builder configs `partition0` ... `partition4` (default `partition0`). `index`
follows the partition's order; `image_id` is `RAP_dataset/<name>`; images are
stored as PNG, the format of the release.
"""

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from jaxattr.data import matlab, rap2
from jaxattr.data.common import DataError

HOMEPAGE = 'http://www.rapdataset.com/'
SOURCE = f'RAP (Richly Annotated Pedestrian) v1, {HOMEPAGE}'
NUM_PARTITIONS = rap2.NUM_PARTITIONS
NUM_EVALUATED = 51
# The annotation file and the folder of images, as in RAP v2's release.
ANNOTATION = rap2.ANNOTATION
IMAGE_DIR = rap2.IMAGE_DIR
# An image is held out for validation when the first 8 bytes of SHA-256(name),
# read as a big-endian integer, are 0 modulo this number.
HOLDOUT_MODULUS = 6
# Names of the trainval field of a partition struct: the v1 ReadMe says `train`.
_TRAINVAL_FIELDS = ('train', 'trainval')
_UNCERTAIN = 2

_LAYOUT = """\
<manual_dir>/RAP_dataset/<image names from RAP_annotation.imagesname>
<manual_dir>/RAP_annotation/RAP_annotation.mat
    (RAP v1 struct RAP_annotation: imagesname, label, attribute_eng, partion, ...)"""


def holdout_validation(
  rows: np.ndarray, image_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
  """Divides trainval rows into train and validation rows, by image name alone.

  Args:
    rows: the trainval rows (0-based), in the partition's order.
    image_names: row -> image file name.

  Returns:
    (train rows, validation rows), each in the order of `rows`.
  """
  held = np.array(
    [
      int.from_bytes(hashlib.sha256(image_names[r].encode()).digest()[:8], 'big') % HOLDOUT_MODULUS
      == 0
      for r in rows
    ],
    dtype=bool,
  )
  rows = np.asarray(rows, np.int64)
  return rows[~held], rows[held]


class Rap1Annotation(NamedTuple):
  """The contents of RAP v1's RAP_annotation.mat that the builder uses."""

  attribute_names: list[str]  # The 51 evaluated attributes, in the file's order.
  image_names: list[str]  # Row -> file name under RAP_dataset/.
  labels: np.ndarray  # int8 [rows, 51]: 1 / 0 / -1 (uncertain).
  # Partitions: 'trainval' / 'test' -> 0-based rows.
  partitions: list[dict[str, np.ndarray]]


def _partition_rows(struct: Any, p: int, path: Path, num_rows: int) -> dict[str, np.ndarray]:
  """The 0-based trainval and test rows of partition `p` (a struct of `partion`)."""
  record = matlab.mat_unwrap(struct)
  fields = getattr(getattr(record, 'dtype', None), 'names', None) or ()
  trainval_field = next((f for f in _TRAINVAL_FIELDS if f in fields), _TRAINVAL_FIELDS[0])
  partition = {}
  for split, field in (('trainval', trainval_field), ('test', 'test')):
    what = f'RAP_annotation.partion{{{p + 1}}}.{field}'
    rows = matlab.mat_ints(matlab.mat_field(struct, field, path), path, what)
    if rows.size == 0 or rows.min() < 1 or rows.max() > num_rows:
      raise DataError(f'{path}: {what} must hold 1-based rows 1..{num_rows}.')
    partition[split] = rows - 1
  return partition


def read_rap1_mat(path: Path) -> Rap1Annotation:
  """Reads RAP v1's RAP_annotation.mat.

  Args:
    path: the RAP_annotation.mat file.

  Returns:
    A `Rap1Annotation`; partition rows converted to 0-based.

  Raises:
    DataError: naming the file and the field if anything is malformed.
  """
  contents = matlab.load_mat(path)
  if 'RAP_annotation' not in contents:
    raise DataError(f'{path}: no variable "RAP_annotation" (variables: {sorted(contents)}).')
  rap = contents['RAP_annotation']
  names = matlab.mat_strings(
    matlab.mat_field(rap, 'imagesname', path), path, 'RAP_annotation.imagesname'
  )
  attributes = matlab.mat_strings(
    matlab.mat_field(rap, 'attribute_eng', path), path, 'RAP_annotation.attribute_eng'
  )
  if len(attributes) < NUM_EVALUATED:
    raise DataError(
      f'{path}: RAP_annotation.attribute_eng has {len(attributes)} names; RAP v1 evaluates '
      f'the first {NUM_EVALUATED}.'
    )
  data = matlab.mat_matrix(
    matlab.mat_field(rap, 'label', path),
    path,
    'RAP_annotation.label',
    (len(names), len(attributes)),
  )
  labels = data[:, :NUM_EVALUATED]
  matlab.check_values(labels, (0, 1, _UNCERTAIN), path, 'RAP_annotation.label (first 51 columns)')
  labels = np.where(labels == _UNCERTAIN, -1, labels).astype(np.int8)

  cell = matlab.mat_field(rap, 'partion', path)
  if not isinstance(cell, np.ndarray) or cell.dtype != object:
    raise DataError(f'{path}: RAP_annotation.partion should be a cell of structs.')
  partitions = [
    _partition_rows(struct, p, path, len(names))
    for p, struct in enumerate(cell.reshape(-1, order='F'))
  ]
  return Rap1Annotation(attributes[:NUM_EVALUATED], names, labels, partitions)


class Rap1(rap2.RapBuilder):
  """RAP v1, the 51 evaluated attributes, one of five partitions."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
    '1.0.0': 'Partitions 0-4, 51 attributes, 2 -> unknown, validation held out of trainval.'
  }
  DISPLAY_NAME = 'RAP v1'
  SOURCE = SOURCE
  LAYOUT = _LAYOUT
  CITATION = (
    '@article{li2016richly, title={A Richly Annotated Dataset for Pedestrian Attribute '
    'Recognition}, author={Li, Dangwei and Zhang, Zhang and Chen, Xiaotang and Ling, '
    'Haibin and Huang, Kaiqi}, journal={arXiv preprint arXiv:1603.07054}, year={2016}}'
  )
  READ_MAT = staticmethod(read_rap1_mat)

  def _split_rows(self, root: Path, annotation: Any, partition: int) -> dict[str, np.ndarray]:
    """The file's trainval and test rows, and train / validation held out of trainval."""
    trainval = annotation.partitions[partition]['trainval']
    train, validation = holdout_validation(trainval, annotation.image_names)
    if not (train.size and validation.size):
      raise DataError(
        f'{root / ANNOTATION}: partition {partition} has {trainval.size} trainval rows, too '
        'few to hold a validation split out of them.'
      )
    return {
      'train': train,
      'validation': validation,
      'trainval': trainval,
      'test': annotation.partitions[partition]['test'],
    }
