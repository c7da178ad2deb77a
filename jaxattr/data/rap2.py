"""RAP v2 (Li et al., TIP 2019) from the user's manual download.

`<root>/RAP_dataset/<image names>` and `<root>/RAP_annotation/RAP_annotation.mat`
(struct `RAP_annotation`: `name` 84,928 names, `attribute` 152 names, `data`
84,928 x 152 labels with 2 = uncertain, `selected_attribute` 54 1-based columns,
`partition_attribute` 5 partitions of 1-based `train_index` / `val_index` /
`test_index`). Builder configs `partition0` ... `partition4` (default
`partition0`); the 54 selected attributes in the file's selection order, labels
1 / 0 and 2 -> -1 (unknown). `index` follows the partition's order; `image_id`
is `RAP_dataset/<name>`.

The attribute names are those of the user's RAP_annotation.mat, so they are
read from it (see `manual.ManualDirBuilder`, NAMES_FROM_DATA): build with the
manual dir given to `download_and_prepare` (or to the constructor).

Images are stored as PNG, the format of the release (byte for byte when the
source is an RGB PNG): re-encoding these small crops as JPEG would lose detail
for no gain.
"""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from jaxattr.data import manual, matlab
from jaxattr.data.common import DataError

HOMEPAGE = 'http://www.rapdataset.com/'
SOURCE = f'RAP (Richly Annotated Pedestrian) v2, {HOMEPAGE}'
NUM_PARTITIONS = 5
ANNOTATION = 'RAP_annotation/RAP_annotation.mat'
IMAGE_DIR = 'RAP_dataset'
# Split -> field of a partition struct.
_PARTITION_FIELDS = {'train': 'train_index', 'validation': 'val_index', 'test': 'test_index'}
# 2 in `data` means the annotator was not sure.
_UNCERTAIN = 2

_LAYOUT = """\
<manual_dir>/RAP_dataset/<image names from RAP_annotation.name>
<manual_dir>/RAP_annotation/RAP_annotation.mat
    (struct RAP_annotation: name, attribute, data, selected_attribute, partition_attribute)"""


class Rap2Annotation(NamedTuple):
  """The contents of RAP_annotation.mat that the builder uses."""

  attribute_names: list[str]  # The selected attributes, in selection order.
  image_names: list[str]  # Row -> file name under RAP_dataset/.
  labels: np.ndarray  # int8 [rows, selected]: 1 / 0 / -1 (uncertain).
  # Partitions: split ('train' / 'validation' / 'test') -> 0-based rows.
  partitions: list[dict[str, np.ndarray]]


def read_rap2_mat(path: Path) -> Rap2Annotation:
  """Reads RAP v2's RAP_annotation.mat.

  Args:
    path: the RAP_annotation.mat file.

  Returns:
    A `Rap2Annotation`; partition indices converted to 0-based rows.

  Raises:
    DataError: naming the file and the field if anything is malformed.
  """
  rap = matlab.load_variables(path, ['RAP_annotation'])['RAP_annotation']
  names = matlab.mat_strings(matlab.mat_field(rap, 'name', path), path, 'RAP_annotation.name')
  attributes = matlab.mat_strings(
    matlab.mat_field(rap, 'attribute', path), path, 'RAP_annotation.attribute'
  )
  data = matlab.mat_matrix(
    matlab.mat_field(rap, 'data', path),
    path,
    'RAP_annotation.data',
    (len(names), len(attributes)),
  )
  selected = matlab.mat_ints(
    matlab.mat_field(rap, 'selected_attribute', path), path, 'RAP_annotation.selected_attribute'
  )
  if selected.size == 0 or selected.min() < 1 or selected.max() > len(attributes):
    raise DataError(
      f'{path}: RAP_annotation.selected_attribute must hold 1-based attribute numbers '
      f'1..{len(attributes)}.'
    )
  labels = data[:, selected - 1]
  matlab.check_values(labels, (0, 1, _UNCERTAIN), path, 'RAP_annotation.data (selected columns)')
  labels = np.where(labels == _UNCERTAIN, -1, labels).astype(np.int8)

  partition_cell = matlab.mat_field(rap, 'partition_attribute', path)
  if not isinstance(partition_cell, np.ndarray) or partition_cell.dtype != object:
    raise DataError(f'{path}: RAP_annotation.partition_attribute should be a cell of structs.')
  partitions = []
  for p, struct in enumerate(partition_cell.reshape(-1, order='F')):
    partition = {}
    for split, field in _PARTITION_FIELDS.items():
      what = f'RAP_annotation.partition_attribute{{{p + 1}}}.{field}'
      rows = matlab.mat_ints(matlab.mat_field(struct, field, path), path, what)
      if rows.size and (rows.min() < 1 or rows.max() > len(names)):
        raise DataError(f'{path}: {what} must hold 1-based rows 1..{len(names)}.')
      partition[split] = rows - 1
    partitions.append(partition)
  return Rap2Annotation(
    attribute_names=[attributes[c - 1] for c in selected],
    image_names=names,
    labels=labels,
    partitions=partitions,
  )


