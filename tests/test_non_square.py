"""Non-square input end to end: the config field, the pipeline's options, the heads' grids.

Expected values come from hand computation and numpy (the padding, the boxes, the
pad-and-crop windows), from torch (`F.interpolate` for ViT's position embedding) and
from the architecture (a ResNet's and a ViT's grids at 256x192 are H/16 x W/16 and
H/32 x W/32, resp. H/16 x W/16 twice). The slow test trains configs/test.py at
(64, 32) with the real `python -m jaxattr.main` and runs predict, export (StableHLO and
ONNX) and the attention figure on it.
"""

import io
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import torch
import torch.nn.functional as F
from absl import flags
from ml_collections import config_flags
from PIL import Image

from jaxattr import export, inference, predict, schema
from jaxattr.data import input_pipeline
from jaxattr.models import model as model_lib
from jaxattr.models import vit
from tests.conftest import REPO, main_command, run_tool, tool_env

MEAN_PIXEL = (124, 116, 104)  # The ImageNet mean x 255, rounded: what keep_aspect pads with.


def _data_config(**fields) -> ml_collections.ConfigDict:
  config = schema.defaults().data
  config.update(fields)
  return config


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- The config field ----------------------------------------------------------------------


def _parse(monkeypatch, *overrides: str) -> ml_collections.ConfigDict:
  """configs/test.py with command-line overrides, parsed by ml_collections as main does."""
  argv = ['prog', f'--config={REPO / "configs" / "test.py"}', *overrides]
  monkeypatch.setattr(sys, 'argv', argv)  # config_flags reads the overrides from sys.argv.
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=values, lock_config=True)
  values(argv)
  return values.config


# ml_collections' config_flags loads config files with importlib's deprecated load_module().
@pytest.mark.filterwarnings('ignore:the load_module\\(\\) method is deprecated:DeprecationWarning')
def test_image_size_override_parses_an_int_and_a_height_width_pair(monkeypatch):
  assert _parse(monkeypatch, '--config.data.image_size=(64, 32)').data.image_size == (64, 32)
  assert _parse(monkeypatch, '--config.data.image_size=48').data.image_size == 48
  assert _parse(monkeypatch).data.image_size == 64


def test_image_size_check_and_image_hw():
  config = schema.load_recipe('test').get_config()
  for good, hw in ((64, (64, 64)), ((64, 32), (64, 32)), ([256, 192], (256, 192))):
    config.data.image_size = good
    assert schema.validate(config) == []
    assert schema.image_hw(config.data) == hw
  for bad in ((64,), (64, 0), (64.0, 32), 'x'):
    config.data.image_size = bad
    assert schema.validate(config) == [
      f'config.data.image_size: must be a positive integer or (height, width) of two, got {bad!r}'
    ]


def test_vit_input_must_be_whole_patches():
  config = schema.load_recipe('test').get_config()
  config.model.backbone, config.model.width = 'vit_b_16', 0.0625
  config.data.image_size = (64, 32)
  assert schema.validate(config) == []
  config.data.image_size = (60, 32)
  assert schema.validate(config) == [
    'config.data.image_size: vit_b_16 needs multiples of its patch size 16, got (60, 32)'
  ]


@pytest.mark.parametrize('recipe', ['peta', 'pa100k', 'rap2', 'peers'])
def test_rethinking_argument_takes_their_input(recipe):
  arg = 'peta,rethinking' if recipe == 'peers' else 'rethinking'
  config = schema.load_recipe(recipe).get_config(arg)
  # Rethinking_of_PAR: HEIGHT 256, WIDTH 192, T.Pad(10), ImageNet mean and std.
  assert schema.image_hw(config.data) == (256, 192)
  assert config.data.augment == 'rethinking' and config.data.crop_padding == 10
  assert not config.data.keep_aspect
  assert tuple(config.data.mean) == (0.485, 0.456, 0.406)
  assert tuple(config.data.std) == (0.229, 0.224, 0.225)
  assert schema.validate(config) == []


# --- Preprocessing ----------------------------------------------------------------------------


