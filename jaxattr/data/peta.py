"""PETA (Deng et al., ACM MM 2014) from the user's manual download, in both forms.

Builder configs:

  * `mat0` ... `mat4` (default `mat0`): the DeepMAR / Rethinking_of_PAR form,
    `<root>/images/%05d.png` + `<root>/PETA.mat`, with one of the five random
    partitions of PETA.mat (9,500 / 1,900 / 7,600 images). Labels: the 35
    attributes of `selected_attribute`, in that order.
  * `vespa`: the split of Sarfraz et al. (VeSPA) that the paper used: the raw
    release `<root>/PETA dataset/<SubDataset>/archive/<images>` plus the lists
    `PETA_{train,val,test}_list.txt` (in `<root>/` or `<root>/vespa_peta/`). The
    lists name the images `PETA_dataset/...`; the folder on disk is found among
    `PETA_dataset` and `PETA dataset` (or given with the builder argument
    `peta_dir`). Labels: the 35 labels of each list line (same names and order
    as PETA.mat's first 35).

Images are stored as PNG (lossless): PNG sources are kept byte for byte; the
raw release's JPEG / BMP files are decoded and stored as PNG. `index` follows
the partition's (or list's) order; `image_id` is `images/%05d.png` (mat) or the
path as written in the list (vespa).
"""

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from jaxattr.data import manual, matlab
from jaxattr.data.common import DataError

# PETA.mat's first 35 attributes: the 35 evaluated by the protocol (and, in this
# order, the 35 labels of each VeSPA list line).
ATTRIBUTE_NAMES = (
  'personalLess30',
  'personalLess45',
  'personalLess60',
  'personalLarger60',
  'carryingBackpack',
  'carryingOther',
  'lowerBodyCasual',
  'upperBodyCasual',
  'lowerBodyFormal',
  'upperBodyFormal',
  'accessoryHat',
  'upperBodyJacket',
  'lowerBodyJeans',
  'footwearLeatherShoes',
  'upperBodyLogo',
  'hairLong',
  'personalMale',
  'carryingMessengerBag',
  'accessoryMuffler',
  'accessoryNothing',
  'carryingNothing',
  'upperBodyPlaid',
  'carryingPlasticBags',
  'footwearSandals',
  'footwearShoes',
  'lowerBodyShorts',
  'upperBodyShortSleeve',
  'lowerBodyShortSkirt',
  'footwearSneaker',
  'upperBodyThinStripes',
  'accessorySunglasses',
  'lowerBodyTrousers',
  'upperBodyTshirt',
  'upperBodyOther',
  'upperBodyVNeck',
)
NUM_PARTITIONS = 5
SPLITS = ('train', 'validation', 'test')
# PETA.mat's partition fields and the VeSPA list names, per split.
_MAT_SPLIT_FIELDS = {'train': 'train', 'validation': 'val', 'test': 'test'}
VESPA_LISTS = {
  'train': 'PETA_train_list.txt',
  'validation': 'PETA_val_list.txt',
  'test': 'PETA_test_list.txt',
}
VESPA_LIST_DIRS = ('', 'vespa_peta')
# First column of PETA.mat `data` is the image number; labels start at column 5 (1-based).
_FIRST_LABEL_COLUMN = 5
_NUM_DATA_COLUMNS = 109

HOMEPAGE = 'http://mmlab.ie.cuhk.edu.hk/projects/PETA.html'
SOURCE = f'PETA, {HOMEPAGE}'
_MAT_LAYOUT = """\
<manual_dir>/images/00001.png ... 19000.png
<manual_dir>/PETA.mat   (struct peta: data, attribute, selected_attribute, partion_attribute)"""
_VESPA_LAYOUT = """\
<manual_dir>/PETA dataset/<SubDataset>/archive/<images>   (the raw PETA release;
    the folder may also be named PETA_dataset, as in the lists)
<manual_dir>/PETA_train_list.txt, PETA_val_list.txt, PETA_test_list.txt
    (the VeSPA split lists; also accepted in <manual_dir>/vespa_peta/)"""


class PetaMat(NamedTuple):
  """The contents of PETA.mat that the builder uses."""

  attribute_names: list[str]  # The selected attributes, in selection order.
  labels: np.ndarray  # int8 [19000, 35], rows in the order of `data`.
  image_numbers: np.ndarray  # int64 [19000]: row -> image number (images/%05d.png).
  # Five partitions: split ('train' / 'validation' / 'test') -> 1-based image numbers.
  partitions: list[dict[str, np.ndarray]]


