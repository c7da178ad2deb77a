"""The peers' dataset files: Rethinking_of_PAR's `dataset_all.pkl` and `dataset_zs_run*.pkl`.

Most PyTorch person-attribute code since 2021 (Rethinking_of_PAR and the methods
built on it) reads PETA, PA-100K, RAP v1 and RAP v2 from one pickled `EasyDict`
per dataset, written by that project's `format_{peta,pa100k,rap,rap2}.py`:

  description     'peta' / 'pa100k' / 'rap' / 'rap2'
  root            the image folder on the author's machine (never read here)
  image_name      list of N file names in that folder
  label           N x A array: 1 / 0, and 2 = uncertain (RAP)
  attr_name       A names
  label_idx.eval  the evaluated columns, in the paper's group order (head, upper
                  body, lower body, feet, bags, age, gender, other); absent from
                  some zero-shot files, whose columns are then all evaluated
  partition       `train`, `val`, `trainval`, `test`: 0-based rows, either a list
                  of five partitions (`dataset_all.pkl` of PETA, RAP v1, RAP v2)
                  or one array (PA-100K; the zero-shot files); RAP v1's has only
                  `trainval` and `test`
  weight_*        positive ratios (not used: jaxattr computes its own)

The zero-shot files (`dataset_zs_run<k>.pkl`, PETAzs and RAPzs) split by
person, so no identity is in both train and test, which the classic random
partitions do not guarantee.

Loading a pickle runs whatever callables it names, so `load_peers_file` reads
it with `RestrictedUnpickler`, which admits only the classes these files hold
and refuses any other by name before anything of it runs. `easydict` need not
be installed: its class is read as `EasyDict` below.

One builder per dataset (`peers_peta`, `peers_pa100k`, `peers_rap1`,
`peers_rap2`), so two datasets never share a prepared folder. Builder configs:
`part<p>` (`dataset_all.pkl`, partition p; PA-100K's file holds one) and
`zs<k>` (`dataset_zs_run<k>.pkl`), each also with the suffixes `_allattr`
(every column of the file, in file order, instead of `label_idx.eval`) and
`_unknown` (uncertain labels become -1, unknown, instead of 0 as the peers
treat them), e.g. `part2_allattr_unknown`.

Splits: `train`, `validation` (the file's `val`; for RAP v1, which has none,
held out of `trainval` by `rap1.holdout_validation`), `trainval` (what the
peers train on) and `test`. Images are read from `<manual_dir>/<the last folder
of root>` (`images/` for PETA, `data/` for PA-100K, `RAP_dataset/` for RAP), or
`<manual_dir>/images/`; `image_id` is `<that folder>/<image_name>`.
"""

import builtins
import codecs
import dataclasses
import importlib
import pickle
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any, ClassVar, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from jaxattr.data import common, custom, images, manual, rap1
from jaxattr.data.common import DataError

ALL_FILE = 'dataset_all.pkl'
NUM_PARTITIONS = 5
NUM_ZERO_SHOT_RUNS = 5
SPLITS = ('train', 'validation', 'trainval', 'test')
# The folder tried after the last component of the file's `root`.
DEFAULT_IMAGE_DIR = 'images'
_UNCERTAIN = 2
HOMEPAGE = 'https://github.com/valencebond/Rethinking_of_PAR'


def zero_shot_file(run: int) -> str:
  """The file name of zero-shot run `run`."""
  return f'dataset_zs_run{run}.pkl'


def _layout(image_dir: str) -> str:
  return (
    f"<manual_dir>/{ALL_FILE} or dataset_zs_run<k>.pkl   (Rethinking_of_PAR's format_*.py)\n"
    f'<manual_dir>/{image_dir}/<the image_name entries of the file>'
  )


class EasyDict(dict):
  """Stands in for `easydict.EasyDict` when a peers' file is read.

  The files' values are its items (what the peers' code reads); the copy of them
  that EasyDict also keeps as attributes is restored by unpickling and unused.
  """


def _latin1_encode(text: str, encoding: str = 'latin1') -> bytes:
  """`_codecs.encode` as protocol-2 pickles use it for bytes, limited to latin-1."""
  if encoding not in ('latin1', 'latin-1'):
    raise pickle.UnpicklingError(f'_codecs.encode with encoding {encoding!r}')
  return codecs.encode(text, 'latin1')


