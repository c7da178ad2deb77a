"""Tests of the RAP v2 builder on a tiny fixture in the official RAP_annotation.mat format."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from PIL import Image

from jaxattr.data import rap2
from jaxattr.data.common import DataError
from tests.conftest import build, sorted_examples

NUM_IMAGES = 9
ALL_NAMES = [f'attr{i:03d}' for i in range(1, 153)]  # 152 attributes, as in RAP v2.
# 54 selected, 1-based, deliberately not sorted: the selection order is the order.
SELECTED = [12, 1, 2, 3, 150] + list(range(20, 69))
assert len(SELECTED) == 54
PARTITIONS = [
  {'train_index': [3, 1, 5, 7], 'val_index': [2, 9], 'test_index': [4, 6, 8]},
  {'train_index': [9, 8], 'val_index': [1], 'test_index': [2, 3, 4, 5, 6, 7]},
]
NAMES = [f'CAM{i:02d}-20140215-20140215161032-frame{i}-line1.png' for i in range(1, 10)]
_RNG = np.random.default_rng(2)
DATA = _RNG.integers(0, 3, size=(NUM_IMAGES, 152)).astype(np.float64)  # 0 / 1 / 2.


def _colour(row: int) -> tuple[int, int, int]:
  return (25 * row, 200, 255 - 25 * row)


def cell(items, shape) -> np.ndarray:
  """A MATLAB cell array of `shape` holding `items` (in row-major order)."""
  cells = np.empty(shape, dtype=object)
  for i, item in enumerate(items):
    cells.reshape(-1)[i] = item
  return cells


def write_images(folder: Path, names, size: tuple[int, int], colour) -> None:
  """One solid PNG of `size` (height, width) per name; row `r`'s is `colour(r)`."""
  folder.mkdir(parents=True)
  for row, name in enumerate(names):
    Image.fromarray(np.full((*size, 3), colour(row), np.uint8)).save(folder / name)


def rap_labels(values) -> np.ndarray:
  """The builder's labels for RAP's values: 0 and 1 as they are, 2 (uncertain) -> -1."""
  return np.array([{0: 0, 1: 1, 2: -1}[int(v)] for v in values], np.int8)


def assert_split(builder, split: str, rows, names, expected_labels, colour) -> None:
  """`split` holds the images `RAP_dataset/<names[row]>` of `rows` in order, with their labels."""
  examples = sorted_examples(builder, split)
  assert [int(e['index']) for e in examples] == list(range(len(rows)))
  assert [e['image_id'].decode() for e in examples] == [f'RAP_dataset/{names[r]}' for r in rows]
  for example, row in zip(examples, rows, strict=True):
    np.testing.assert_array_equal(example['labels'], expected_labels(row))
    np.testing.assert_array_equal(example['image'][0, 0], colour(row))  # PNG: exact.


def _write_fixture(root: Path, data=DATA) -> None:
  write_images(root / 'RAP_dataset', NAMES, (10, 4), _colour)
  partitions = [
    {k: np.asarray(v, np.float64).reshape(1, -1) for k, v in p.items()} for p in PARTITIONS
  ]
  partitions += [partitions[0]] * 3
  (root / 'RAP_annotation').mkdir()
  scipy.io.savemat(
    root / 'RAP_annotation/RAP_annotation.mat',
    {
      'RAP_annotation': {
        'name': cell(NAMES, (NUM_IMAGES, 1)),
        'attribute': cell(ALL_NAMES, (152, 1)),
        'data': data,
        'selected_attribute': np.asarray(SELECTED, np.float64).reshape(1, -1),
        'partition_attribute': cell(partitions, (1, 5)),
        'position': np.zeros((NUM_IMAGES, 16)),  # Present in the release; unused.
      }
    },
  )


def _expected_labels(row: int) -> np.ndarray:
  return rap_labels(DATA[row, [c - 1 for c in SELECTED]])


@pytest.fixture(scope='module')
def fixture_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('rap_raw')
  _write_fixture(root)
  return root


@pytest.mark.parametrize('partition', [0, 1])
def test_build(fixture_root, tmp_path, partition):
  builder = rap2.Rap2(data_dir=str(tmp_path), config=f'partition{partition}')
  assert builder.info.metadata['attribute_names'] == []  # Not known before the build.
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(fixture_root))
  )
  expected_names = [ALL_NAMES[c - 1] for c in SELECTED]
  assert builder.info.metadata['attribute_names'] == expected_names
  assert builder.info.features['labels'].shape == (54,)
  for split, field in (
    ('train', 'train_index'),
    ('validation', 'val_index'),
    ('test', 'test_index'),
  ):
    rows = [r - 1 for r in PARTITIONS[partition][field]]
    assert_split(builder, split, rows, NAMES, _expected_labels, _colour)
  # The fixture has uncertain values, so some labels must be -1.
  assert (np.stack([e['labels'] for e in sorted_examples(builder, 'train')]) == -1).any()

  # A new builder over the prepared data knows the names without the manual dir.
  reloaded = rap2.Rap2(data_dir=str(tmp_path), config=f'partition{partition}')
  assert reloaded.info.metadata['attribute_names'] == expected_names
  assert reloaded.info.features['labels'].shape == (54,)
  assert reloaded.info.splits['train'].num_examples == len(PARTITIONS[partition]['train_index'])


def test_manual_dir_given_to_constructor(fixture_root, tmp_path):
  builder = rap2.Rap2(data_dir=str(tmp_path), manual_dir=str(fixture_root))
  assert len(builder.info.metadata['attribute_names']) == 54
  builder.download_and_prepare()
  assert builder.info.splits['validation'].num_examples == 2


def test_missing_manual_dir(tmp_path):
  with pytest.raises(DataError) as e:
    build(rap2.Rap2, tmp_path / 'absent', tmp_path / 'tfds')
  assert str(tmp_path / 'absent') in str(e.value)
  assert 'http://www.rapdataset.com/' in str(e.value)
  assert 'RAP_annotation/RAP_annotation.mat' in str(e.value)


def test_missing_annotation(tmp_path):
  (tmp_path / 'raw/RAP_dataset').mkdir(parents=True)
  with pytest.raises(DataError) as e:
    build(rap2.Rap2, tmp_path / 'raw', tmp_path / 'tfds')
  missing = str(e.value).split('Expected layout')[0]
  assert 'RAP_annotation.mat' in missing and 'RAP_dataset' not in missing


def test_missing_image(tmp_path):
  root = tmp_path / 'raw'
  _write_fixture(root)
  (root / 'RAP_dataset' / NAMES[5]).unlink()
  with pytest.raises(DataError, match=str(root / 'RAP_dataset' / NAMES[5])):
    build(rap2.Rap2, root, tmp_path / 'tfds')


def test_wrong_label_width(tmp_path):
  root = tmp_path / 'raw'
  _write_fixture(root, data=DATA[:, :151])
  with pytest.raises(DataError) as e:
    rap2.read_rap2_mat(root / 'RAP_annotation/RAP_annotation.mat')
  assert str(root / 'RAP_annotation/RAP_annotation.mat') in str(e.value)
  assert 'RAP_annotation.data has 151 columns' in str(e.value)


def test_unexpected_label_value(tmp_path):
  root = tmp_path / 'raw'
  data = DATA.copy()
  data[4, SELECTED[3] - 1] = 5
  _write_fixture(root, data=data)
  with pytest.raises(DataError, match='row 5, column 4'):
    rap2.read_rap2_mat(root / 'RAP_annotation/RAP_annotation.mat')
