"""Tests of the WIDER-Attribute builder on tiny fixtures in the official format."""

import functools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxattr.data import wider
from jaxattr.data.common import DataError
from tests.conftest import build, sorted_examples

RED = (255, 0, 0)
GREY = (128, 128, 128)
BLUE = (0, 0, 255)

# Official values 1 / -1 / 0 and, written out by hand, the canonical 1 / 0 / -1.
ATTR_A = [1, -1, 0, 1, -1, -1, 0, 1, 1, -1, 0, 0, 1, -1]
CANON_A = [1, 0, -1, 1, 0, 0, -1, 1, 1, 0, -1, -1, 1, 0]
ATTR_B = [-1] * 13 + [1]
CANON_B = [0] * 13 + [1]
ATTR_C = [0] * 14
CANON_C = [-1] * 14

OFFICIAL_MAP = {
  str(i): n
  for i, n in enumerate(
    'Male longHair sunglass Hat Tshiirt longSleeve formal shorts jeans longPants skirt '
    'faceMask logo stripe'.split()
  )
}


def _image(path: Path, size, background, rect=None, colour=None, fmt='JPEG'):
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.zeros((size[1], size[0], 3), np.uint8)
  pixels[:] = background
  if rect is not None:
    x, y, w, h = rect
    pixels[y : y + h, x : x + w] = colour
  Image.fromarray(pixels).save(path, format=fmt, quality=95)


def _json(path: Path, images):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(
    json.dumps(
      {'images': images, 'attribute_id_map': OFFICIAL_MAP, 'scene_id_map': {'0': 'Parade'}}
    )
  )


def _entry(file_name, targets):
  return {
    'file_name': file_name,
    'scene_id': 0,
    'targets': [{'attribute': a, 'bbox': b} for a, b in targets],
  }


def _write_fixture(root: Path, anno_dir: str = 'wider_attribute_annotation') -> None:
  # a.jpg: 64x48 grey with a red 20x30 rectangle at (10, 8).
  _image(root / 'Image/train/0--Parade/0_Parade_a.jpg', (64, 48), GREY, (10, 8, 20, 30), RED)
  _image(root / 'Image/train/0--Parade/0_Parade_b.jpg', (40, 40), BLUE)
  _image(root / 'Image/val/0--Parade/0_Parade_c.jpg', (32, 32), GREY)
  _image(root / 'Image/test/0--Parade/0_Parade_d.jpg', (50, 30), GREY, (0, 0, 25, 30), BLUE)
  trainval = [
    _entry(
      'train/0--Parade/0_Parade_a.jpg',
      [
        (ATTR_A, [10, 8, 20, 30]),  # The red rectangle.
        (ATTR_B, [100, 100, 10, 10]),  # Outside the image: whole image.
        (ATTR_C, [50, 40, 30, 30]),  # Clipped to 14x8.
      ],
    ),
    _entry('val/0--Parade/0_Parade_c.jpg', [(ATTR_B, [0, 0, 16, 16])]),
    _entry('train/0--Parade/0_Parade_b.jpg', [(ATTR_C, [5, 5, 10, 20])]),
  ]
  test = [
    _entry(
      'test/0--Parade/0_Parade_d.jpg',
      [(ATTR_A, [0, 0, 25, 30]), (ATTR_B, [25, 0, 0, 30])],  # Second: no area.
    )
  ]
  _json(root / anno_dir / 'wider_attribute_trainval.json', trainval)
  _json(root / anno_dir / 'wider_attribute_test.json', test)


_build = functools.partial(build, wider.WiderAttribute)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('wider_raw')
  _write_fixture(root)
  return _build(root, tmp_path_factory.mktemp('wider_tfds'))


def test_splits_counts_and_index(built):
  counts = {split: info.num_examples for split, info in built.info.splits.items()}
  assert counts == {'train': 4, 'validation': 1, 'test': 2}
  for split, n in counts.items():
    assert [int(e['index']) for e in sorted_examples(built, split)] == list(range(n))