def _numpy_core(module: str) -> Any:
  """numpy's private `_core` (numpy 2) or `core` (numpy 1) submodule `module`."""
  try:
    return importlib.import_module(f'numpy._core.{module}')
  except ImportError:
    return importlib.import_module(f'numpy.core.{module}')


def _admitted() -> dict[tuple[str, str], Any]:
  """(module, name) as a pickle names it -> the object it loads as."""
  multiarray, numeric = _numpy_core('multiarray'), _numpy_core('numeric')
  admitted: dict[tuple[str, str], Any] = {
    ('easydict', 'EasyDict'): EasyDict,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('builtins', 'range'): range,
    ('__builtin__', 'xrange'): range,  # How protocol 2 names `range`.
    ('_codecs', 'encode'): _latin1_encode,  # How protocol 2 stores bytes.
  }
  for core in ('numpy.core', 'numpy._core'):  # Files written with numpy 1 or numpy 2.
    admitted[(f'{core}.multiarray', '_reconstruct')] = multiarray._reconstruct
    admitted[(f'{core}.multiarray', 'scalar')] = multiarray.scalar
    admitted[(f'{core}.numeric', '_frombuffer')] = numeric._frombuffer
  for name in ('list', 'dict', 'tuple', 'set', 'frozenset'):
    admitted[('builtins', name)] = getattr(builtins, name)
    admitted[('__builtin__', name)] = admitted[('builtins', name)]
  return admitted


class RestrictedUnpickler(pickle.Unpickler):
  """An unpickler that loads only the classes of the peers' files.

  A pickle names each callable it calls (`find_class`); anything but EasyDict,
  numpy arrays, dtypes and scalars, `range` and builtin containers is refused
  before it is called, so no code from the file runs.
  """

  def __init__(self, file: Any, path: Path):
    super().__init__(file, encoding='latin1')  # numpy's advice for Python 2 pickles.
    self._path = path
    self._admitted = _admitted()

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self._admitted[(module, name)]
    except KeyError:
      raise DataError(
        f"{self._path}: refused to load {module}.{name}: a peers' dataset file holds only "
        'EasyDict, numpy arrays and builtin containers, and loading other classes can run '
        'code.'
      ) from None


class PeersFile(NamedTuple):
  """A peers' dataset file, checked."""

  description: str  # '' if the file has none.
  root: str  # The image folder on the author's machine.
  image_names: list[str]
  labels: np.ndarray  # int64 [N, A]: 0 / 1 / 2 (uncertain).
  attribute_names: list[str]
  eval_columns: list[int] | None  # label_idx.eval; None if absent.
  # split ('train', 'val', 'trainval', 'test') -> one array per partition.
  partitions: dict[str, list[np.ndarray]]


def _rows(value: Any, path: Path, what: str, num_rows: int) -> np.ndarray:
  """A vector of 0-based rows, checked."""
  array = np.asarray(value)
  if array.ndim != 1 or array.dtype.kind not in 'iuf':
    raise DataError(
      f'{path}: {what} should be a vector of row numbers, got {array.dtype} {array.shape}.'
    )
  if array.dtype.kind == 'f' and not np.all(np.mod(array, 1) == 0):
    raise DataError(f'{path}: {what} should hold whole row numbers.')
  rows = array.astype(np.int64)
  if rows.size and (rows.min() < 0 or rows.max() >= num_rows):
    raise DataError(f'{path}: {what} must hold 0-based rows 0..{num_rows - 1}.')
  return rows


def _field(data: dict, key: str, path: Path) -> Any:
  if key not in data:
    raise DataError(f'{path}: no {key!r} entry (entries: {sorted(map(str, data))}).')
  return data[key]


