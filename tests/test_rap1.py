"""Tests of the RAP v1 builder on a tiny fixture in the v1 RAP_annotation.mat format."""

import datetime
import hashlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from jaxattr.data import rap1
from jaxattr.data.common import DataError
from tests.conftest import build, sorted_examples
from tests.test_rap2 import assert_split, cell, rap_labels, write_images

NUM_IMAGES = 12
ALL_NAMES = [f'attr{i:02d}' for i in range(1, 93)]  # 92 attributes, as in RAP v1.
# RAP v1's image names: camera, capture day, clip, target and frame.
DAY = datetime.date(2014, 2, 15).isoformat()
NAMES = [
  f'CAM{i:02d}_{DAY}_20140215161032-20140215162620_tarid{i}_frame1_line1.png'
  for i in range(1, NUM_IMAGES + 1)
]
# 1-based rows, in a deliberately unsorted order.
PARTITIONS = [
  {'trainval': [3, 1, 5, 7, 2, 9, 10, 12, 11], 'test': [4, 6, 8]},
  {'trainval': [12, 11, 10, 9, 8, 7, 6, 5, 4], 'test': [1, 2, 3]},
]
_RNG = np.random.default_rng(3)
LABEL = _RNG.integers(0, 2, size=(NUM_IMAGES, 92)).astype(np.float64)
LABEL[:, 0] = _RNG.integers(0, 3, size=NUM_IMAGES)  # Gender: 2 = uncertain.
LABEL[2, 0] = 2


def _colour(row: int) -> tuple[int, int, int]:
  return (20 * row, 100, 255 - 20 * row)


def _write_fixture(root: Path, label=LABEL, trainval_field: str = 'train') -> None:
  """RAP v1's RAP_annotation.mat: its seven fields, partion a 5x1 cell of 1xN rows."""
  write_images(root / 'RAP_dataset', NAMES, (12, 5), _colour)
  partitions = [
    {
      trainval_field: np.asarray(p['trainval'], np.float64).reshape(1, -1),
      'test': np.asarray(p['test'], np.float64).reshape(1, -1),
    }
    for p in PARTITIONS
  ]
  partitions += [partitions[0]] * 3
  (root / 'RAP_annotation').mkdir()
  scipy.io.savemat(
    root / 'RAP_annotation/RAP_annotation.mat',
    {
      'RAP_annotation': {
        'partion': cell(partitions, (5, 1)),
        'label': label,
        'attribute_chinese': cell([f'属性{i}' for i in range(92)], (92, 1)),
        'attribute_eng': cell(ALL_NAMES, (92, 1)),
        'position': np.zeros((NUM_IMAGES, 16), np.int32),
        'imagesname': cell(NAMES, (NUM_IMAGES, 1)),
        'attribute_exp': cell([f'short{i}' for i in range(51)], (51, 1)),
      }
    },
  )


def _held_out(row: int) -> bool:
  digest = hashlib.sha256(NAMES[row].encode()).digest()
  return int.from_bytes(digest[:8], 'big') % 6 == 0


def _expected_labels(row: int) -> np.ndarray:
  return rap_labels(LABEL[row, :51])


def test_the_fixture_holds_out_some_but_not_all():
  """The fixture exercises both sides of the hold-out in every partition used."""
  for partition in PARTITIONS:
    held = [_held_out(r - 1) for r in partition['trainval']]
    assert any(held) and not all(held)


@pytest.fixture(scope='module')
def fixture_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('rap1_raw')
  _write_fixture(root)
  return root


@pytest.mark.parametrize('partition', [0, 1])
def test_build(fixture_root, tmp_path, partition):
  builder = build(rap1.Rap1, fixture_root, tmp_path, config=f'partition{partition}')
  assert builder.info.metadata['attribute_names'] == ALL_NAMES[:51]
  assert builder.info.features['labels'].shape == (51,)
  trainval = [r - 1 for r in PARTITIONS[partition]['trainval']]
  expected_rows = {
    'train': [r for r in trainval if not _held_out(r)],
    'validation': [r for r in trainval if _held_out(r)],
    'trainval': trainval,
    'test': [r - 1 for r in PARTITIONS[partition]['test']],
  }
  assert sorted(builder.info.splits) == sorted(expected_rows)
  for split, rows in expected_rows.items():
    assert_split(builder, split, rows, NAMES, _expected_labels, _colour)
  all_labels = np.stack([e['labels'] for e in sorted_examples(builder, 'trainval')])
  assert (all_labels == -1).any()  # Row 2's uncertain gender.


def test_trainval_field_name(tmp_path):
  """A partition struct whose trainval field is called `trainval` reads the same."""
  root = tmp_path / 'raw'
  _write_fixture(root, trainval_field='trainval')
  annotation = rap1.read_rap1_mat(root / 'RAP_annotation/RAP_annotation.mat')
  np.testing.assert_array_equal(
    annotation.partitions[1]['trainval'], np.asarray(PARTITIONS[1]['trainval']) - 1
  )
  np.testing.assert_array_equal(
    annotation.partitions[0]['test'], np.asarray(PARTITIONS[0]['test']) - 1
  )
  assert len(annotation.partitions) == 5


def test_missing_annotation(tmp_path):
  (tmp_path / 'raw/RAP_dataset').mkdir(parents=True)
  with pytest.raises(DataError) as e:
    build(rap1.Rap1, tmp_path / 'raw', tmp_path / 'tfds')
  missing = str(e.value).split('Expected layout')[0]
  assert 'RAP_annotation.mat' in missing and 'RAP_dataset' not in missing
  assert 'http://www.rapdataset.com/' in str(e.value)


def test_wrong_label_width(tmp_path):
  root = tmp_path / 'raw'
  _write_fixture(root, label=LABEL[:, :91])
  with pytest.raises(DataError) as e:
    rap1.read_rap1_mat(root / 'RAP_annotation/RAP_annotation.mat')
  assert str(root / 'RAP_annotation/RAP_annotation.mat') in str(e.value)
  assert 'RAP_annotation.label has 91 columns' in str(e.value)


def test_unexpected_label_value(tmp_path):
  root = tmp_path / 'raw'
  label = LABEL.copy()
  label[4, 7] = 3
  _write_fixture(root, label=label)
  with pytest.raises(DataError, match='row 5, column 8'):
    rap1.read_rap1_mat(root / 'RAP_annotation/RAP_annotation.mat')