@dataclasses.dataclass(eq=False)
class Rap2Config(tfds.core.BuilderConfig):
  """Which of the five official partitions.

  Attributes:
    partition: 0..4.
  """

  partition: int = 0


class RapBuilder(manual.ManualDirBuilder, skip_registration=True):
  """The builder RAP v1 and v2 share; a subclass states its reader and metadata.

  Both releases keep their images as `RAP_dataset/<name>` (stored as PNG), their
  labels in RAP_annotation/RAP_annotation.mat and five partitions (the builder
  configs). A subclass sets `READ_MAT` (the annotation file -> an annotation with
  `attribute_names`, `image_names`, `labels` and `partitions`) and overrides
  `_split_rows` where its splits are not the partition's own.
  """

  BUILDER_CONFIGS = [
    Rap2Config(name=f'partition{p}', description=f'Official partition {p}.', partition=p)
    for p in range(NUM_PARTITIONS)
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'partition0'
  NAMES_FROM_DATA = True
  HOMEPAGE = HOMEPAGE
  ENCODING = 'png'
  READ_MAT: Callable[[Path], Any]

  def __init__(self, **kwargs: Any):
    """Creates the builder; see `ManualDirBuilder` for the arguments."""
    self._annotation: tuple[Path, Any] | None = None
    super().__init__(**kwargs)

  def _load(self, root: Path) -> Any:
    """The parsed annotation under `root` (parsed once per builder)."""
    mat_path = root / ANNOTATION
    if self._annotation is None or self._annotation[0] != mat_path:
      if not root.is_dir() or not any(root.iterdir()):
        raise self._error(root, [f'{root} (the folder does not exist or is empty)'])
      self._require_layout(
        root, files={mat_path: 'annotation file'}, folders={root / IMAGE_DIR: 'folder of images'}
      )
      self._annotation = (mat_path, self.READ_MAT(mat_path))
    return self._annotation[1]

  def _read_attribute_names(self, root: Path) -> list[str]:
    return self._load(root).attribute_names

  def _split_rows(self, root: Path, annotation: Any, partition: int) -> dict[str, np.ndarray]:
    """Split -> 0-based rows of partition `partition`: the ones the file states."""
    del root  # Only a subclass that checks the rows names the file.
    return annotation.partitions[partition]

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    root = self._manual_root(dl_manager)
    annotation = self._load(root)
    self._check_names(root / ANNOTATION, annotation.attribute_names)
    partition = self.builder_config.partition
    if partition >= len(annotation.partitions):
      raise DataError(
        f'{root / ANNOTATION}: has {len(annotation.partitions)} partitions, not {partition + 1}.'
      )
    rows = self._split_rows(root, annotation, partition)
    self._require_images(
      root,
      [root / IMAGE_DIR / annotation.image_names[r] for split in rows.values() for r in split],
    )
    return {
      split: self._generate_examples(root, split, annotation, split_rows)
      for split, split_rows in rows.items()
    }

  def _generate_examples(self, root: Path, split: str, annotation: Any, rows: np.ndarray):
    image_ids = (f'{IMAGE_DIR}/{annotation.image_names[row]}' for row in rows)
    examples = (
      (root / image_id, image_id, annotation.labels[row])
      for image_id, row in zip(image_ids, rows, strict=True)
    )
    return self._stored_examples(split, examples)


class Rap2(RapBuilder):
  """RAP v2, the 54 selected attributes, one of five partitions."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Partitions 0-4, 54 selected attributes, 2 -> unknown.'}
  DISPLAY_NAME = 'RAP v2'
  SOURCE = SOURCE
  LAYOUT = _LAYOUT
  CITATION = (
    '@article{li2019richly, title={A Richly Annotated Pedestrian Dataset for Person '
    'Retrieval in Real Surveillance Scenarios}, author={Li, Dangwei and Zhang, Zhang '
    'and Chen, Xiaotang and Huang, Kaiqi}, journal={IEEE TIP}, year={2019}}'
  )
  READ_MAT = staticmethod(read_rap2_mat)
