"""Tests of the builders over the peers' dataset files (Rethinking_of_PAR's pickles).

The fixtures are written as Rethinking_of_PAR's `format_{peta,pa100k,rap,rap2}.py`
write them: a pickled `easydict.EasyDict` (a stand-in class of that module and
name, registered only while pickling), five-partition lists or zero-shot arrays,
uncertain labels (2) and a group-ordered `label_idx.eval`. Reading happens with
`easydict` unimportable.
"""

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxattr.data import peers, rap1
from jaxattr.data.common import DataError
from tests.conftest import REPO, run_tool, sorted_examples

NUM_IMAGES = 14
NUM_ATTRIBUTES = 8
ATTR_NAMES = [f'attr{i}' for i in range(NUM_ATTRIBUTES)]
# Evaluated columns in "group order": a subset, not sorted.
EVAL = [5, 2, 7, 0, 3]
_RNG = np.random.default_rng(7)
LABEL = _RNG.integers(0, 3, size=(NUM_IMAGES, NUM_ATTRIBUTES)).astype(np.uint8)  # 2 = uncertain.
LABEL[0, EVAL] = 2
# Five partitions (0-based rows, deliberately unsorted): train / val / test.
PARTITIONS = [
  {
    'train': [(p + k) % NUM_IMAGES for k in (0, 3, 5, 1, 8, 13)],
    'val': [(p + k) % NUM_IMAGES for k in (2, 9, 11)],
    'test': [(p + k) % NUM_IMAGES for k in (4, 6, 7, 10, 12)],
  }
  for p in range(5)
]
# A zero-shot split: one array per entry.
ZERO_SHOT = {'train': [9, 1, 4, 12, 0, 7], 'val': [2, 13], 'test': [3, 5, 6, 8, 10, 11]}


def _fake_easydict_module() -> types.ModuleType:
  """A module `easydict` with an `EasyDict` that behaves as the real one when built.

  The real EasyDict is a dict whose attribute and item assignments set both (and
  turn dict values into EasyDicts); pickled, it is the class `easydict.EasyDict`,
  its items, and its attributes as the state.
  """
  module = types.ModuleType('easydict')

  class EasyDict(dict):
    def __setattr__(self, name, value):
      if isinstance(value, dict) and not isinstance(value, EasyDict):
        value = EasyDict(value)
      super().__setattr__(name, value)
      super().__setitem__(name, value)

    __setitem__ = __setattr__

  EasyDict.__module__ = 'easydict'
  EasyDict.__qualname__ = 'EasyDict'
  module.EasyDict = EasyDict
  return module


