"""Tests of the PETA builder: both forms on tiny fixtures, and the real annotation files."""

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from PIL import Image

from jaxattr.data import peta
from jaxattr.data.common import DataError
from tests.conftest import build, sorted_examples

SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'
REAL_MAT = SHARED_DATA / 'PETA.mat'
REAL_VESPA = SHARED_DATA / 'vespa_peta'

NAMES_35 = (
  'personalLess30 personalLess45 personalLess60 personalLarger60 carryingBackpack '
  'carryingOther lowerBodyCasual upperBodyCasual lowerBodyFormal upperBodyFormal accessoryHat '
  'upperBodyJacket lowerBodyJeans footwearLeatherShoes upperBodyLogo hairLong personalMale '
  'carryingMessengerBag accessoryMuffler accessoryNothing carryingNothing upperBodyPlaid '
  'carryingPlasticBags footwearSandals footwearShoes lowerBodyShorts upperBodyShortSleeve '
  'lowerBodyShortSkirt footwearSneaker upperBodyThinStripes accessorySunglasses '
  'lowerBodyTrousers upperBodyTshirt upperBodyOther upperBodyVNeck'
).split()

NUM_IMAGES = 10
# Rows of the fixture's `data` are in this order of image numbers (not 1..N), so
# a builder that confused rows with image numbers would fail.
ROW_ORDER = [6, 2, 9, 1, 10, 3, 8, 4, 7, 5]
PARTITIONS = {
  0: {'train': [3, 1, 7, 5], 'val': [2, 9], 'test': [4, 6, 8, 10]},
  2: {'train': [10, 9], 'val': [1], 'test': [2, 3, 4, 5, 6, 7, 8]},
}
_RNG = np.random.default_rng(0)
LABELS_105 = _RNG.integers(0, 2, size=(NUM_IMAGES, 105)).astype(np.uint16)  # By row.


def _colour(number: int) -> tuple[int, int, int]:
  return (number * 20, 255 - number * 20, 7)


def _column(values, dtype=np.uint16):
  return np.asarray(values, dtype).reshape(-1, 1)


def _write_mat(path: Path, data: np.ndarray | None = None) -> None:
  if data is None:
    data = np.zeros((NUM_IMAGES, 109), np.uint16)
    data[:, 0] = ROW_ORDER
    data[:, 1] = np.arange(NUM_IMAGES) // 2 + 1  # Person id.
    data[:, 2] = 3  # CUHK.
    data[:, 3] = np.arange(NUM_IMAGES) + 100
    data[:, 4:] = LABELS_105
  attribute = np.empty((105, 1), dtype=object)
  attribute[:, 0] = NAMES_35 + [f'extraAttribute{i}' for i in range(70)]
  partitions = np.empty((5, 1), dtype=object)
  for p in range(5):
    split = PARTITIONS.get(p, PARTITIONS[0])
    partitions[p, 0] = {k: _column(v) for k, v in split.items()}
  scipy.io.savemat(
    path,
    {
      'peta': {
        'data': data,
        'attribute': attribute,
        'selected_attribute': np.arange(5, 40, dtype=np.uint8).reshape(1, 35),
        'partion_attribute': partitions,
      }
    },
  )


def _write_mat_fixture(root: Path) -> None:
  (root / 'images').mkdir(parents=True)
  for n in range(1, NUM_IMAGES + 1):
    Image.fromarray(np.full((6, 4, 3), _colour(n), np.uint8)).save(root / f'images/{n:05d}.png')
  _write_mat(root / 'PETA.mat')


def _expected_labels(number: int) -> np.ndarray:
  return LABELS_105[ROW_ORDER.index(number), :35].astype(np.int8)


def _build(root: Path, data_dir: Path, config: str, **kwargs) -> peta.Peta:
  return build(peta.Peta, root, data_dir, config=config, **kwargs)


# --- PETA.mat form, tiny fixture ------------------------------------------------


@pytest.fixture(scope='module')
def mat_fixture(tmp_path_factory):
  root = tmp_path_factory.mktemp('peta_mat_raw')
  _write_mat_fixture(root)
  return root