def test_attribute_names_are_canonical(built):
  # The independent check of `wider_names.ATTRIBUTE_NAMES`: the 14 names in the order
  # of the dataset's documented attribute_id_map (its 'Tshiirt' spelled 'Tshirt').
  documented = 'Male longHair sunglass Hat Tshirt longSleeve formal shorts jeans longPants'
  documented += ' skirt faceMask logo stripe'
  assert built.info.metadata['attribute_names'] == documented.split()


def test_official_order_ids_and_label_mapping(built):
  train = sorted_examples(built, 'train')
  assert [e['image_id'].decode() for e in train] == [
    'Image/train/0--Parade/0_Parade_a.jpg#0',
    'Image/train/0--Parade/0_Parade_a.jpg#1',
    'Image/train/0--Parade/0_Parade_a.jpg#2',
    'Image/train/0--Parade/0_Parade_b.jpg#0',
  ]
  np.testing.assert_array_equal(
    np.stack([e['labels'] for e in train]), np.array([CANON_A, CANON_B, CANON_C, CANON_C])
  )
  assert train[0]['labels'].dtype == np.int8
  (val,) = sorted_examples(built, 'validation')
  assert val['image_id'].decode() == 'Image/val/0--Parade/0_Parade_c.jpg#0'
  np.testing.assert_array_equal(val['labels'], CANON_B)
  test = sorted_examples(built, 'test')
  np.testing.assert_array_equal(np.stack([e['labels'] for e in test]), [CANON_A, CANON_B])


def _interior_mean(image):
  # JPEG's 2x2 chroma subsampling bleeds colour across the rectangle's edges (twice:
  # fixture and stored crop), so the colour is checked away from them.
  return image[2:-2, 2:-2].reshape(-1, 3).mean(0)


def test_crops(built):
  train = sorted_examples(built, 'train')
  red = train[0]['image']
  assert red.shape == (30, 20, 3)
  np.testing.assert_allclose(_interior_mean(red), RED, atol=4)
  outside = train[1]['image']  # Falls back to the whole 64x48 image.
  assert outside.shape == (48, 64, 3)
  assert outside.reshape(-1, 3).mean(0)[0] == pytest.approx(
    (20 * 30 * 255 + (64 * 48 - 600) * 128) / (64 * 48), abs=3
  )
  clipped = train[2]['image']
  assert clipped.shape == (8, 14, 3)
  np.testing.assert_allclose(_interior_mean(clipped), GREY, atol=4)
  blue = train[3]['image']
  assert blue.shape == (20, 10, 3)
  np.testing.assert_allclose(_interior_mean(blue), BLUE, atol=4)
  test = sorted_examples(built, 'test')
  assert test[0]['image'].shape == (30, 25, 3)
  np.testing.assert_allclose(_interior_mean(test[0]['image']), BLUE, atol=4)
  assert test[1]['image'].shape == (30, 50, 3)  # Zero width: whole image.


def test_clip_box():
  assert wider.clip_box((10, 8, 20, 30), 64, 48) == (10, 8, 30, 38)
  assert wider.clip_box((-5, -5, 10, 10), 64, 48) == (0, 0, 5, 5)
  assert wider.clip_box((1.5, 2.5, 3.0, 3.0), 64, 48) == (1, 2, 5, 6)
  assert wider.clip_box((64, 0, 10, 10), 64, 48) is None
  assert wider.clip_box((5, 5, 0, 10), 64, 48) is None
  assert wider.clip_box((5, 5, -3, 10), 64, 48) is None


@pytest.mark.parametrize('anno_dir', ['Anno', '.'])
def test_annotation_locations_and_fallback_log(tmp_path, anno_dir, caplog):
  root = tmp_path / 'raw'
  _write_fixture(root, anno_dir)
  with caplog.at_level(logging.INFO):
    builder = _build(root, tmp_path / 'tfds')
  assert builder.info.splits['train'].num_examples == 4
  lines = [r.getMessage() for r in caplog.records if 'outside the image' in r.getMessage()]
  assert len(lines) == 3  # One line per split.
  train_line = next(line for line in lines if 'wider_attribute train:' in line)
  assert '4 boxes; 1 outside' in train_line
  assert '0_Parade_a.jpg#1' in train_line
  test_line = next(line for line in lines if 'wider_attribute test:' in line)
  assert '2 boxes; 1 outside' in test_line