def test_pad_to_aspect_by_hand():
  # 6x2 to 2:1 is too tall by one column: it goes on the right (the odd pixel after).
  image = np.arange(12, dtype=np.uint8).reshape(6, 2, 1).repeat(3, axis=2)
  fill = (7, 8, 9)
  got = input_pipeline.pad_to_aspect(tf.constant(image), (2, 1), fill).numpy()
  expected = np.empty((6, 3, 3), np.uint8)
  expected[:, :2] = image
  expected[:, 2] = fill
  np.testing.assert_array_equal(got, expected)
  # 2x8 to 2:1 needs 14 more rows: 7 above, 7 below.
  got = input_pipeline.pad_to_aspect(tf.constant(_noise(2, 8)), (2, 1), fill).numpy()
  assert got.shape == (16, 8, 3)
  np.testing.assert_array_equal(got[7:9], _noise(2, 8))
  assert (got[:7] == fill).all() and (got[9:] == fill).all()


@pytest.mark.parametrize('shape', [(150, 50), (50, 150), (97, 41), (40, 20), (33, 10)])
@pytest.mark.parametrize('hw', [(160, 80), (64, 32), (32, 32), (30, 45)])
def test_pad_to_aspect_tensorflow_and_numpy_agree(shape, hw):
  """The pipeline's padding (TensorFlow) and predict's ONNX path's (numpy): the same pixels."""
  image = _noise(*shape)
  got = input_pipeline.pad_to_aspect(tf.constant(image), hw, MEAN_PIXEL).numpy()
  np.testing.assert_array_equal(got, predict.pad_to_aspect(image, hw, MEAN_PIXEL))
  # The aspect is the target's to within one pixel, and the image is whole inside.
  h, w = got.shape[:2]
  assert abs(h * hw[1] / hw[0] - w) <= 0.5 + 1e-9 or abs(w * hw[0] / hw[1] - h) <= 0.5 + 1e-9
  assert h >= shape[0] and w >= shape[1] and (h == shape[0] or w == shape[1])


def test_keep_aspect_eval_pads_with_the_mean_pixel_then_resizes():
  image = _noise(30, 6)
  config = _data_config(image_size=(16, 8), keep_aspect=True)
  assert schema.pad_fill(config) == MEAN_PIXEL
  got = input_pipeline.eval_preprocess(tf.constant(image), config).numpy()
  # By hand: 30x6 to 2:1 is 30x15, 9 columns of the mean pixel (4 left, 5 right).
  padded = np.empty((30, 15, 3), np.uint8)
  padded[...] = MEAN_PIXEL
  padded[:, 4:10] = image
  expected = predict.resize(padded, (16, 8))  # The numpy resize (one level of rounding).
  assert np.abs(got.astype(int) - expected).max() <= 1
  # Off: the same image is stretched, and no fill appears.
  stretched = input_pipeline.eval_preprocess(tf.constant(image), _data_config(image_size=(16, 8)))
  assert np.abs(stretched.numpy().astype(int) - predict.resize(image, (16, 8))).max() <= 1


def test_boxes_follow_the_padding_by_hand():
  size = tf.constant([150, 50])
  paddings = input_pipeline.aspect_padding(size, (160, 80))
  # 150x50 to 2:1: 75 wide, 25 columns, 12 left and 13 right.
  np.testing.assert_array_equal(paddings.numpy(), [[0, 0], [12, 13]])
  boxes = tf.constant([[0.0, 0.0, 1.0, 1.0], [0.2, 0.5, 0.4, 0.7]])
  got = input_pipeline.boxes_after_padding(boxes, size, paddings).numpy()
  expected = [[0, 12 / 75, 1, 62 / 75], [0.2, (12 + 25) / 75, 0.4, (12 + 35) / 75]]
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def _windows(image: np.ndarray, pad: int, hw: tuple[int, int]) -> dict[tuple, np.ndarray]:
  """Every outcome of pad-crop-flip by numpy: {(y0, x0, flipped): window}."""
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))  # Zeros, as torchvision's T.Pad.
  out = {}
  for y0 in range(2 * pad + 1):
    for x0 in range(2 * pad + 1):
      window = padded[y0 : y0 + hw[0], x0 : x0 + hw[1]]
      out[(y0, x0, False)] = window
      out[(y0, x0, True)] = window[:, ::-1]
  return out


def test_rethinking_augment_is_pad_crop_flip():
  """Each output is one of numpy's pad-and-crop windows (flipped or not), all of them reached."""
  hw, pad = (12, 8), 2
  image = _noise(*hw)  # Already at image_size: the resize is the identity.
  config = _data_config(image_size=hw, augment='rethinking', crop_padding=pad)
  windows = _windows(image, pad, hw)
  seen = set()
  for i in range(400):
    got = input_pipeline.train_preprocess(tf.constant(image), tf.constant([i, 7]), config).numpy()
    matches = [k for k, w in windows.items() if np.array_equal(got, w)]
    assert len(matches) == 1, i
    seen.add(matches[0])
  # Every offset in [0, 2 * pad] on both axes is reached, and both flips: a uniform draw
  # misses one of the 25 offsets in 400 draws with probability 25 x 0.96^400 < 1e-5.
  assert {(y, x) for y, x, _ in seen} == {(y, x) for y in range(5) for x in range(5)}
  assert {f for _, _, f in seen} == {False, True}