@pytest.mark.parametrize('partition', [0, 2])
def test_mat_partitions(mat_fixture, tmp_path, partition):
  builder = _build(mat_fixture, tmp_path, f'mat{partition}')
  assert builder.info.metadata['attribute_names'] == NAMES_35
  assert builder.info.features['image'].encoding_format == 'png'
  expected = PARTITIONS[partition]
  for split, field in (('train', 'train'), ('validation', 'val'), ('test', 'test')):
    examples = sorted_examples(builder, split)
    numbers = expected[field]
    assert [int(e['index']) for e in examples] == list(range(len(numbers)))
    assert [e['image_id'].decode() for e in examples] == [f'images/{n:05d}.png' for n in numbers]
    for example, number in zip(examples, numbers, strict=True):
      np.testing.assert_array_equal(example['labels'], _expected_labels(number))
      assert example['image'].shape == (6, 4, 3)
      np.testing.assert_array_equal(example['image'][0, 0], _colour(number))  # PNG: exact.


def test_mat_missing_manual_files(tmp_path):
  (tmp_path / 'raw').mkdir()
  (tmp_path / 'raw/readme.txt').write_text('not the dataset')
  with pytest.raises(DataError) as e:
    _build(tmp_path / 'raw', tmp_path / 'tfds', 'mat0')
  missing = str(e.value).split('Expected layout')[0]
  assert 'PETA.mat' in missing and 'images' in missing
  assert 'http://mmlab.ie.cuhk.edu.hk/projects/PETA.html' in str(e.value)


def test_mat_missing_and_corrupt_images(tmp_path):
  root = tmp_path / 'raw'
  _write_mat_fixture(root)
  (root / 'images/00007.png').unlink()
  (root / 'images/00004.png').unlink()
  with pytest.raises(DataError) as e:
    _build(root, tmp_path / 'tfds', 'mat0')
  assert str(root / 'images/00007.png') in str(e.value)
  assert str(root / 'images/00004.png') in str(e.value)  # Listed together.
  _write_mat_fixture(tmp_path / 'raw2')
  corrupt = tmp_path / 'raw2/images/00003.png'
  corrupt.write_bytes(corrupt.read_bytes()[:30])
  with pytest.raises(DataError, match=str(corrupt)):
    _build(tmp_path / 'raw2', tmp_path / 'tfds2', 'mat0')


def test_mat_wrong_label_width(tmp_path):
  path = tmp_path / 'PETA.mat'
  _write_mat(path, np.zeros((NUM_IMAGES, 108), np.uint16))
  with pytest.raises(DataError) as e:
    peta.read_peta_mat(path)
  assert str(path) in str(e.value) and 'peta.data' in str(e.value) and '108' in str(e.value)


def test_mat_labels_must_be_binary(tmp_path):
  data = np.zeros((NUM_IMAGES, 109), np.uint16)
  data[:, 0] = ROW_ORDER
  data[3, 10] = 2
  path = tmp_path / 'PETA.mat'
  _write_mat(path, data)
  with pytest.raises(DataError, match='row 4, column 7'):  # Column 7 of the selection.
    peta.read_peta_mat(path)


# --- VeSPA lists form, tiny fixture ----------------------------------------------

VESPA_ROWS = {
  'train': [
    ('PETA_dataset/CUHK/archive/3122.png', 'png_rgb'),
    ('PETA_dataset/GRID/archive/0127_1_28046_104_4_59_177.jpeg', 'jpeg'),
    ('PETA_dataset/VIPeR/archive/001_45.bmp', 'bmp'),
  ],
  'val': [('PETA_dataset/i-LID/archive/0001.png', 'png_grey')],
  'test': [('PETA_dataset/MIT/archive/00847_female_back.jpg', 'jpeg')],
}


def _vespa_labels(i: int) -> list[int]:
  return [(i + j) % 3 == 0 for j in range(35)]


