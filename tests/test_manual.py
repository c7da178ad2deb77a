"""Tests of the manual-download helpers: images.py, matlab.py and manual.py's error messages."""

import io
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from jaxattr.data import images, manual, matlab
from jaxattr.data.common import DataError


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format=fmt)
  return buffer.getvalue()


def _decoded(data: bytes) -> Image.Image:
  image = Image.open(io.BytesIO(data))
  image.load()
  return image


def test_read_image_errors_name_the_file(tmp_path):
  with pytest.raises(DataError, match=f'{tmp_path / "absent.jpg"}: image file is missing'):
    images.read_image(tmp_path / 'absent.jpg')
  corrupt = tmp_path / 'corrupt.png'
  corrupt.write_bytes(_encoded(np.zeros((20, 20, 3), np.uint8), 'PNG')[:40])
  with pytest.raises(DataError, match=f'{corrupt}: corrupt or unreadable image'):
    images.read_image(corrupt)
  text = tmp_path / 'text.jpg'
  text.write_text('hello')
  with pytest.raises(DataError, match=str(text)):
    images.read_image(text)


def test_stored_bytes_keeps_or_reencodes(tmp_path):
  rgb = np.zeros((4, 6, 3), np.uint8)
  rgb[:, :, 1] = 150
  for fmt, name in (('JPEG', 'jpeg'), ('PNG', 'png')):
    path = tmp_path / f'rgb.{name}'
    path.write_bytes(_encoded(rgb, fmt))
    raw, image = images.read_image(path)
    assert images.stored_bytes(raw, image, name) == raw  # Kept byte for byte.
  # PNG source stored as JPEG, and JPEG source stored as PNG: re-encoded.
  raw, image = images.read_image(tmp_path / 'rgb.png')
  as_jpeg = _decoded(images.stored_bytes(raw, image, 'jpeg'))
  assert as_jpeg.format == 'JPEG' and as_jpeg.mode == 'RGB' and as_jpeg.size == (6, 4)
  raw, image = images.read_image(tmp_path / 'rgb.jpeg')
  assert _decoded(images.stored_bytes(raw, image, 'png')).format == 'PNG'
  # Grayscale and RGBA sources are stored as RGB.
  grey = tmp_path / 'grey.jpg'
  grey.write_bytes(_encoded(np.full((4, 6), 99, np.uint8), 'JPEG'))
  raw, image = images.read_image(grey)
  stored = _decoded(images.stored_bytes(raw, image, 'jpeg'))
  assert stored.mode == 'RGB'
  np.testing.assert_allclose(np.asarray(stored).mean((0, 1)), (99, 99, 99), atol=2)
  rgba = tmp_path / 'rgba.png'
  rgba.write_bytes(_encoded(np.full((4, 6, 4), (1, 2, 3, 200), np.uint8), 'PNG'))
  raw, image = images.read_image(rgba)
  stored = _decoded(images.stored_bytes(raw, image, 'png'))
  assert stored.mode == 'RGB'
  np.testing.assert_array_equal(np.asarray(stored)[0, 0], (1, 2, 3))


def test_incomplete_error_lists_and_summarises():
  missing = [f'file{i}' for i in range(25)]
  error = manual.incomplete_error('X', '/data/x', missing, 'line one\nline two', 'X, http://x.org')
  message = str(error)
  assert message.startswith('X: the manual download at /data/x is missing or incomplete.')
  assert '  - file19' in message and 'file20' not in message
  assert '... and 5 more (25 in all).' in message
  assert '  line one\n  line two' in message
  assert 'http://x.org' in message and '--config.data.manual_dir' in message


def _round_trip(tmp_path: Path, variables: dict) -> dict:
  scipy.io.savemat(tmp_path / 'x.mat', variables)
  return matlab.load_mat(tmp_path / 'x.mat')


def test_mat_helpers(tmp_path):
  column = np.empty((3, 1), dtype=object)
  column[:, 0] = ['a', 'bb', 'c c']
  row = np.empty((1, 2), dtype=object)
  row[0, :] = ['x', 'yy']
  loaded = _round_trip(
    tmp_path,
    {
      's': {'names': column, 'row': row, 'idx': np.array([[1.0, 5.0, 3.0]])},
      'col': np.array([[4], [2]], np.uint16),
      'frac': np.array([[1.5]]),
      'm': np.ones((2, 3)),
    },
  )
  path = tmp_path / 'x.mat'
  assert matlab.mat_strings(matlab.mat_field(loaded['s'], 'names', path), path, 'n') == [
    'a',
    'bb',
    'c c',
  ]
  assert matlab.mat_strings(matlab.mat_field(loaded['s'], 'row', path), path, 'r') == ['x', 'yy']
  idx = matlab.mat_ints(matlab.mat_field(loaded['s'], 'idx', path), path, 'idx')
  np.testing.assert_array_equal(idx, [1, 5, 3])
  assert idx.dtype == np.int64
  np.testing.assert_array_equal(matlab.mat_ints(loaded['col'], path, 'col'), [4, 2])
  with pytest.raises(DataError, match='frac should hold whole numbers'):
    matlab.mat_ints(loaded['frac'], path, 'frac')
  with pytest.raises(DataError, match="field 'absent'"):
    matlab.mat_field(loaded['s'], 'absent', path)
  with pytest.raises(DataError, match='m has 3 columns'):
    matlab.mat_matrix(loaded['m'], path, 'm', (2, 4))
  with pytest.raises(DataError, match='m has 2 rows'):
    matlab.mat_matrix(loaded['m'], path, 'm', (5, None))
  with pytest.raises(DataError, match='cell array of strings'):
    matlab.mat_strings(loaded['m'], path, 'm')


def test_load_mat_errors(tmp_path):
  with pytest.raises(DataError, match='annotation file is missing'):
    matlab.load_mat(tmp_path / 'absent.mat')
  garbage = tmp_path / 'garbage.mat'
  garbage.write_bytes(b'\x00' * 10)
  with pytest.raises(DataError, match=str(garbage)):
    matlab.load_mat(garbage)


def test_check_values_names_row_and_column(tmp_path):
  labels = np.array([[0, 1], [1, 7]])
  with pytest.raises(DataError, match=r'x row 2, column 2 holds 7; allowed values are \[0, 1\]'):
    matlab.check_values(labels, (0, 1), tmp_path, 'x')
  matlab.check_values(labels[:1], (0, 1), tmp_path, 'x')
