"""Tests of the PA-100K builder on a tiny fixture in the official annotation.mat format."""

import functools
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from PIL import Image

from jaxattr.data import pa100k
from jaxattr.data.common import DataError
from tests.conftest import build, sorted_examples

NAMES = (
  'Female AgeOver60 Age18-60 AgeLess18 Front Side Back Hat Glasses HandBag ShoulderBag '
  'Backpack HoldObjectsInFront ShortSleeve LongSleeve UpperStride UpperLogo UpperPlaid '
  'UpperSplice LowerStripe LowerPattern LongCoat Trousers Shorts Skirt&Dress boots'
).split()
SIZES = {'train': 4, 'val': 2, 'test': 3}
_RNG = np.random.default_rng(1)
LABELS = {k: _RNG.integers(0, 2, size=(n, 26)).astype(np.uint8) for k, n in SIZES.items()}
# Official names are 1..100000 with train first; the fixture keeps that pattern.
FILES = {}
_first = 1
for _k, _n in SIZES.items():
  FILES[_k] = [f'{i:06d}.jpg' for i in range(_first, _first + _n)]
  _first += _n


def _colour(name: str) -> tuple[int, int, int]:
  i = int(name[:6])
  return (20 * i, 100, 250 - 20 * i)


def _cell(strings):
  cell = np.empty((len(strings), 1), dtype=object)
  cell[:, 0] = strings
  return cell


def _write_fixture(root: Path, labels=None) -> None:
  labels = labels or LABELS
  (root / 'data').mkdir(parents=True)
  for names in FILES.values():
    for name in names:
      pixels = np.full((16, 8, 3), _colour(name), np.uint8)
      Image.fromarray(pixels).save(root / 'data' / name, quality=95)
  contents = {'attributes': _cell(NAMES)}
  for split in SIZES:
    contents[f'{split}_images_name'] = _cell(FILES[split])
    contents[f'{split}_label'] = labels[split]
  scipy.io.savemat(root / 'annotation.mat', contents)


_build = functools.partial(build, pa100k.Pa100k)


def test_build(tmp_path):
  root = tmp_path / 'raw'
  _write_fixture(root)
  builder = _build(root, tmp_path / 'tfds')
  assert builder.info.metadata['attribute_names'] == NAMES
  counts = {s: i.num_examples for s, i in builder.info.splits.items()}
  assert counts == {'train': 4, 'validation': 2, 'test': 3}
  for split, field in (('train', 'train'), ('validation', 'val'), ('test', 'test')):
    examples = sorted_examples(builder, split)
    assert [int(e['index']) for e in examples] == list(range(SIZES[field]))
    assert [e['image_id'].decode() for e in examples] == [f'data/{n}' for n in FILES[field]]
    np.testing.assert_array_equal(np.stack([e['labels'] for e in examples]), LABELS[field])
    for example, name in zip(examples, FILES[field], strict=True):
      assert example['image'].shape == (16, 8, 3)
      np.testing.assert_allclose(example['image'].reshape(-1, 3).mean(0), _colour(name), atol=3)
  # RGB JPEG sources are stored byte for byte.
  raw = sorted_examples(builder, 'train', decoders={'image': tfds.decode.SkipDecoding()})
  assert raw[0]['image'] == (root / 'data' / FILES['train'][0]).read_bytes()


def test_missing_manual_files(tmp_path):
  (tmp_path / 'raw/data').mkdir(parents=True)
  (tmp_path / 'raw/data/000001.jpg').write_bytes(b'')
  with pytest.raises(DataError) as e:
    _build(tmp_path / 'raw', tmp_path / 'tfds')
  assert 'annotation.mat' in str(e.value).split('Expected layout')[0]
  assert 'https://github.com/xh-liu/HydraPlus-Net' in str(e.value)


def test_corrupt_jpeg(tmp_path):
  root = tmp_path / 'raw'
  _write_fixture(root)
  corrupt = root / 'data' / FILES['test'][1]
  corrupt.write_bytes(corrupt.read_bytes()[:100])
  with pytest.raises(DataError, match=str(corrupt)):
    _build(root, tmp_path / 'tfds')


def test_wrong_label_width(tmp_path):
  root = tmp_path / 'raw'
  labels = dict(LABELS, val=LABELS['val'][:, :25])
  _write_fixture(root, labels)
  with pytest.raises(DataError) as e:
    pa100k.read_pa100k_mat(root / 'annotation.mat')
  assert str(root / 'annotation.mat') in str(e.value)
  assert 'val_label has 25 columns' in str(e.value)


def test_labels_must_be_binary(tmp_path):
  root = tmp_path / 'raw'
  bad = LABELS['test'].copy()
  bad[2, 5] = 3
  _write_fixture(root, dict(LABELS, test=bad))
  with pytest.raises(DataError, match='test_label row 3, column 6'):
    pa100k.read_pa100k_mat(root / 'annotation.mat')