def _write_vespa_fixture(root: Path, folder: str = 'PETA dataset') -> dict[str, list]:
  """Writes images and lists; returns split -> [(list path, labels, pixel)]."""
  expected = {}
  i = 0
  for split, rows in VESPA_ROWS.items():
    lines = []
    expected[split] = []
    for list_path, kind in rows:
      i += 1
      path = root / folder / list_path.split('/', 1)[1]
      path.parent.mkdir(parents=True, exist_ok=True)
      colour = (10 * i, 40, 200 - 10 * i)
      if kind == 'png_grey':
        Image.fromarray(np.full((8, 5), 77, np.uint8)).save(path)
        colour = (77, 77, 77)
      else:
        pil = Image.fromarray(np.full((8, 5, 3), colour, np.uint8))
        pil.save(path, format={'png_rgb': 'PNG', 'jpeg': 'JPEG', 'bmp': 'BMP'}[kind])
      labels = _vespa_labels(i)
      lines.append(f'{list_path} ' + ''.join(f'{int(v)},' for v in labels))
      expected[split].append((list_path, labels, colour, kind == 'jpeg'))
    (root / 'vespa_peta').mkdir(parents=True, exist_ok=True)
    (root / f'vespa_peta/PETA_{split}_list.txt').write_text('\n'.join(lines) + '\n')
  return expected


def _check_vespa(builder, expected):
  for split, field in (('train', 'train'), ('validation', 'val'), ('test', 'test')):
    examples = sorted_examples(builder, split)
    assert [int(e['index']) for e in examples] == list(range(len(expected[field])))
    for example, (list_path, labels, colour, lossy) in zip(examples, expected[field], strict=True):
      assert example['image_id'].decode() == list_path
      np.testing.assert_array_equal(example['labels'], np.array(labels, np.int8))
      assert example['image'].shape == (8, 5, 3)
      np.testing.assert_allclose(
        example['image'].reshape(-1, 3).mean(0), colour, atol=3 if lossy else 0
      )


def test_vespa(tmp_path):
  root = tmp_path / 'raw'
  expected = _write_vespa_fixture(root)
  builder = _build(root, tmp_path / 'tfds', 'vespa')
  assert builder.info.metadata['attribute_names'] == NAMES_35
  _check_vespa(builder, expected)


def test_vespa_peta_dir_and_lists_at_root(tmp_path):
  root = tmp_path / 'raw'
  expected = _write_vespa_fixture(root, folder='my PETA copy')
  for path in (root / 'vespa_peta').iterdir():
    path.rename(root / path.name)
  with pytest.raises(DataError, match='raw PETA release folder'):
    _build(root, tmp_path / 'tfds', 'vespa')
  builder = _build(root, tmp_path / 'tfds2', 'vespa', peta_dir='my PETA copy')
  _check_vespa(builder, expected)


def test_vespa_wrong_label_width(tmp_path):
  path = tmp_path / 'PETA_train_list.txt'
  good = 'PETA_dataset/CUHK/archive/1.png ' + '0,' * 35
  path.write_text(f'{good}\n{good}\nPETA_dataset/CUHK/archive/2.png ' + '1,' * 34 + '\n')
  with pytest.raises(DataError, match=f'{path}:3: 34 labels, expected 35'):
    peta.read_vespa_list(path)
  path.write_text('PETA_dataset/CUHK/archive/1.png ' + '0,' * 34 + '2,\n')
  with pytest.raises(DataError, match=f'{path}:1: labels must be 0 or 1'):
    peta.read_vespa_list(path)


def test_vespa_missing_list(tmp_path):
  root = tmp_path / 'raw'
  _write_vespa_fixture(root)
  (root / 'vespa_peta/PETA_val_list.txt').unlink()
  with pytest.raises(DataError) as e:
    _build(root, tmp_path / 'tfds', 'vespa')
  missing = str(e.value).split('Expected layout')[0]
  assert 'PETA_val_list.txt' in missing and 'PETA_train_list.txt' not in missing
  assert 'http://mmlab.ie.cuhk.edu.hk/projects/PETA.html' in str(e.value)


# --- The real annotation files ---------------------------------------------------


def _require(path: Path) -> None:
  if not path.exists():
    pytest.skip(f'{path} not present (it is not part of the repo)')