def _dump(obj_factory, path: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
  """Builds the object with the stand-in `easydict` importable, pickles it, removes the module."""
  module = _fake_easydict_module()
  saved = sys.modules.get('easydict')
  sys.modules['easydict'] = module
  try:
    path.write_bytes(pickle.dumps(obj_factory(module.EasyDict), protocol=protocol))
  finally:
    if saved is None:
      del sys.modules['easydict']
    else:
      sys.modules['easydict'] = saved


def _image_name(row: int, extension: str) -> str:
  return f'{row + 1:05}.{extension}'


def _colour(row: int) -> tuple[int, int, int]:
  return (15 * row, 90, 250 - 15 * row)


def _write_images(folder: Path, extension: str) -> None:
  folder.mkdir(parents=True)
  for row in range(NUM_IMAGES):
    Image.fromarray(np.full((8, 4, 3), _colour(row), np.uint8)).save(
      folder / _image_name(row, extension)
    )


def _header(easydict, description, extension, eval_columns, root):
  """The fields every format_*.py script writes before the partitions."""
  dataset = easydict()
  dataset.description = description
  dataset.reorder = 'group_order'
  dataset.root = root
  dataset.image_name = [np.str_(_image_name(r, extension)) for r in range(NUM_IMAGES)]
  dataset.label = LABEL.copy()
  dataset.attr_name = [np.str_(n) for n in ATTR_NAMES]
  if eval_columns is not None:
    dataset.label_idx = easydict()
    dataset.label_idx.eval = list(eval_columns)
    dataset.label_idx.color = [1, 4]
    dataset.label_idx.extra = range(6, NUM_ATTRIBUTES)
  dataset.partition = easydict()
  return dataset


def _dataset(
  easydict,
  *,
  description='peta',
  extension='png',
  partition=None,
  eval_columns=EVAL,
  root='/mnt/data1/someone/datasets/attribute/PETA/images',
):
  """The EasyDict of format_peta.py / format_rap2.py / format_pa100k.py (PETA's by default)."""
  dataset = _header(easydict, description, extension, eval_columns, root)
  dataset.weight_train, dataset.weight_trainval = [], []
  if partition is None:  # Five partitions: lists.
    for key in ('train', 'val', 'trainval', 'test'):
      dataset.partition[key] = []
    for p in PARTITIONS:
      train, val = np.array(p['train']), np.array(p['val'])
      dataset.partition.train.append(train)
      dataset.partition.val.append(val)
      dataset.partition.trainval.append(np.concatenate((train, val)))
      dataset.partition.test.append(np.array(p['test']))
      dataset.weight_train.append(np.mean(dataset.label[train], axis=0))
  else:  # One partition (zero-shot files, PA-100K): arrays.
    train, val = np.array(partition['train']), np.array(partition['val'])
    dataset.partition.train = train
    dataset.partition.val = val
    dataset.partition.trainval = np.concatenate((train, val))
    dataset.partition.test = np.array(partition['test'])
    dataset.weight_train.append(np.mean(dataset.label[train], axis=0).astype(np.float32))
  return dataset


def _rap1_dataset(easydict):
  """format_rap.py's shape: trainval / test only, five partitions."""
  dataset = _header(easydict, 'rap', 'png', EVAL, '/data/RAP/RAP_dataset')
  dataset.partition.trainval = [np.array(p['train'] + p['val']) for p in PARTITIONS]
  dataset.partition.test = [np.array(p['test']) for p in PARTITIONS]
  dataset.weight_trainval = [
    np.mean(dataset.label[t], axis=0).astype(np.float32) for t in dataset.partition.trainval
  ]
  return dataset


def _expected_labels(row: int, columns, uncertain: int) -> np.ndarray:
  values = [int(LABEL[row, c]) for c in columns]
  return np.array([{0: 0, 1: 1, 2: uncertain}[v] for v in values], np.int8)


def _build(builder_cls, root: Path, data_dir: Path, config: str):
  builder = builder_cls(data_dir=str(data_dir), config=config)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  return builder


def _check(builder, folder: str, extension: str, rows_of: dict, columns, uncertain: int):
  """Every split's rows, labels, images and the attribute order, read back."""
  assert builder.info.metadata['attribute_names'] == [ATTR_NAMES[c] for c in columns]
  assert sorted(builder.info.splits) == sorted(rows_of)
  for split, rows in rows_of.items():
    examples = sorted_examples(builder, split)
    assert [int(e['index']) for e in examples] == list(range(len(rows)))
    assert [e['image_id'].decode() for e in examples] == [
      f'{folder}/{_image_name(r, extension)}' for r in rows
    ]
    for example, row in zip(examples, rows, strict=True):
      np.testing.assert_array_equal(example['labels'], _expected_labels(row, columns, uncertain))
      if extension == 'png':
        np.testing.assert_array_equal(example['image'][0, 0], _colour(row))
      else:
        np.testing.assert_allclose(example['image'][0, 0], _colour(row), atol=8)


@pytest.fixture(scope='module')
def peta_root(tmp_path_factory):
  """PETA as the peers keep it: dataset_all.pkl, two zero-shot files and images/."""
  root = tmp_path_factory.mktemp('peta_peers')
  _write_images(root / 'images', 'png')
  _dump(_dataset, root / 'dataset_all.pkl')
  _dump(lambda e: _dataset(e, partition=ZERO_SHOT), root / 'dataset_zs_run0.pkl')
  _dump(lambda e: _dataset(e, partition=PARTITIONS[3]), root / 'dataset_zs_run1.pkl')
  return root


def _rows_of(part: dict) -> dict:
  """The builder's splits of one partition of the file."""
  return {
    'train': part['train'],
    'validation': part['val'],
    'trainval': part['train'] + part['val'],
    'test': part['test'],
  }


@pytest.mark.parametrize('partition', [0, 2])
def test_five_partition_file(peta_root, tmp_path, partition):
  builder = _build(peers.PeersPeta, peta_root, tmp_path, f'part{partition}')
  _check(builder, 'images', 'png', _rows_of(PARTITIONS[partition]), EVAL, uncertain=0)
  assert builder.info.features['labels'].shape == (len(EVAL),)


def test_zero_shot_file(peta_root, tmp_path):
  builder = _build(peers.PeersPeta, peta_root, tmp_path, 'zs0')
  _check(builder, 'images', 'png', _rows_of(ZERO_SHOT), EVAL, uncertain=0)
  # Another run's file is another split.
  other = _build(peers.PeersPeta, peta_root, tmp_path / 'other', 'zs1')
  assert [e['image_id'].decode() for e in sorted_examples(other, 'test')] == [
    f'images/{_image_name(r, "png")}' for r in PARTITIONS[3]['test']
  ]


def test_every_attribute_and_uncertain_as_unknown(peta_root, tmp_path):
  builder = _build(peers.PeersPeta, peta_root, tmp_path, 'part1_allattr_unknown')
  _check(builder, 'images', 'png', _rows_of(PARTITIONS[1]), range(NUM_ATTRIBUTES), uncertain=-1)
  unknown_only = _build(peers.PeersPeta, peta_root, tmp_path / 'u', 'part0_unknown')
  _check(unknown_only, 'images', 'png', _rows_of(PARTITIONS[0]), EVAL, uncertain=-1)


def test_zero_shot_file_without_label_idx(tmp_path):
  """Some zero-shot files have no label_idx: every column is evaluated, in file order."""
  root = tmp_path / 'rap2'
  _write_images(root / 'RAP_dataset', 'png')
  _dump(
    lambda e: _dataset(
      e, description='rap2', partition=ZERO_SHOT, eval_columns=None, root='/d/RAP2/RAP_dataset'
    ),
    root / 'dataset_zs_run0.pkl',
  )
  builder = _build(peers.PeersRap2, root, tmp_path / 'tfds', 'zs0')
  _check(builder, 'RAP_dataset', 'png', _rows_of(ZERO_SHOT), range(NUM_ATTRIBUTES), uncertain=0)


def test_rap1_file_holds_validation_out_of_trainval(tmp_path):
  root = tmp_path / 'rap'
  _write_images(root / 'RAP_dataset', 'png')
  _dump(_rap1_dataset, root / 'dataset_all.pkl')
  builder = _build(peers.PeersRap1, root, tmp_path / 'tfds', 'part4')
  trainval = PARTITIONS[4]['train'] + PARTITIONS[4]['val']
  names = [_image_name(r, 'png') for r in range(NUM_IMAGES)]
  train, validation = rap1.holdout_validation(np.array(trainval), names)
  assert train.size and validation.size  # The fixture exercises both sides.
  assert sorted(train.tolist() + validation.tolist()) == sorted(trainval)
  rows = {
    'train': [r for r in trainval if r in train],
    'validation': [r for r in trainval if r in validation],
    'trainval': trainval,
    'test': PARTITIONS[4]['test'],
  }
  _check(builder, 'RAP_dataset', 'png', rows, EVAL, uncertain=0)


def test_pa100k_file(tmp_path):
  """PA-100K's file: one partition as arrays, JPEG images in data/."""
  root = tmp_path / 'pa100k'
  _write_images(root / 'data', 'jpg')
  _dump(
    lambda e: _dataset(
      e, description='pa100k', extension='jpg', partition=ZERO_SHOT, root='/d/PA100k/data'
    ),
    root / 'dataset_all.pkl',
    protocol=2,  # Also read: a protocol-2 pickle names range and bytes differently.
  )
  builder = _build(peers.PeersPa100k, root, tmp_path / 'tfds', 'part0')
  _check(builder, 'data', 'jpg', _rows_of(ZERO_SHOT), EVAL, uncertain=0)


def test_images_under_images_when_root_names_another_folder(tmp_path):
  """The file's absolute root is never read; its last folder or images/ under the manual dir is."""
  root = tmp_path / 'peta'
  _write_images(root / 'images', 'png')
  _dump(
    lambda e: _dataset(e, partition=ZERO_SHOT, root='/elsewhere/PETA/pictures'),
    root / 'dataset_zs_run0.pkl',
  )
  builder = _build(peers.PeersPeta, root, tmp_path / 'tfds', 'zs0')
  assert sorted_examples(builder, 'test')[0]['image_id'].decode() == 'images/00004.png'


class _RunsCode:
  """Pickles as a call of os.system: what a malicious file would hold."""

  def __init__(self, marker: Path):
    self.marker = marker

  def __reduce__(self):
    import os

    return (os.system, (f'touch {self.marker}',))


def test_malicious_pickle_is_refused_naming_its_class(tmp_path, monkeypatch):
  import os

  marker = tmp_path / 'ran'
  path = tmp_path / 'dataset_all.pkl'
  _dump(lambda e: _dataset(e, description=_RunsCode(marker)), path)
  with pytest.raises(DataError) as e:
    peers.load_peers_file(path)
  message = str(e.value)
  assert '\n' not in message
  assert str(path) in message
  assert f'{os.system.__module__}.{os.system.__name__}' in message  # posix.system on Linux.
  assert not marker.exists()
  # The control: the same pickle, loaded by pickle itself, runs the command.
  monkeypatch.setitem(sys.modules, 'easydict', _fake_easydict_module())
  pickle.loads(path.read_bytes())
  assert marker.exists()


@pytest.mark.parametrize(
  'module, name', [('builtins', 'eval'), ('subprocess', 'Popen'), ('numpy', 'load')]
)
def test_other_callables_are_refused(tmp_path, module, name):
  path = tmp_path / 'bad.pkl'
  # A hand-written protocol-0 pickle: GLOBAL module name, an argument tuple, REDUCE.
  path.write_bytes(f"c{module}\n{name}\n(S'x'\ntR.".encode())
  with pytest.raises(DataError, match=rf'{path}: refused to load {module}\.{name}'):
    peers.load_peers_file(path)


def test_reads_without_easydict_installed(peta_root, monkeypatch):
  monkeypatch.setitem(sys.modules, 'easydict', None)  # `import easydict` now fails.
  loaded = peers.load_peers_file(peta_root / 'dataset_all.pkl')
  assert loaded.attribute_names == ATTR_NAMES
  assert loaded.eval_columns == EVAL
  assert loaded.description == 'peta'
  np.testing.assert_array_equal(loaded.labels, LABEL)
  assert [p.tolist() for p in loaded.partitions['val']] == [p['val'] for p in PARTITIONS]


def test_wrong_dataset_file(peta_root, tmp_path):
  builder = peers.PeersRap2(data_dir=str(tmp_path), config='part0')
  with pytest.raises(DataError, match="is a 'peta' file; the peers_rap2 builder reads 'rap2'"):
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(peta_root))
    )