def test_rethinking_augment_resizes_first():
  """A larger image is resized to image_size (the eval resize), then padded and cropped."""
  hw, pad = (12, 8), 3
  image = _noise(40, 17, seed=1)
  config = _data_config(image_size=hw, augment='rethinking', crop_padding=pad, random_flip=False)
  resized = input_pipeline.eval_preprocess(tf.constant(image), _data_config(image_size=hw))
  windows = _windows(resized.numpy(), pad, hw)
  got = input_pipeline.train_preprocess(tf.constant(image), tf.constant([3, 4]), config).numpy()
  assert any(np.array_equal(got, w) for w in windows.values())


def test_paper_augment_at_full_crop_is_the_eval_resize_at_any_aspect():
  """With crop_min = crop_max = resize_size and no flip the window is the whole image."""
  image = _noise(50, 23, seed=2)
  for hw in ((16, 8), (12, 12), (9, 15)):
    config = _data_config(
      image_size=hw, resize_size=20, crop_min=20, crop_max=20, random_flip=False
    )
    got = input_pipeline.train_preprocess(tf.constant(image), tf.constant([5, 6]), config).numpy()
    expected = input_pipeline.eval_preprocess(tf.constant(image), config).numpy()
    np.testing.assert_array_equal(got, expected)


def test_paper_augment_crop_takes_the_aspect():
  """A 2:1 crop of a 2:1 image whose pixels give their own coordinates: the window is 2:1."""
  height, width = 200, 100
  rows, cols = np.mgrid[0:height, 0:width]
  # Channel 0: the row in units of 200/255, channel 1: the column in units of 100/255.
  image = np.stack([rows * 255 // (height - 1), cols * 255 // (width - 1), 0 * rows], -1)
  image = image.astype(np.uint8)
  config = _data_config(
    image_size=(40, 20), resize_size=40, crop_min=20, crop_max=20, random_flip=False
  )
  got = input_pipeline.train_preprocess(tf.constant(image), tf.constant([1, 2]), config).numpy()
  # The crop is half the resized image along both axes: the rows and columns it covers
  # span about half of the source's range each.
  row_span = (int(got[-1, 0, 0]) - int(got[0, 0, 0])) / 255
  col_span = (int(got[0, -1, 1]) - int(got[0, 0, 1])) / 255
  assert abs(row_span - 0.5) < 0.05 and abs(col_span - 0.5) < 0.05


# --- Model: grids and the position embedding ------------------------------------------------


def _model_shapes(recipe_arg: str, backbone: str, width: float, depth: float = 1.0):
  config = schema.load_recipe('peta').get_config(recipe_arg)
  config.model.backbone, config.model.width, config.model.depth = backbone, width, depth
  model = model_lib.create_model(config.model, 5)
  images = jnp.zeros((1, *schema.image_hw(config.data), 3))  # As train.create_train_state.
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  outputs = jax.eval_shape(lambda v: model.apply(v, images, train=False), variables)
  return variables['params'], outputs


@pytest.mark.parametrize(
  'backbone, width, depth, grids',
  [
    ('resnet18', 0.0625, 1.0, {3: (16, 12), 4: (8, 6)}),  # Strides 16 and 32.
    ('vit_b_16', 0.0625, 0.25, {3: (16, 12), 4: (16, 12)}),  # Patches of 16, both taps.
    ('swin_t', 0.125, 1.0, {3: (16, 12), 4: (8, 6)}),  # Padded to its windows inside.
  ],
)
def test_heads_grids_at_256x192(backbone, width, depth, grids):
  params, outputs = _model_shapes('rethinking', backbone, width, depth)
  for level, mask in zip((3, 4), outputs['masks'], strict=True):
    assert mask.shape == (1, *grids[level], 5)
    # The attention classifier's last convolution covers the whole H/s x W/s map.
    kernel = params[f'attention{level}']['classifier']['conv3']['kernel']
    assert kernel.shape[:2] == grids[level]
  assert outputs['logits'].shape == (1, 5)


def test_vit_position_embedding_resizes_to_a_non_square_grid_as_torch():
  """14x14 -> 16x12 (256x192): torch's `F.interpolate(bicubic, align_corners=True)`."""
  grid = np.random.default_rng(0).normal(size=(14, 14, 6))
  got = vit.resize_grid(jnp.asarray(grid), (16, 12))
  expected = F.interpolate(
    torch.from_numpy(grid).permute(2, 0, 1)[None],
    size=(16, 12),
    mode='bicubic',
    align_corners=True,
  )[0].permute(1, 2, 0)
  np.testing.assert_allclose(np.asarray(got), expected.numpy(), rtol=0, atol=1e-5)


# --- Predict: the same padding as evaluation ---------------------------------------------------


def test_predict_pads_as_the_evaluation_does(tmp_path):
  """predict's crop (padded in numpy, resized by the pipeline) is eval_preprocess's input."""
  image = _noise(45, 14, seed=3)
  path = tmp_path / 'person.png'
  Image.fromarray(image).save(path)
  config = _data_config(image_size=(32, 16), keep_aspect=True)
  predictor = inference.Predictor(
    lambda v, x: {'probs': x},
    None,
    names=['a'],
    image_size=(32, 16),
    levels=(),
    pad_fill=schema.pad_fill(config),
  )
  assert predictor.image_size == (32, 16) and predictor.pad_fill == MEAN_PIXEL
  resizer = predict._Resizer(predict._image_config(predictor.image_size))
  crop, resized = predict.load_image(
    path, None, resizer, pad=lambda x: predict.pad_to_aspect(x, (32, 16), MEAN_PIXEL)
  )
  # The figure is drawn on the padded crop: 45 x 16 / 32 = 22.5 columns, rounded to even.
  assert crop.shape == (45, 22, 3)
  expected = input_pipeline.eval_preprocess(tf.constant(image), config).numpy()
  np.testing.assert_array_equal(resized, expected)


# --- End to end ---------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tall_run(tmp_path_factory, data_dir):
  """`python -m jaxattr.main --config=configs/test.py` at (64, 32), with the attention grid."""
  workdir = tmp_path_factory.mktemp('tall') / 'run'
  flags = ('--config.data.image_size=(64, 32)', '--config.eval.attention_grid=True')
  command = main_command(data_dir, workdir, *flags)
  proc = subprocess.run(
    command, cwd=REPO, capture_output=True, text=True, env=tool_env(), timeout=900
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


@pytest.mark.slow
def test_tall_run_trains_predicts_exports_and_draws(tall_run, tmp_path):
  workdir = tall_run
  results = json.loads((workdir / 'results.json').read_text())
  assert np.isfinite(results['test']['map_voc'])
  grids = {k: v['grid'] for k, v in results['test']['pointing_game'].items()}
  # The pointing game's cells: 64x32 at strides 16 and 32.
  assert grids['weighted_3'] == [4, 2] and grids['weighted_4'] == [2, 1]
  with Image.open(workdir / 'attention.png') as png:
    assert png.size[0] > 0

  person = tmp_path / 'person.png'
  Image.fromarray(_noise(90, 40, seed=4)).save(person)
  predictor = inference.Predictor.from_workdir(workdir, batch_size=2, tuned_thresholds=False)
  assert predictor.image_size == (64, 32)
  out = io.StringIO()
  figure = tmp_path / 'att.png'
  failures = predict.predict(predictor, [str(person)], as_json=True, attention=str(figure), out=out)
  assert failures == 0
  probs = json.loads(out.getvalue())['probabilities']
  with Image.open(figure) as png:
    assert png.size[0] > 0

  for fmt, name in (('stablehlo', 'model.bin'), ('onnx', 'model.onnx')):
    proc = run_tool(
      'jaxattr.export', f'--workdir={workdir}', f'--output={tmp_path / name}', f'--format={fmt}'
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '64x32 input' in proc.stdout
    loaded = export.load(tmp_path / name, batch_size=2)
    assert loaded.image_size == (64, 32) and loaded.pad_fill is None
    out = io.StringIO()
    assert predict.predict(loaded, [str(person)], as_json=True, out=out) == 0
    got = json.loads(out.getvalue())['probabilities']
    # ONNX decodes with PIL and resizes in numpy; a PNG decodes alike, the resize may
    # differ by one level.
    np.testing.assert_allclose([got[k] for k in probs], list(probs.values()), atol=2e-3)
  header, _, _ = export.read(tmp_path / 'model.bin')
  assert header['image_size'] == [64, 32] and header['pad_fill'] is None