def load_peers_file(path: Path) -> PeersFile:
  """Reads and checks a peers' dataset file through `RestrictedUnpickler`.

  Args:
    path: a `dataset_all.pkl` or `dataset_zs_run<k>.pkl`.

  Returns:
    A `PeersFile`.

  Raises:
    DataError: naming the file, if it is missing, names a class that is not
      admitted, or does not have the structure above.
  """
  try:
    with open(path, 'rb') as f:
      data = RestrictedUnpickler(f, path).load()
  except FileNotFoundError as e:
    raise DataError(f"{path}: the peers' dataset file is missing.") from e
  except DataError:
    raise
  except Exception as e:  # noqa: BLE001  (pickle raises many kinds on a damaged file)
    raise DataError(f'{path}: cannot read the pickle ({type(e).__name__}: {e}).') from e
  if not isinstance(data, dict):
    raise DataError(f'{path}: holds a {type(data).__name__}, expected an EasyDict.')

  image_names = [str(n) for n in _field(data, 'image_name', path)]
  attribute_names = [str(n) for n in _field(data, 'attr_name', path)]
  labels = np.asarray(_field(data, 'label', path))
  if labels.shape != (len(image_names), len(attribute_names)) or labels.dtype.kind not in 'iufb':
    raise DataError(
      f'{path}: label is {labels.dtype} {labels.shape}, expected numbers of shape '
      f'({len(image_names)} images, {len(attribute_names)} attributes).'
    )
  bad = ~np.isin(labels, (0, 1, _UNCERTAIN))
  if bad.any():
    row, col = (int(i) for i in np.argwhere(bad)[0])
    raise DataError(
      f'{path}: label[{row}, {col}] is {labels[row, col]}; allowed values are 0, 1, 2.'
    )

  eval_columns = None
  label_idx = data.get('label_idx')
  if isinstance(label_idx, dict) and 'eval' in label_idx:
    eval_columns = [int(c) for c in label_idx['eval']]
    if not eval_columns or min(eval_columns) < 0 or max(eval_columns) >= len(attribute_names):
      raise DataError(f'{path}: label_idx.eval must hold columns 0..{len(attribute_names) - 1}.')
    if len(set(eval_columns)) != len(eval_columns):
      raise DataError(f'{path}: label_idx.eval names a column twice.')

  partition = _field(data, 'partition', path)
  if not isinstance(partition, dict) or 'test' not in partition:
    raise DataError(f'{path}: partition should be an EasyDict with at least a test entry.')
  partitions = {}
  for split, value in partition.items():
    if split not in ('train', 'val', 'trainval', 'test'):
      continue
    parts = value if isinstance(value, list | tuple) else [value]
    partitions[split] = [
      _rows(p, path, f'partition.{split}[{i}]', len(image_names)) for i, p in enumerate(parts)
    ]
  counts = {split: len(parts) for split, parts in partitions.items()}
  if len(set(counts.values())) != 1:
    raise DataError(
      f'{path}: the partition entries hold different numbers of partitions ({counts}).'
    )
  if not ('trainval' in partitions or {'train', 'val'} <= partitions.keys()):
    raise DataError(f'{path}: partition has neither trainval nor train and val.')
  return PeersFile(
    description=str(data.get('description', '')),
    root=str(data.get('root', '')),
    image_names=image_names,
    labels=labels.astype(np.int64),
    attribute_names=attribute_names,
    eval_columns=eval_columns,
    partitions=partitions,
  )


def split_rows(peers: PeersFile, partition: int, path: Path) -> dict[str, np.ndarray]:
  """The rows of each of `SPLITS` in one partition of the file.

  Args:
    peers: the file.
    partition: which partition (0 for a file that holds one).
    path: the file (for error messages).

  Returns:
    split -> 0-based rows, in the file's order.
  """
  available = len(peers.partitions['test'])
  if partition >= available:
    raise DataError(
      f'{path}: holds {available} partition(s); partition {partition} does not exist.'
    )
  parts = {k: v[partition] for k, v in peers.partitions.items()}
  if 'train' in parts and 'val' in parts:
    train, validation = parts['train'], parts['val']
    trainval = parts.get('trainval', np.concatenate([train, validation]))
  else:  # RAP v1: no validation, held out of trainval as rap1.py does.
    trainval = parts['trainval']
    train, validation = rap1.holdout_validation(trainval, peers.image_names)
  rows = {'train': train, 'validation': validation, 'trainval': trainval, 'test': parts['test']}
  empty = [split for split, r in rows.items() if not r.size]
  if empty:
    raise DataError(f'{path}: partition {partition} leaves the split(s) {empty} empty.')
  return rows


def selected_columns(peers: PeersFile, evaluated_only: bool) -> list[int]:
  """The columns the builder keeps: `label_idx.eval` (or all if absent), or all."""
  if evaluated_only and peers.eval_columns is not None:
    return list(peers.eval_columns)
  return list(range(len(peers.attribute_names)))