def test_partition_beyond_a_one_partition_file(peta_root, tmp_path):
  """zs files hold one partition; asking part3 of a file with one names the file."""
  root = tmp_path / 'pa'
  _write_images(root / 'data', 'jpg')
  _dump(lambda e: _dataset(e, description='pa100k', partition=ZERO_SHOT), root / 'dataset_all.pkl')
  loaded = peers.load_peers_file(root / 'dataset_all.pkl')
  with pytest.raises(DataError, match=r'dataset_all.pkl: holds 1 partition\(s\); partition 3'):
    peers.split_rows(loaded, 3, root / 'dataset_all.pkl')


def test_missing_file(tmp_path):
  (tmp_path / 'raw' / 'images').mkdir(parents=True)
  builder = peers.PeersPeta(data_dir=str(tmp_path / 'tfds'), config='zs2')
  with pytest.raises(DataError) as e:
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'raw'))
    )
  assert str(tmp_path / 'raw' / 'dataset_zs_run2.pkl') in str(e.value)
  assert 'Rethinking_of_PAR' in str(e.value)


def test_bad_label_value(tmp_path):
  def factory(easydict):
    dataset = _dataset(easydict)
    dataset.label[3, 6] = 5
    return dataset

  path = tmp_path / 'dataset_all.pkl'
  _dump(factory, path)
  with pytest.raises(DataError, match=r'label\[3, 6\] is 5'):
    peers.load_peers_file(path)