def _independent_train_ratios(names=('personalMale', 'upperBodyVNeck')) -> dict[str, float]:
  """Positive ratios in partition 0's train split, straight from scipy.io.loadmat."""
  raw = scipy.io.loadmat(str(REAL_MAT))['peta'][0, 0]
  data = raw['data']
  attribute = [str(a[0][0]) for a in raw['attribute']]
  train = raw['partion_attribute'][0, 0][0, 0]['train'][:, 0]
  rows = np.isin(data[:, 0], train)
  assert rows.sum() == 9500
  return {n: float(data[rows, 4 + attribute.index(n)].mean()) for n in names}


def test_real_peta_mat_parsing():
  _require(REAL_MAT)
  mat = peta.read_peta_mat(REAL_MAT)
  assert mat.labels.shape == (19000, 35)
  assert mat.attribute_names == NAMES_35
  assert sorted(mat.image_numbers.tolist()) == list(range(1, 19001))
  assert len(mat.partitions) == 5
  for partition in mat.partitions:
    sizes = {k: len(v) for k, v in partition.items()}
    assert sizes == {'train': 9500, 'validation': 1900, 'test': 7600}
    everything = np.concatenate(list(partition.values()))
    assert len(np.unique(everything)) == 19000


@pytest.fixture(scope='module')
def real_mat_build(tmp_path_factory):
  """The mat0 config built from the real PETA.mat with one tiny PNG hard-linked 19,000 times."""
  _require(REAL_MAT)
  root = tmp_path_factory.mktemp('real_peta')
  (root / 'images').mkdir()
  one = root / 'one.png'
  Image.fromarray(np.full((4, 2, 3), 9, np.uint8)).save(one)
  for n in range(1, 19001):
    os.link(one, root / f'images/{n:05d}.png')
  os.symlink(REAL_MAT, root / 'PETA.mat')
  return _build(root, tmp_path_factory.mktemp('real_peta_tfds'), 'mat0')


def test_real_peta_mat_build(real_mat_build):
  counts = {s: i.num_examples for s, i in real_mat_build.info.splits.items()}
  assert counts == {'train': 9500, 'validation': 1900, 'test': 7600}
  train = sorted_examples(real_mat_build, 'train', decoders={'image': tfds.decode.SkipDecoding()})
  assert [int(e['index']) for e in train] == list(range(9500))
  raw = scipy.io.loadmat(str(REAL_MAT))['peta'][0, 0]
  numbers = raw['partion_attribute'][0, 0][0, 0]['train'][:, 0]
  assert [e['image_id'].decode() for e in train] == [f'images/{n:05d}.png' for n in numbers]
  labels = np.stack([e['labels'] for e in train])
  assert labels.shape == (9500, 35)
  ratios = _independent_train_ratios()
  for name, ratio in ratios.items():
    assert labels[:, NAMES_35.index(name)].mean() == pytest.approx(ratio, abs=1e-12)
  assert 0.4 < ratios['personalMale'] < 0.6  # Sanity: PETA is about half male.


def test_real_vespa_lists():
  _require(REAL_VESPA / 'PETA_train_list.txt')
  sizes = {'train': 9500, 'val': 1900, 'test': 7600}
  for split, size in sizes.items():
    path = REAL_VESPA / f'PETA_{split}_list.txt'
    rows = peta.read_vespa_list(path)
    assert len(rows) == size
    assert all(r.labels.shape == (35,) for r in rows)
    assert all(r.path.startswith('PETA_dataset/') for r in rows)
    if split == 'train':
      # Independent transcription of the format: last field, trailing comma.
      lines = path.read_text().split('\n')
      fields = [line.split(' ')[-1].rstrip(',').split(',') for line in lines if line]
      for name in ('personalMale', 'upperBodyVNeck'):
        column = NAMES_35.index(name)
        expected = sum(f[column] == '1' for f in fields) / len(fields)
        got = np.mean([r.labels[column] for r in rows])
        assert got == pytest.approx(expected, abs=1e-12)
        assert 0 < got < 1