def test_missing_manual_dir(tmp_path):
  with pytest.raises(DataError) as e:
    _build(tmp_path / 'nothing_here', tmp_path / 'tfds')
  message = str(e.value)
  assert 'nothing_here' in message
  assert 'http://mmlab.ie.cuhk.edu.hk/projects/WIDERAttribute.html' in message
  assert 'wider_attribute_trainval.json' in message  # The layout is shown.


def test_missing_json(tmp_path):
  root = tmp_path / 'raw'
  _write_fixture(root)
  (root / 'wider_attribute_annotation/wider_attribute_test.json').unlink()
  with pytest.raises(DataError) as e:
    _build(root, tmp_path / 'tfds')
  message = str(e.value)
  assert 'wider_attribute_test.json' in message.split('Expected layout')[0]
  assert 'wider_attribute_trainval.json' not in message.split('Expected layout')[0]
  assert 'http://mmlab.ie.cuhk.edu.hk/projects/WIDERAttribute.html' in message


def test_missing_image(tmp_path):
  root = tmp_path / 'raw'
  _write_fixture(root)
  missing = root / 'Image/val/0--Parade/0_Parade_c.jpg'
  missing.unlink()
  with pytest.raises(DataError, match=str(missing)):
    _build(root, tmp_path / 'tfds')


def test_corrupt_jpeg(tmp_path):
  root = tmp_path / 'raw'
  _write_fixture(root)
  corrupt = root / 'Image/train/0--Parade/0_Parade_b.jpg'
  corrupt.write_bytes(corrupt.read_bytes()[:200])  # Truncated.
  with pytest.raises(DataError, match=str(corrupt)):
    _build(root, tmp_path / 'tfds')


def test_skip_bad_images(tmp_path):
  root = tmp_path / 'raw'
  _write_fixture(root)
  corrupt = root / 'Image/train/0--Parade/0_Parade_a.jpg'
  corrupt.write_bytes(b'\xff\xd8\xff\xe0 not a jpeg')
  builder = _build(root, tmp_path / 'tfds', skip_bad_images=True)
  train = sorted_examples(builder, 'train')
  assert [e['image_id'].decode() for e in train] == ['Image/train/0--Parade/0_Parade_b.jpg#0']
  assert [int(e['index']) for e in train] == [0]
  listed = (Path(builder.data_dir) / 'bad_images.txt').read_text().splitlines()
  assert len(listed) == 1
  assert listed[0].startswith('train\tImage/train/0--Parade/0_Parade_a.jpg\t')


def test_wrong_label_width(tmp_path):
  root = tmp_path / 'raw'
  _write_fixture(root)
  path = root / 'wider_attribute_annotation/wider_attribute_test.json'
  data = json.loads(path.read_text())
  data['images'][0]['targets'][1]['attribute'] = [1] * 13
  path.write_text(json.dumps(data))
  with pytest.raises(DataError) as e:
    _build(root, tmp_path / 'tfds')
  assert str(path) in str(e.value)
  assert 'images[0]' in str(e.value) and 'target 1' in str(e.value)
  assert '13 attribute values' in str(e.value)


def test_bad_attribute_value(tmp_path):
  path = tmp_path / 'a.json'
  _json(path, [_entry('test/x.jpg', [([2] + [0] * 13, [0, 0, 1, 1])])])
  with pytest.raises(DataError, match='must be 1, -1 or 0'):
    wider.read_wider_json(path)


def test_unexpected_attribute_map(tmp_path):
  path = tmp_path / 'a.json'
  path.write_text(json.dumps({'images': [], 'attribute_id_map': {'0': 'Female'}}))
  with pytest.raises(DataError, match='attribute_id_map'):
    wider.read_wider_json(path)