def canonical_labels(labels: np.ndarray, uncertain: str) -> np.ndarray:
  """0 / 1 / 2 -> int8 1 / 0 and 2 -> 0 ('negative', the peers) or -1 ('unknown')."""
  value = {'negative': 0, 'unknown': -1}[uncertain]
  return np.where(labels == _UNCERTAIN, value, labels).astype(np.int8)


@dataclasses.dataclass(eq=False)
class PeersConfig(tfds.core.BuilderConfig):
  """Which file, partition, attributes and treatment of uncertain labels.

  Attributes:
    file: the file name in the manual dir.
    partition: which partition of a five-partition file (0 otherwise).
    evaluated_only: keep `label_idx.eval` (True, the peers' scoring) or every column.
    uncertain: 'negative' (2 -> 0, as the peers) or 'unknown' (2 -> -1).
  """

  file: str = ALL_FILE
  partition: int = 0
  evaluated_only: bool = True
  uncertain: str = 'negative'


def builder_configs(partitions: int, zero_shot_runs: int) -> list[PeersConfig]:
  """Every config: `part<p>` and `zs<k>`, each with `_allattr` and `_unknown` variants."""
  bases = [(f'part{p}', ALL_FILE, p) for p in range(partitions)]
  bases += [(f'zs{k}', zero_shot_file(k), 0) for k in range(zero_shot_runs)]
  configs = []
  for base, file, partition in bases:
    for evaluated_only in (True, False):
      for uncertain in ('negative', 'unknown'):
        name = base + ('' if evaluated_only else '_allattr')
        name += '' if uncertain == 'negative' else '_unknown'
        attributes = 'label_idx.eval' if evaluated_only else 'every attribute'
        partition_text = f', partition {partition}' if file == ALL_FILE else ''
        configs.append(
          PeersConfig(
            name=name,
            description=f'{file}{partition_text}, {attributes}, uncertain as {uncertain}.',
            file=file,
            partition=partition,
            evaluated_only=evaluated_only,
            uncertain=uncertain,
          )
        )
  return configs