@pytest.mark.slow
def test_trains_end_to_end_on_a_zero_shot_file(peta_root, tmp_path):
  """`configs/peers.py:petazs` with the test config's tiny model, through jaxattr.main."""
  workdir = tmp_path / 'run'
  proc = run_tool(
    'jaxattr.main',
    f'--config={REPO}/configs/peers.py:petazs,resnet18',
    f'--workdir={workdir}',
    f'--config.data.manual_dir={peta_root}',
    f'--config.data.data_dir={tmp_path / "tfds"}',
    '--config.data.image_size=32',
    '--config.data.resize_size=36',
    '--config.data.crop_min=24',
    '--config.data.crop_max=36',
    '--config.model.width=0.0625',
    '--config.model.pretrained=scratch',  # No published weights at this width.
    '--config.train.allow_frozen_scratch=True',
    '--config.train.batch_size=4',
    '--config.train.num_epochs=2',
    '--config.train.freeze_backbone_epochs=1',
    '--config.eval.batch_size=4',
    '--config.history.start_epoch=1',
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (workdir / 'results.json').is_file()
  import json

  results = json.loads((workdir / 'results.json').read_text())
  assert results  # The test split was evaluated with the selected checkpoint.


@pytest.mark.parametrize(
  'name, builder, config',
  [
    ('peta', 'peers_peta', 'part0'),
    ('petazs', 'peers_peta', 'zs0'),
    ('pa100k', 'peers_pa100k', 'part0'),
    ('rap1', 'peers_rap1', 'part0'),
    ('rap2', 'peers_rap2', 'part0'),
    ('rapzs', 'peers_rap2', 'zs0'),
  ],
)
def test_configs_name_their_builder(name, builder, config):
  from jaxattr import schema
  from jaxattr.schema import dataset_builders

  peers_config = schema.load_recipe('peers')

  got = peers_config.get_config(f'{name},resnet50')
  assert (got.data.name, got.data.builder_config) == (builder, config)
  assert got.model.backbone == 'resnet50'
  assert config in [c.name for c in dataset_builders()[builder].BUILDER_CONFIGS]


def test_config_needs_one_dataset_name():
  from jaxattr import schema

  peers_config = schema.load_recipe('peers')

  for arg in (None, 'resnet50', 'peta,rap2'):
    with pytest.raises(ValueError, match="one of \\['pa100k', 'peta', 'petazs'"):
      peers_config.get_config(arg)