def read_peta_mat(path: Path) -> PetaMat:
  """Reads the DeepMAR-format PETA.mat.

  Args:
    path: the PETA.mat file.

  Returns:
    A `PetaMat` (attribute names, labels of the selected attributes, image
    numbers, the five partitions).

  Raises:
    DataError: naming the file and the variable if anything is malformed.
  """
  peta = matlab.load_variables(path, ['peta'])['peta']
  data = matlab.mat_matrix(
    matlab.mat_field(peta, 'data', path), path, 'peta.data', (None, _NUM_DATA_COLUMNS)
  )
  names = matlab.mat_strings(matlab.mat_field(peta, 'attribute', path), path, 'peta.attribute')
  num_labels = _NUM_DATA_COLUMNS - _FIRST_LABEL_COLUMN + 1
  if len(names) != num_labels:
    raise DataError(f'{path}: peta.attribute has {len(names)} names, expected {num_labels}.')
  selected = matlab.mat_ints(
    matlab.mat_field(peta, 'selected_attribute', path), path, 'peta.selected_attribute'
  )
  if selected.min() < _FIRST_LABEL_COLUMN or selected.max() > _NUM_DATA_COLUMNS:
    raise DataError(
      f'{path}: peta.selected_attribute holds column numbers {selected.min()}..'
      f'{selected.max()}; label columns are {_FIRST_LABEL_COLUMN}..{_NUM_DATA_COLUMNS}.'
    )
  labels = data[:, selected - 1]
  matlab.check_values(labels, (0, 1), path, 'peta.data (selected label columns)')
  partition_cell = matlab.mat_field(peta, 'partion_attribute', path)
  if not isinstance(partition_cell, np.ndarray) or partition_cell.dtype != object:
    raise DataError(f'{path}: peta.partion_attribute should be a cell of structs.')
  partitions = []
  for p, struct in enumerate(partition_cell.reshape(-1, order='F')):
    partitions.append(
      {
        split: matlab.mat_ints(
          matlab.mat_field(struct, field, path),
          path,
          f'peta.partion_attribute{{{p + 1}}}.{field}',
        )
        for split, field in _MAT_SPLIT_FIELDS.items()
      }
    )
  return PetaMat(
    attribute_names=[names[c - _FIRST_LABEL_COLUMN] for c in selected],
    labels=labels.astype(np.int8),
    image_numbers=data[:, 0].astype(np.int64),
    partitions=partitions,
  )


class VespaRow(NamedTuple):
  """One line of a VeSPA list."""

  path: str  # As written, relative to the root, e.g. 'PETA_dataset/CUHK/archive/1.png'.
  labels: np.ndarray  # int8 [35].


def read_vespa_list(path: Path, num_labels: int = len(ATTRIBUTE_NAMES)) -> list[VespaRow]:
  """Reads one VeSPA list (`<path> <labels 0/1, comma-separated, trailing comma>`).

  Args:
    path: e.g. PETA_train_list.txt.
    num_labels: labels per line.

  Returns:
    The rows in file order (blank lines are ignored).

  Raises:
    DataError: naming the file and line if a line is malformed.
  """
  try:
    with open(path, encoding='utf-8') as f:
      lines = f.read().splitlines()
  except FileNotFoundError as e:
    raise DataError(f'{path}: list file is missing.') from e
  rows = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    # The image path may contain spaces ('PETA dataset/...'); the labels do not.
    parts = line.rstrip().rsplit(None, 1)
    if len(parts) != 2:
      raise DataError(f'{path}:{number}: expected "<image path> <labels>", got {line!r}.')
    image_path, label_text = parts
    values = label_text.split(',')
    if values and values[-1] == '':
      values = values[:-1]  # The official lists end every line with a comma.
    if len(values) != num_labels:
      raise DataError(f'{path}:{number}: {len(values)} labels, expected {num_labels}.')
    if any(v not in ('0', '1') for v in values):
      raise DataError(f'{path}:{number}: labels must be 0 or 1, got {label_text!r}.')
    rows.append(VespaRow(image_path, np.array([int(v) for v in values], dtype=np.int8)))
  return rows


@dataclasses.dataclass(eq=False)
class PetaConfig(tfds.core.BuilderConfig):
  """Which form of PETA, and which partition (mat form).

  Attributes:
    form: 'mat' (PETA.mat + images/) or 'vespa' (raw release + VeSPA lists).
    partition: 0..4, the PETA.mat partition (mat form).
    list_prefix: first path component the VeSPA lists use for the raw release.
    image_dirs: folder names under the root tried, in order, for that component.
  """

  form: str = 'mat'
  partition: int = 0
  list_prefix: str = 'PETA_dataset'
  image_dirs: tuple[str, ...] = ('PETA_dataset', 'PETA dataset')


def _configs() -> list[PetaConfig]:
  configs = [
    PetaConfig(
      name=f'mat{p}',
      description=f'PETA.mat partition {p} (DeepMAR / Rethinking_of_PAR form).',
      form='mat',
      partition=p,
    )
    for p in range(NUM_PARTITIONS)
  ]
  configs.append(
    PetaConfig(
      name='vespa',
      description='Raw PETA release with the VeSPA split lists (the paper split).',
      form='vespa',
    )
  )
  return configs


