"""Tests of the input pipeline (jaxattr/data/input_pipeline.py).

The dataset is a tiny `custom_attributes` build written into a temp dir, so the
labels, the image sizes and the image content are known here. Expected values
come from the CSV written below, from PIL resizes and from numpy, never from the
pipeline itself; the train stream is checked against itself only where the
property is self-consistency (determinism, resume, multi-process equivalence).
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from jaxattr import schema
from jaxattr.data import input_pipeline

NUM_TRAIN = 37  # 4 global batches of 8; 5 examples of each epoch's shuffle left out.
NUM_VAL = 13
GLOBAL_BATCH = 8
SPE = NUM_TRAIN // GLOBAL_BATCH
SIZE = 32
NAMES = ['every_third', 'quarter_unknown', 'mostly_unknown']
# Source sizes (h, w): upscaled, mildly downscaled, and > 2x downscaled crops.
SHAPES = [(20, 12), (40, 24), (90, 72), (31, 45)]
REFERENCE_STEPS = 2 * SPE + 4  # Uninterrupted run over two epoch boundaries.


def _labels(i: int) -> list[int]:
  """Labels of train example i: patterns whose positive ratios are easy by hand."""
  every_third = 1 if i % 3 == 0 else 0
  quarter_unknown = (-1, 1, 0, 0)[i % 4]
  mostly_unknown = -1 if i < 30 else i % 2
  return [every_third, quarter_unknown, mostly_unknown]


def _data_config(root: Path) -> object:
  config = schema.defaults().data
  config.name = 'custom_attributes'
  config.data_dir = str(root / 'tfds')
  config.manual_dir = str(root / 'manual')
  config.image_size = SIZE
  config.resize_size = 36
  config.crop_min = 16
  config.crop_max = 32
  config.prefetch = 1
  return config


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  """Builds the dataset once; returns (builder, config, csv rows per split)."""
  root = tmp_path_factory.mktemp('pipeline')
  manual = root / 'manual'
  (manual / 'images').mkdir(parents=True)
  rng = np.random.default_rng(0)
  rows = {'train': [], 'validation': []}
  lines = ['image,split,' + ','.join(NAMES)]
  for split, count in (('train', NUM_TRAIN), ('validation', NUM_VAL)):
    for i in range(count):
      h, w = SHAPES[i % len(SHAPES)]
      # Smooth random content (a coarse grid upsampled), so JPEG keeps it distinct.
      coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
      image = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
      name = f'images/{split}_{i}.png'
      image.save(manual / name)
      labels = _labels(i) if split == 'train' else [i % 2, 1 - i % 2, -1 if i % 5 == 0 else 1]
      rows[split].append((name, labels))
      lines.append(f'{name},{split},' + ','.join(str(v) for v in labels))
  (manual / 'labels.csv').write_text('\n'.join(lines) + '\n')
  config = _data_config(root)
  builder = input_pipeline.get_builder(config)
  input_pipeline.prepare(builder, config)
  return builder, config, rows


def _train(data, *, seed=0, start_step=0, process_index=0, process_count=1):
  builder, config, _ = data
  return input_pipeline.train_batches(
    builder,
    config,
    global_batch=GLOBAL_BATCH,
    seed=seed,
    start_step=start_step,
    process_index=process_index,
    process_count=process_count,
  )


def _take(iterator, n: int) -> list[dict[str, np.ndarray]]:
  return [next(iterator) for _ in range(n)]


@pytest.fixture(scope='module')
def reference(data):
  """Batches 0 .. REFERENCE_STEPS-1 of one uninterrupted single-process run (seed 0)."""
  return _take(_train(data), REFERENCE_STEPS)


def _assert_same_batches(got, want):
  assert len(got) == len(want)
  for step, (a, b) in enumerate(zip(got, want, strict=True)):
    assert sorted(a) == sorted(b) == ['image', 'index', 'labels']
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=f'step {step}, {key}')


def _by_index(batches) -> dict[int, np.ndarray]:
  return {
    i: image for b in batches for i, image in zip(b['index'].tolist(), b['image'], strict=True)
  }


def _stored_images(data, split: str) -> dict[int, np.ndarray]:
  """The decoded stored images of a split, by index (TFDS's own decoding)."""
  builder = data[0]
  return {
    int(ex['index']): ex['image']
    for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  }


# ---------------------------------------------------------------------------
# Train stream.


def test_train_batches_shapes_and_labels(data, reference):
  rows = data[2]['train']
  for batch in reference:
    assert batch['image'].shape == (GLOBAL_BATCH, SIZE, SIZE, 3)
    assert batch['image'].dtype == np.uint8
    assert batch['labels'].shape == (GLOBAL_BATCH, len(NAMES))
    assert batch['labels'].dtype == np.int8
    assert batch['index'].shape == (GLOBAL_BATCH,)
    assert batch['index'].dtype == np.int32
    # Labels travel with their example, unknown (-1) included.
    want = np.array([rows[i][1] for i in batch['index']], np.int8)
    np.testing.assert_array_equal(batch['labels'], want)


def test_same_seed_same_batches_other_seed_other_order(data, reference):
  _assert_same_batches(_take(_train(data), REFERENCE_STEPS), reference)
  other = _take(_train(data, seed=1), SPE)
  order = np.concatenate([b['index'] for b in reference[:SPE]])
  other_order = np.concatenate([b['index'] for b in other])
  assert not np.array_equal(order, other_order)


def test_epochs_never_repeat_an_example_and_differ(data, reference):
  epochs = [
    np.concatenate([b['index'] for b in reference[e * SPE : (e + 1) * SPE]]) for e in range(2)
  ]
  for order in epochs:
    assert len(order) == SPE * GLOBAL_BATCH
    assert len(set(order.tolist())) == len(order)
    assert order.min() >= 0 and order.max() < NUM_TRAIN
  assert not np.array_equal(epochs[0], epochs[1])
  # The augmentation is drawn per (seed, epoch, index): an example met in both
  # epochs gets another crop.
  first, second = (_by_index(reference[e * SPE : (e + 1) * SPE]) for e in range(2))
  both = sorted(set(first) & set(second))
  assert both
  assert any(not np.array_equal(first[i], second[i]) for i in both)


@pytest.mark.parametrize('start_step', [2, SPE + 1, 2 * SPE])
def test_resume_continues_the_uninterrupted_stream(data, reference, start_step):
  resumed = _take(_train(data, start_step=start_step), 3)
  _assert_same_batches(resumed, reference[start_step : start_step + 3])
  # Nothing the epoch served before the resume point is served again after it.
  epoch_start = start_step // SPE * SPE
  served = {int(i) for b in reference[epoch_start:start_step] for i in b['index']}
  rest_of_epoch = resumed[: (epoch_start + SPE) - start_step]
  assert not served & {int(i) for b in rest_of_epoch for i in b['index']}


@pytest.mark.parametrize('start_step', [0, SPE + 1])
def test_two_processes_split_the_single_process_global_batch(data, reference, start_step):
  steps = SPE + 1  # Crosses an epoch boundary.
  parts = [
    _take(_train(data, start_step=start_step, process_index=p, process_count=2), steps)
    for p in range(2)
  ]
  for step in range(steps):
    want = reference[start_step + step]
    want_images = _by_index([want])
    got_index = []
    for part in parts:
      batch = part[step]
      assert batch['image'].shape == (GLOBAL_BATCH // 2, SIZE, SIZE, 3)
      for i, image in zip(batch['index'].tolist(), batch['image'], strict=True):
        np.testing.assert_array_equal(image, want_images[i], err_msg=f'step {step} index {i}')
      got_index += batch['index'].tolist()
    assert sorted(got_index) == sorted(want['index'].tolist())


class _IndexOnlyBuilder:
  """A stand-in for a prepared builder: N records with no image (the test skips decoding).

  Lets the train stream run over a split larger than any shuffle buffer (the old
  pipeline's was 16,384) in seconds.
  """

  def __init__(self, num_examples: int):
    self.num_examples = num_examples
    split = type('Split', (), {'num_examples': num_examples})()
    self.info = type('Info', (), {'splits': {'train': split}})()

  def as_dataset(self, split, shuffle_files, decoders):
    del split, shuffle_files, decoders
    n = self.num_examples
    records = {
      'image': np.full(n, b'', dtype=object),
      'labels': np.zeros((n, 1), np.int8),
      'index': np.arange(n),
      'image_id': np.arange(n).astype(str).astype(object),
    }
    return tf.data.Dataset.from_tensor_slices(records)


def _position_table(orders: list[np.ndarray], n: int, bins: int) -> np.ndarray:
  """Counts [bins, bins]: index bin (by stored order) x position bin, over all epochs."""
  table = np.zeros((bins, bins), np.int64)
  for order in orders:
    positions = np.empty(n, np.int64)
    positions[order] = np.arange(n)
    np.add.at(table, (np.arange(n) * bins // n, positions * bins // n), 1)
  return table


def _chi_square(table: np.ndarray) -> float:
  """Pearson's statistic against 'every index bin spreads evenly over the positions'."""
  expected = table.sum(1, keepdims=True) / table.shape[1]
  return float(((table - expected) ** 2 / expected).sum())


def test_every_epoch_is_a_uniform_permutation_of_a_large_split(monkeypatch):
  n, batch, bins, epochs = 20_000, 1_000, 10, 1
  config = _config(image_size=4, resize_size=4, crop_min=4, crop_max=4, prefetch=1)
  # The order is under test, not the images: skip their decoding and augmentation.
  monkeypatch.setattr(input_pipeline, 'decode', lambda encoded: tf.zeros([1, 1, 3], tf.uint8))
  monkeypatch.setattr(
    input_pipeline, 'train_preprocess', lambda image, seed, config: tf.zeros([4, 4, 3], tf.uint8)
  )
  stream = input_pipeline.train_batches(_IndexOnlyBuilder(n), config, global_batch=batch, seed=0)
  orders = []
  for _ in range(epochs):
    order = np.concatenate([next(stream)['index'] for _ in range(n // batch)])
    assert sorted(order.tolist()) == list(range(n))  # A permutation of the whole split.
    orders.append(order)
  # Where each tenth of the split lands: under a uniform permutation, each cell of
  # the 10 x 10 table is near-binomial around n * epochs / 100 and the statistic
  # is ~chi-square with (10 - 1)^2 = 81 degrees of freedom, over this bound with
  # probability 1e-6.
  bound = scipy.stats.chi2.ppf(1 - 1e-6, (bins - 1) ** 2)
  assert _chi_square(_position_table(orders, n, bins)) < bound
  # The bound has the power to catch what it is for: a 16,384-record shuffle
  # buffer, where the last records of the split can never land first (~350 here).
  buffered = tf.data.Dataset.range(n).shuffle(16_384, seed=0).as_numpy_iterator()
  assert _chi_square(_position_table([np.fromiter(buffered, np.int64)], n, bins)) > bound


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
  a = input_pipeline.epoch_order(50, seed=3, epoch=1)
  np.testing.assert_array_equal(a, input_pipeline.epoch_order(50, seed=3, epoch=1))
  assert sorted(a.tolist()) == list(range(50))
  assert not np.array_equal(a, input_pipeline.epoch_order(50, seed=3, epoch=2))
  assert not np.array_equal(a, input_pipeline.epoch_order(50, seed=4, epoch=1))
  assert sorted(input_pipeline.epoch_order(50, seed=-1, epoch=0).tolist()) == list(range(50))


def test_train_batches_rejects_indivisible_batch(data):
  with pytest.raises(ValueError, match='not divisible'):
    next(_train(data, process_count=3))


def test_steps_per_epoch():
  assert input_pipeline.steps_per_epoch(37, 8) == 4
  assert input_pipeline.steps_per_epoch(32, 8) == 4
  with pytest.raises(ValueError, match='fewer than one global batch'):
    input_pipeline.steps_per_epoch(7, 8)


# ---------------------------------------------------------------------------
# Augmentation.


def _config(**overrides):
  config = schema.defaults().data
  config.image_size = SIZE
  config.resize_size = 36
  config.crop_min = 16
  config.crop_max = 32
  config.update(overrides)
  return config


def _seed(i: int) -> tf.Tensor:
  return tf.constant([3, i], tf.int32)


def _flips(seed: tf.Tensor) -> bool:
  """The flip draw of `train_preprocess`: the 4th of the seed's stateless splits."""
  return bool(
    tf.random.stateless_uniform([], tf.random.experimental.stateless_split(seed, 4)[3]) < 0.5
  )


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
  coarse = np.random.default_rng(seed).integers(0, 256, (3, 3, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))


def _pil_resize(image: np.ndarray, size: int) -> np.ndarray:
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)).astype(int)


@pytest.mark.parametrize('shape', [(1, 1), (3, 200), (20, 12), (90, 72), (300, 150)])
def test_train_preprocess_shape_and_dtype(shape):
  image = tf.constant(_smooth_image(*shape))
  for i in range(3):
    out = input_pipeline.train_preprocess(image, _seed(i), _config())
    assert out.shape == (SIZE, SIZE, 3)
    assert out.dtype == tf.uint8


@pytest.mark.parametrize(
  ('shape', 'atol'),
  [
    ((20, 12), 1),  # Upscaling: PIL's bilinear is the same filter.
    ((90, 72), 1),  # More than 2x down: both antialias with a widened triangle.
    ((48, 40), 1),  # Less than 2x down: antialiased too, as PIL (and as eval).
  ],
)
def test_full_crop_without_flip_is_a_plain_resize(shape, atol):
  image = _smooth_image(*shape)
  config = _config(crop_min=36, crop_max=36, random_flip=False)
  want = _pil_resize(image, SIZE)
  for i in range(4):
    out = input_pipeline.train_preprocess(tf.constant(image), _seed(i), config).numpy()
    np.testing.assert_allclose(out.astype(int), want, atol=atol, rtol=0)
    assert np.abs(out.astype(int) - want).mean() < 1.0


def test_flip_mirrors_and_happens_half_the_time():
  image = tf.constant(_smooth_image(30, 20))
  unflipped = input_pipeline.train_preprocess(
    image, _seed(0), _config(crop_min=36, crop_max=36, random_flip=False)
  ).numpy()
  assert not np.array_equal(unflipped, unflipped[:, ::-1])
  flipping = _config(crop_min=36, crop_max=36, random_flip=True)
  flips = []
  for i in range(64):
    out = input_pipeline.train_preprocess(image, _seed(i), flipping).numpy()
    flipped = np.array_equal(out, unflipped[:, ::-1])
    assert flipped or np.array_equal(out, unflipped)
    assert flipped == _flips(_seed(i))
    flips.append(flipped)
  assert 16 <= sum(flips) <= 48


def _red_blue(h: int = 40, w: int = 24) -> np.ndarray:
  image = np.zeros((h, w, 3), np.uint8)
  image[:, : w // 2, 0] = 255
  image[:, w // 2 :, 2] = 255
  return image


def test_colours_stay_in_place_and_swap_with_flip():
  image = tf.constant(_red_blue())
  no_flip = next(i for i in range(100) if not _flips(_seed(i)))
  flip = next(i for i in range(100) if _flips(_seed(i)))
  red, blue = np.array([255, 0, 0]), np.array([0, 0, 255])
  config = _config(crop_min=36, crop_max=36, random_flip=True)
  cases = [(no_flip, red, blue), (flip, blue, red)]
  for i, left, right in cases:
    out = input_pipeline.train_preprocess(image, _seed(i), config).numpy().astype(int)
    # Away from the middle, where the two halves blend.
    np.testing.assert_allclose(
      out[:, : SIZE // 2 - 2], np.broadcast_to(left, out[:, : SIZE // 2 - 2].shape)
    )
    np.testing.assert_allclose(
      out[:, SIZE // 2 + 2 :], np.broadcast_to(right, out[:, SIZE // 2 + 2 :].shape)
    )


def test_random_crops_keep_red_left_of_blue_unless_flipped():
  image = tf.constant(_red_blue())
  config = _config(random_flip=True)
  for i in range(24):
    out = input_pipeline.train_preprocess(image, _seed(i), config).numpy().astype(int)
    redness = out[..., 0] - out[..., 2]  # [SIZE, SIZE], +255 red, -255 blue.
    steps = np.diff(redness, axis=1)
    if _flips(_seed(i)):
      assert (steps >= 0).all()
    else:
      assert (steps <= 0).all()


def test_random_crop_is_a_random_square_of_the_resized_image():
  # Pixel values encode the source coordinates: R = 6x, G = 4y (linear ramps).
  h, w = 60, 40
  ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  image = np.stack([6 * xs, 4 * ys, np.zeros_like(xs)], -1).astype(np.uint8)
  config = _config(random_flip=False)
  windows = []
  for i in range(64):
    out = input_pipeline.train_preprocess(tf.constant(image), _seed(i), config).numpy()
    x = out[..., 0].astype(float) / 6  # The source column each output pixel sampled.
    y = out[..., 1].astype(float) / 4
    # A half-pixel resize of the window [a, a + n) samples a + (k + 0.5) n / SIZE - 0.5.
    width = (x[:, -1] - x[:, 0]).mean() / (1 - 1 / SIZE)
    height = (y[-1] - y[0]).mean() / (1 - 1 / SIZE)
    left = x[:, 0].mean() - (0.5 * width / SIZE - 0.5)
    top = y[0].mean() - (0.5 * height / SIZE - 0.5)
    # In pixels of the image resized to resize_size² (36).
    windows.append(np.array([top / h, left / w, height / h, width / w]) * 36)
  top, left, side_y, side_x = np.array(windows).T
  np.testing.assert_allclose(side_x, side_y, atol=1.5)  # A square of the resized image,
  assert (side_x > 16 - 1.5).all() and (side_x < 32 + 1.5).all()  # of side in [16, 32],
  assert side_x.min() < 19 and side_x.max() > 29  # drawn over that range,
  for start, side in ((top, side_y), (left, side_x)):
    assert (start > -1).all() and (start + side < 36 + 1).all()  # inside the image,
    assert start.min() < 1.5 and (start + side).max() > 34.5  # anywhere in it,
    assert len(np.unique(np.round(start))) >= 8
  assert np.abs(top - left).max() > 3  # with independent rows and columns.


@pytest.mark.parametrize('shape', [(20, 12), (48, 40), (40, 31), (90, 72), (70, 20)])
def test_train_and_eval_resize_alike(shape):
  # One filter rule for both: a train crop that covers the whole image, unflipped,
  # is pixel for pixel the eval resize of that image.
  image = tf.constant(_smooth_image(*shape, seed=3))
  config = _config(crop_min=36, crop_max=36, random_flip=False)
  want = input_pipeline.eval_preprocess(image, config).numpy()
  got = input_pipeline.train_preprocess(image, _seed(0), config).numpy()
  np.testing.assert_array_equal(got, want)


def test_train_preprocess_rejects_crop_larger_than_resize():
  with pytest.raises(ValueError, match='crop_max'):
    input_pipeline.train_preprocess(
      tf.constant(_smooth_image(20, 12)), _seed(0), _config(crop_max=40)
    )


@pytest.mark.parametrize('shape', [(20, 12), (31, 45), (90, 72), (48, 40)])
def test_eval_preprocess_is_an_antialiased_resize(shape):
  image = _smooth_image(*shape)
  out = input_pipeline.eval_preprocess(tf.constant(image), _config()).numpy()
  assert out.dtype == np.uint8
  np.testing.assert_allclose(out.astype(int), _pil_resize(image, SIZE), atol=1, rtol=0)


# ---------------------------------------------------------------------------
# Eval stream.


def _eval(data, split='validation', global_batch=6, **kwargs):
  builder, config, _ = data
  return input_pipeline.eval_batches(builder, config, split, global_batch=global_batch, **kwargs)


def test_eval_batches_cover_the_split_once_with_padding_masked(data):
  rows = data[2]['validation']
  batches, num_batches = _eval(data, extra_keys=('image_id',))
  batches = list(batches)
  assert num_batches == len(batches) == 3  # 6 + 6 + 1 padded to 6.
  stored = _stored_images(data, 'validation')
  seen = []
  for batch in batches:
    assert batch['image'].shape == (6, SIZE, SIZE, 3)
    assert batch['image'].dtype == np.uint8
    assert batch['mask'].dtype == bool
    mask = batch['mask']
    for i, image, labels, image_id in zip(
      batch['index'][mask],
      batch['image'][mask],
      batch['labels'][mask],
      batch['image_id'][mask],
      strict=True,
    ):
      assert image_id.decode() == rows[i][0]
      np.testing.assert_array_equal(labels, np.array(rows[i][1], np.int8))
      np.testing.assert_allclose(image.astype(int), _pil_resize(stored[i], SIZE), atol=1, rtol=0)
    seen += batch['index'][mask].tolist()
  assert sorted(seen) == list(range(NUM_VAL))
  assert batches[-1]['mask'].tolist() == [True] + [False] * 5
  assert not batches[-1]['image'][1:].any()


def test_eval_batches_two_processes_same_count_cover_once(data):
  parts = [_eval(data, process_index=p, process_count=2) for p in range(2)]
  counts = {n for _, n in parts}
  assert counts == {3}  # Process 0: 7 examples = 3 + 3 + 1; process 1: 6 = 3 + 3 + padding.
  seen = []
  specs = set()
  for batches, num_batches in parts:
    batches = list(batches)
    assert len(batches) == num_batches
    for batch in batches:
      specs.add(tuple((k, v.shape, v.dtype) for k, v in sorted(batch.items())))
      seen += batch['index'][batch['mask']].tolist()
  assert sorted(seen) == list(range(NUM_VAL))
  assert len(specs) == 1  # Padding batches look exactly like real ones.


# ---------------------------------------------------------------------------
# Dataset info and normalisation.


def test_get_dataset_info(data):
  builder, config, _ = data
  info = input_pipeline.get_dataset_info(builder, config)
  assert info.attribute_names == NAMES
  assert info.num_classes == 3
  assert info.split_sizes == {'train': NUM_TRAIN, 'validation': NUM_VAL}
  assert not info.has_cue_boxes
  # By hand over i = 0..36: every third i (13 of 37); i % 4 == 1 among i % 4 != 0
  # (9 of 27); odd i among the known 30..36 (3 of 7).
  np.testing.assert_allclose(info.positive_ratio, [13 / 37, 9 / 27, 3 / 7], rtol=1e-6)
  assert info.positive_ratio.dtype == np.float32


def test_normalize_matches_numpy():
  # The on-device normalisation of the pipeline's uint8 output (jaxattr.inference).
  from jaxattr import inference

  images = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
  config = _config()
  want = (images / 255.0 - np.array(config.mean)) / np.array(config.std)
  got = inference.normalize(jnp.asarray(images), config)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