class PeersBuilder(manual.ManualDirBuilder, skip_registration=True):
  """A dataset from a peers' dataset file; one subclass per dataset.

  Subclasses set `DESCRIPTION` (the file's `description`), `IMAGE_DIR` (the
  image folder of the peers' layout), `ENCODING` and `BUILDER_CONFIGS`.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Rethinking_of_PAR dataset files, five-partition and zero-shot.'}
  DEFAULT_BUILDER_CONFIG_NAME = 'part0'
  NAMES_FROM_DATA = True
  DESCRIPTION: ClassVar[str] = ''
  IMAGE_DIR: ClassVar[str] = DEFAULT_IMAGE_DIR
  ENCODING: ClassVar[str] = 'png'

  def __init__(self, **kwargs: Any):
    """Creates the builder; see `ManualDirBuilder` for the arguments."""
    self._file: tuple[Path, PeersFile] | None = None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return common.make_info(
      self,
      self._attribute_names(),
      description=__doc__,
      homepage=HOMEPAGE,
      encoding_format=self.ENCODING,
    )

  def _load(self, root: Path) -> PeersFile:
    """The checked file under `root` (read once per builder)."""
    path = root / self.builder_config.file
    if self._file is None or self._file[0] != path:
      if not root.is_dir() or not any(root.iterdir()):
        raise self._error(root, [f'{root} (the folder does not exist or is empty)'])
      if not path.is_file():
        raise self._error(root, [f"{path} (the peers' dataset file)"])
      peers = load_peers_file(path)
      if peers.description and peers.description != self.DESCRIPTION:
        raise DataError(
          f'{path}: is a {peers.description!r} file; the {self.name} builder reads '
          f'{self.DESCRIPTION!r} files.'
        )
      self._file = (path, peers)
    return self._file[1]

  def _read_attribute_names(self, root: Path) -> list[str]:
    peers = self._load(root)
    return [
      peers.attribute_names[c] for c in selected_columns(peers, self.builder_config.evaluated_only)
    ]

  def _check_prepared(self, root: Path) -> None:
    path = root / self.builder_config.file
    prepared = self.info.metadata.get('file_sha256')
    if self._read_attribute_names(root) != self._attribute_names() or (
      prepared is not None and prepared != custom.fingerprint([path])
    ):
      raise DataError(
        f'{path}: the file changed since the dataset at {self.data_path} was prepared from '
        'it. Delete that folder to rebuild, or use another --config.data.data_dir.'
      )

  def _image_dir(self, root: Path, peers: PeersFile) -> str:
    """The image folder under `root`: the last folder of `peers.root`, or `IMAGE_DIR`."""
    candidates = [PurePath(peers.root.replace('\\', '/')).name, self.IMAGE_DIR, DEFAULT_IMAGE_DIR]
    for name in dict.fromkeys(c for c in candidates if c):
      if (root / name).is_dir():
        return name
    raise self._error(root, [f'{root / self.IMAGE_DIR} (folder of images)'])

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    root = self._manual_root(dl_manager)
    peers = self._load(root)
    path = root / self.builder_config.file
    names = self._read_attribute_names(root)
    if names != self._attribute_names():
      raise DataError(
        f'{path}: attributes {names} differ from the ones this builder was set up with '
        f'({self._attribute_names()}).'
      )
    self.info.metadata['file_sha256'] = custom.fingerprint([path])
    rows = split_rows(peers, self.builder_config.partition, path)
    columns = selected_columns(peers, self.builder_config.evaluated_only)
    labels = canonical_labels(peers.labels[:, columns], self.builder_config.uncertain)
    image_dir = self._image_dir(root, peers)
    self._require_images(
      root, [root / image_dir / peers.image_names[r] for split in rows.values() for r in split]
    )
    return {
      split: self._generate_examples(root, split, image_dir, peers.image_names, labels, r)
      for split, r in rows.items()
    }

  def _generate_examples(
    self,
    root: Path,
    split: str,
    image_dir: str,
    image_names: Sequence[str],
    labels: np.ndarray,
    rows: np.ndarray,
  ):
    index = 0
    for row in rows:
      image_id = f'{image_dir}/{image_names[row]}'
      loaded = self._read_image(split, root / image_id, image_id)
      if loaded is None:
        continue
      yield (
        index,
        {
          'image': images.stored_bytes(*loaded, self.ENCODING),
          'labels': labels[row],
          'index': index,
          'image_id': image_id,
        },
      )
      index += 1
    self._report_bad_images(split, index)


class PeersPeta(PeersBuilder):
  """PETA from the peers' files: 35 evaluated attributes; PETAzs."""

  BUILDER_CONFIGS = builder_configs(NUM_PARTITIONS, NUM_ZERO_SHOT_RUNS)
  DISPLAY_NAME = "PETA (the peers' dataset file)"
  SOURCE = f"Rethinking_of_PAR's format_peta.py over PETA, {HOMEPAGE}"
  DESCRIPTION = 'peta'
  IMAGE_DIR = 'images'
  LAYOUT = _layout(IMAGE_DIR)


class PeersPa100k(PeersBuilder):
  """PA-100K from the peers' file: 26 attributes, one partition."""

  BUILDER_CONFIGS = builder_configs(1, 0)
  DISPLAY_NAME = "PA-100K (the peers' dataset file)"
  SOURCE = f"Rethinking_of_PAR's format_pa100k.py over PA-100K, {HOMEPAGE}"
  DESCRIPTION = 'pa100k'
  IMAGE_DIR = 'data'
  LAYOUT = _layout(IMAGE_DIR)
  ENCODING = 'jpeg'


class PeersRap1(PeersBuilder):
  """RAP v1 from the peers' file: 51 evaluated attributes, trainval / test only."""

  BUILDER_CONFIGS = builder_configs(NUM_PARTITIONS, 0)
  DISPLAY_NAME = "RAP v1 (the peers' dataset file)"
  SOURCE = f"Rethinking_of_PAR's format_rap.py over RAP v1, {HOMEPAGE}"
  DESCRIPTION = 'rap'
  IMAGE_DIR = 'RAP_dataset'
  LAYOUT = _layout(IMAGE_DIR)


class PeersRap2(PeersBuilder):
  """RAP v2 from the peers' files: 54 evaluated attributes (53 in RAPzs)."""

  BUILDER_CONFIGS = builder_configs(NUM_PARTITIONS, NUM_ZERO_SHOT_RUNS)
  DISPLAY_NAME = "RAP v2 (the peers' dataset file)"
  SOURCE = f"Rethinking_of_PAR's format_rap2.py over RAP v2, {HOMEPAGE}"
  DESCRIPTION = 'rap2'
  IMAGE_DIR = 'RAP_dataset'
  LAYOUT = _layout(IMAGE_DIR)