class Peta(manual.ManualDirBuilder):
  """PETA, 35 attributes; PETA.mat partitions or the VeSPA split."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'PETA.mat partitions 0-4 and the VeSPA split.'}
  BUILDER_CONFIGS = _configs()
  DEFAULT_BUILDER_CONFIG_NAME = 'mat0'
  DISPLAY_NAME = 'PETA'
  SOURCE = SOURCE
  LAYOUT = f'Either (configs mat0..mat4)\n{_MAT_LAYOUT}\nor (config vespa)\n{_VESPA_LAYOUT}'
  ATTRIBUTE_NAMES = ATTRIBUTE_NAMES
  HOMEPAGE = HOMEPAGE
  CITATION = (
    '@inproceedings{deng2014pedestrian, title={Pedestrian Attribute Recognition '
    'At Far Distance}, author={Deng, Yubin and Luo, Ping and Loy, Chen Change and '
    'Tang, Xiaoou}, booktitle={ACM Multimedia}, year={2014}}'
  )
  ENCODING = 'png'

  def __init__(self, *, peta_dir: str | None = None, **kwargs: Any):
    """Creates the builder.

    Args:
      peta_dir: vespa config only: the folder (relative to the manual dir, or
        absolute) that replaces the lists' `PETA_dataset` prefix. Default: the
        first of the config's `image_dirs` that exists.
      **kwargs: see `ManualDirBuilder` (skip_bad_images, data_dir, config, ...).
    """
    self._peta_dir = peta_dir
    super().__init__(**kwargs)

  def _display_name(self) -> str:
    form = 'PETA.mat form' if self.builder_config.form == 'mat' else 'VeSPA lists form'
    return f'PETA ({form}, config {self.builder_config.name})'

  def _layout(self) -> str:
    return _MAT_LAYOUT if self.builder_config.form == 'mat' else _VESPA_LAYOUT

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    root = self._manual_root(dl_manager)
    if self.builder_config.form == 'mat':
      examples = self._mat_examples(root)
    else:
      examples = self._vespa_examples(root)
    self._require_images(root, [path for rows in examples.values() for path, _, _ in rows])
    return {split: self._generate_examples(split, rows) for split, rows in examples.items()}

  def _mat_examples(self, root: Path) -> dict[str, list[tuple[Path, str, np.ndarray]]]:
    # The names checked are the 35 of the PETA protocol.
    mat_path, peta = self._read_annotation(
      root, 'PETA.mat', 'images', 'folder of 00001.png ... 19000.png', read_peta_mat
    )
    partition = self.builder_config.partition
    if partition >= len(peta.partitions):
      raise DataError(f'{mat_path}: has {len(peta.partitions)} partitions, not {partition + 1}.')
    row_of = {int(n): r for r, n in enumerate(peta.image_numbers)}
    examples = {}
    for split in SPLITS:
      rows = []
      for number in peta.partitions[partition][split]:
        if int(number) not in row_of:
          raise DataError(
            f'{mat_path}: partition {partition} {split} names image {number}, which is '
            'not in peta.data.'
          )
        relative = f'images/{int(number):05d}.png'
        rows.append((root / relative, relative, peta.labels[row_of[int(number)]]))
      examples[split] = rows
    return examples

  def _vespa_examples(self, root: Path) -> dict[str, list[tuple[Path, str, np.ndarray]]]:
    config = self.builder_config
    missing = []
    lists = {}
    for split, name in VESPA_LISTS.items():
      found = manual.find_first(root, [str(Path(d) / name) for d in VESPA_LIST_DIRS])
      if found is None:
        missing.append(f'{name} (looked in {root} and {root / "vespa_peta"})')
      lists[split] = found
    if self._peta_dir is not None:
      image_dir = root / self._peta_dir
      if not image_dir.is_dir():
        missing.append(f'{image_dir} (raw PETA release, given as peta_dir)')
    else:
      image_dir = manual.find_first(root, config.image_dirs)
      if image_dir is None:
        missing.append(
          'the raw PETA release folder (looked for '
          + ', '.join(str(root / d) for d in config.image_dirs)
          + ')'
        )
    if missing:
      raise self._error(root, missing)

    prefix = config.list_prefix.rstrip('/') + '/'
    examples = {}
    for split, list_path in lists.items():
      rows = []
      for row in read_vespa_list(list_path):
        if row.path.startswith(prefix):
          path = image_dir / row.path[len(prefix) :]
        else:
          path = root / row.path
        rows.append((path, row.path, row.labels))
      examples[split] = rows
    return examples

  def _generate_examples(self, split: str, rows: list[tuple[Path, str, np.ndarray]]):
    return self._stored_examples(split, rows)
