"""Tests of the image-file checks (jaxattr/data/images.py): the pixel limit.

The oversized image is a 20,000 x 20,000 PNG (400 megapixels, 1.2 GB as RGB)
written without its pixels (`write_blank_png`); nothing in these tests may
decode it, or the test process would need that memory.
"""

import io
import json

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxattr.data import custom, images
from jaxattr.data.common import DataError
from tests.conftest import sorted_examples, write_blank_png

HUGE = 20_000


@pytest.fixture(scope='module')
def huge_png(tmp_path_factory):
  path = tmp_path_factory.mktemp('huge') / 'huge.png'
  write_blank_png(path, HUGE, HUGE)
  return path


def _jpeg(colour, size=(6, 10)) -> bytes:
  buffer = io.BytesIO()
  Image.new('RGB', size, colour).save(buffer, format='JPEG', quality=95)
  return buffer.getvalue()


def test_blank_png_helper_writes_the_size_it_says(tmp_path):
  # The helper itself, on an image small enough to decode: all black, right size.
  write_blank_png(tmp_path / 'small.png', 13, 7)
  image = Image.open(tmp_path / 'small.png')
  image.load()
  assert image.size == (13, 7)
  assert not np.asarray(image).any()


def test_limit_is_checked_from_the_header(huge_png):
  data = huge_png.read_bytes()
  assert len(data) < 300_000  # A small file ...
  message = images.oversize_error(data, huge_png)
  assert message is not None and message.startswith(f'{huge_png}: ')
  assert '\n' not in message
  # ... refused by PIL's own bomb limit (2 x 89.5 MP), reported as ours.
  assert '400000000 pixels' in message
  # Between our limit and PIL's: our message, with the size.
  small = _jpeg((10, 20, 30), size=(11, 10))
  assert images.oversize_error(small, 'x.jpg') is None
  assert images.oversize_error(small, 'x.jpg', max_pixels=110) is None  # 11 x 10 = 110: allowed.
  refused = images.oversize_error(small, 'x.jpg', max_pixels=109)
  assert refused.startswith('x.jpg: image of 11x10 pixels') and 'limit' in refused
  # Not an image: left to the decoder, which names it.
  assert images.oversize_error(b'not an image', 'y.jpg') is None


def test_read_image_refuses_before_decoding(huge_png, tmp_path):
  with pytest.raises(DataError, match=f'^{huge_png}: image too large'):
    images.read_image(huge_png)
  path = tmp_path / 'small.jpg'
  path.write_bytes(_jpeg((1, 2, 3)))
  raw, image = images.read_image(path)
  assert image.size == (6, 10) and raw == path.read_bytes()
  with pytest.raises(DataError, match=f'^{path}: image of 6x10 pixels'):
    images.read_image(path, max_pixels=59)


def _manual(root, huge_png):
  """A custom CSV dataset: two normal train images and the huge one."""
  root.mkdir()
  (root / 'a.jpg').write_bytes(_jpeg((200, 0, 0)))
  (root / 'b.jpg').write_bytes(_jpeg((0, 0, 200)))
  (root / 'huge.png').write_bytes(huge_png.read_bytes())
  lines = ['image,split,Red', 'a.jpg,train,1', 'huge.png,train,0', 'b.jpg,train,0']
  (root / 'labels.csv').write_text('\n'.join(lines) + '\n')


def test_builder_refuses_the_oversized_image_by_name(huge_png, tmp_path):
  root = tmp_path / 'raw'
  _manual(root, huge_png)
  config = tfds.download.DownloadConfig(manual_dir=str(root))
  builder = custom.CustomAttributes(data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(DataError, match=f'{root / "huge.png"}: image too large'):
    builder.download_and_prepare(download_config=config)
  # With skip_bad_images it is left out (and listed) like any bad image.
  builder = custom.CustomAttributes(data_dir=str(tmp_path / 'tfds2'), skip_bad_images=True)
  builder.download_and_prepare(download_config=config)
  assert [e['image_id'].decode() for e in sorted_examples(builder, 'train')] == ['a.jpg', 'b.jpg']
  # The limit is the builder's to set.
  builder = custom.CustomAttributes(data_dir=str(tmp_path / 'tfds3'), max_image_pixels=59)
  with pytest.raises(DataError, match=f'{root / "a.jpg"}: image of 6x10 pixels'):
    builder.download_and_prepare(download_config=config)


def test_predict_names_the_oversized_image_and_predicts_the_others(huge_png, tmp_path):
  from jaxattr import inference, predict

  folder = tmp_path / 'photos'
  folder.mkdir()
  (folder / 'a.jpg').write_bytes(_jpeg((255, 255, 255), size=(16, 16)))
  (folder / 'b.png').write_bytes(huge_png.read_bytes())
  (folder / 'c.jpg').write_bytes(_jpeg((0, 0, 0), size=(16, 16)))

  def infer(variables, batch):
    # A stand-in model: the probability of 'bright' is the mean pixel / 255.
    bright = batch.astype(np.float32).mean(axis=(1, 2, 3)) / 255.0
    return {'probs': bright[:, None] * variables, 'masks': (), 'confidences': ()}

  predictor = inference.Predictor(
    infer, np.float32(1.0), names=['bright'], image_size=8, levels=(), batch_size=2
  )
  out, err = io.StringIO(), io.StringIO()
  failures = predict.predict(predictor, [str(folder)], as_json=True, out=out, err=err)
  assert failures == 1
  lines = err.getvalue().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: {folder / "b.png"}: image too large')
  records = [json.loads(line) for line in out.getvalue().splitlines()]
  assert [r['path'] for r in records] == [str(folder / 'a.jpg'), str(folder / 'c.jpg')]
  # White and black constant images (JPEG keeps a constant block within 1 level).
  np.testing.assert_allclose(records[0]['probabilities']['bright'], 1.0, atol=1 / 255)
  np.testing.assert_allclose(records[1]['probabilities']['bright'], 0.0, atol=1 / 255)


def test_the_config_limit_reaches_the_manual_builders(huge_png, tmp_path):
  from jaxattr.data import input_pipeline

  root = tmp_path / 'raw'
  _manual(root, huge_png)
  data = ml_collections.ConfigDict(
    {
      'name': 'custom_attributes',
      'builder_config': '',
      'data_dir': str(tmp_path / 'tfds'),
      'manual_dir': str(root),
      'max_image_pixels': 59,
    }
  )
  builder = input_pipeline.get_builder(data)
  with pytest.raises(DataError, match=f'{root / "a.jpg"}: image of 6x10 pixels'):
    input_pipeline.prepare(builder, data)
