"""Input pipeline: TFDS split -> per-process batches of uint8 images, labels, indices.

Train stream (deterministic given the seed, resumable at any step):
  * Epoch e is a fixed shuffle of the encoded split (seed derived from (seed, e)),
    cut to `steps_per_epoch * global_batch` examples, so an epoch never repeats
    an example and no two epochs overlap.
  * Every process reads the same shuffled stream of *encoded* records and keeps
    every P-th one (`shard` after `shuffle`), so the global batch at step t holds
    the same examples whatever the number of processes; only decoding is split.
  * Resuming at step t skips `t % steps_per_epoch` global batches of encoded
    records (cheap: nothing is decoded), so the data order continues, it does not
    replay.
  * The random crop and flip of an example are drawn with stateless ops seeded by
    (seed, epoch, index): the same example gets the same augmentation whatever
    the parallelism.
Eval stream: every example of the split exactly once, resized, in batches padded
to a fixed size with `mask` False on the padding (metrics stay exact).

Images leave the pipeline as uint8 (4x less host->device traffic); normalisation
with the ImageNet statistics happens on device (`normalize`).
"""

import dataclasses
from collections.abc import Iterator

import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from jaxattr.data import common


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the losses need to know about a dataset."""

  attribute_names: list[str]
  split_sizes: dict[str, int]
  # Positives / labelled examples of each attribute on the train split.
  positive_ratio: np.ndarray
  has_cue_boxes: bool

  @property
  def num_classes(self) -> int:
    return len(self.attribute_names)


def get_builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The TFDS builder named by the config (jaxattr's builders are registered)."""
  import jaxattr.data  # noqa: F401  (registers the builders with TFDS)

  kwargs = {}
  if data_config.builder_config:
    kwargs['config'] = data_config.builder_config
  if data_config.data_dir:
    kwargs['data_dir'] = data_config.data_dir
  return tfds.builder(data_config.name, **kwargs)


def prepare(builder: tfds.core.DatasetBuilder, data_config: ml_collections.ConfigDict) -> None:
  """Builds the dataset files if they are not there yet (synthetic: generates)."""
  if builder.is_prepared():
    return
  logging.info('Preparing %s into %s', builder.info.full_name, builder.data_dir)
  download_config = tfds.download.DownloadConfig(
    manual_dir=data_config.manual_dir or None,
  )
  builder.download_and_prepare(download_config=download_config)


def _encoded(builder: tfds.core.DatasetBuilder, split: str, cache: bool) -> tf.data.Dataset:
  ds = builder.as_dataset(
    split=split,
    shuffle_files=False,
    decoders={'image': tfds.decode.SkipDecoding()},
  )
  return ds.cache() if cache else ds


def get_dataset_info(
  builder: tfds.core.DatasetBuilder, data_config: ml_collections.ConfigDict
) -> DatasetInfo:
  """Attribute names, split sizes and train positive ratios of a prepared dataset."""
  info = builder.info
  names = common.attribute_names(info)
  labels_ds = builder.as_dataset(
    split=data_config.train_split,
    shuffle_files=False,
    decoders={'image': tfds.decode.SkipDecoding()},
  ).map(lambda ex: ex['labels'])
  labels = np.concatenate([b for b in labels_ds.batch(65_536).as_numpy_iterator()])
  known = labels >= 0
  ratio = (labels == 1).sum(0) / np.maximum(known.sum(0), 1)
  return DatasetInfo(
    attribute_names=names,
    split_sizes={name: split.num_examples for name, split in info.splits.items()},
    positive_ratio=ratio.astype(np.float32),
    has_cue_boxes='cue_boxes' in info.features,
  )


def decode(encoded: tf.Tensor) -> tf.Tensor:
  """Decodes a JPEG/PNG to uint8 [H, W, 3]."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _resize(image: tf.Tensor, size: int, shrink_limit: int) -> tf.Tensor:
  """Bilinear resize to size², antialiased only where an axis is longer than `shrink_limit`.

  Antialiasing (PIL's bilinear: a triangle filter widened by the shrink factor)
  costs ~3x a plain bilinear resize, so it is paid only where it matters. With
  `shrink_limit = size` the result equals the antialiased resize up to float
  rounding (on an axis that does not shrink both use the same triangle). With
  `shrink_limit = 2 * size`, shrinks by less than 2x stay plain (bilinear still
  reads every source pixel) and only stronger ones, which would alias, are filtered.
  """
  shrinks = tf.reduce_any(tf.shape(image)[:2] > shrink_limit)
  return tf.cond(
    shrinks,
    lambda: tf.image.resize(image, [size, size], method='bilinear', antialias=True),
    lambda: tf.image.resize(image, [size, size], method='bilinear'),
  )


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  # Rounds half up; the clip only guards against float error at 0 and 255.
  return tf.cast(tf.clip_by_value(image + 0.5, 0.0, 255.0), tf.uint8)


def train_preprocess(image: tf.Tensor, seed: tf.Tensor, data_config) -> tf.Tensor:
  """The paper's train augmentation, on one decoded image.

  Resize the crop to resize_size², take a random square of side s ~ U[crop_min,
  crop_max] at a random position, resize it to image_size², flip at random. The
  first resize and the crop are folded into one: the window of the original image
  that the square covers (rounded to whole source pixels, at most half a source
  pixel off) is sliced out and resized once to image_size² (one interpolation
  instead of two, and 3x cheaper than `crop_and_resize`).

  Args:
    image: uint8 [H, W, 3].
    seed: int32 [2], the stateless seed of this example.
    data_config: `config.data`.

  Returns:
    uint8 [image_size, image_size, 3].
  """
  r = data_config.resize_size
  size = data_config.image_size
  if not 0 < data_config.crop_min <= data_config.crop_max <= r:
    raise ValueError(
      f'Need 0 < data.crop_min ({data_config.crop_min}) <= data.crop_max '
      f'({data_config.crop_max}) <= data.resize_size ({r}).'
    )
  seeds = tf.random.experimental.stateless_split(seed, 4)
  side = tf.random.stateless_uniform(
    [], seeds[0], data_config.crop_min, data_config.crop_max + 1, dtype=tf.int32
  )
  side_f = tf.cast(side, tf.float32)
  room = float(r) - side_f
  y0 = tf.floor(tf.random.stateless_uniform([], seeds[1]) * (room + 1.0))
  x0 = tf.floor(tf.random.stateless_uniform([], seeds[2]) * (room + 1.0))
  # The square [y0, y0 + s) x [x0, x0 + s) of the resized image, in source pixels.
  hw = tf.shape(image)[:2]
  scale = tf.cast(hw, tf.float32) / float(r)
  corner = tf.stack([y0, x0])
  start = tf.minimum(tf.cast(tf.round(corner * scale), tf.int32), hw - 1)
  end = tf.cast(tf.round((corner + side_f) * scale), tf.int32)
  extent = tf.clip_by_value(end - start, 1, hw - start)
  window = tf.slice(image, tf.concat([start, [0]], 0), tf.concat([extent, [3]], 0))
  out = _to_uint8(_resize(window, size, shrink_limit=2 * size))
  if data_config.random_flip:
    flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
    out = tf.cond(flip, lambda: tf.reverse(out, axis=[1]), lambda: out)
  return out


def eval_preprocess(image: tf.Tensor, data_config) -> tf.Tensor:
  """Eval: resize to image_size² (antialiased, as PIL/torchvision resize).

  Args:
    image: uint8 [H, W, 3].
    data_config: `config.data`.

  Returns:
    uint8 [image_size, image_size, 3].
  """
  return _to_uint8(_resize(image, data_config.image_size, shrink_limit=data_config.image_size))


def normalize(images: jnp.ndarray, data_config, dtype=jnp.float32) -> jnp.ndarray:
  """uint8 images -> ImageNet-normalised floats (runs on device, inside the step)."""
  mean = jnp.asarray(data_config.mean, jnp.float32) * 255.0
  std = jnp.asarray(data_config.std, jnp.float32) * 255.0
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = 0
  return options


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  """Full global batches per epoch (the rest of an epoch's shuffle is not used)."""
  steps = num_examples // global_batch
  if steps == 0:
    raise ValueError(
      f'The train split has {num_examples} examples, fewer than one global batch '
      f'of {global_batch}: lower train.batch_size.'
    )
  return steps


def train_batches(
  builder: tfds.core.DatasetBuilder,
  data_config: ml_collections.ConfigDict,
  *,
  global_batch: int,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless per-process train batches, starting at global step `start_step`.

  Args:
    builder: a prepared builder.
    data_config: `config.data`.
    global_batch: batch size summed over all processes.
    seed: the run's seed.
    start_step: the first step to produce (resume).
    process_index: this process.
    process_count: number of processes.

  Yields:
    dicts with `image` uint8 [b, S, S, 3], `labels` int8 [b, C], `index` int32 [b],
    where b = global_batch // process_count.
  """
  if global_batch % process_count:
    raise ValueError(f'Global batch {global_batch} is not divisible by {process_count} processes.')
  local_batch = global_batch // process_count
  num_examples = builder.info.splits[data_config.train_split].num_examples
  spe = steps_per_epoch(num_examples, global_batch)
  base = _encoded(builder, data_config.train_split, data_config.cache)
  buffer = min(data_config.shuffle_buffer, num_examples)
  epoch, offset = divmod(start_step, spe)

  while True:
    # One fixed shuffle per epoch, the same in every process.
    ds = base.shuffle(buffer, seed=seed * 1_000_003 + epoch, reshuffle_each_iteration=False)
    ds = ds.take(spe * global_batch).skip(offset * global_batch)
    ds = ds.shard(process_count, process_index)

    def prepare_example(ex, epoch=epoch):
      example_seed = tf.stack(
        [
          tf.cast(seed * 7919 + epoch, tf.int32),
          tf.cast(ex['index'], tf.int32),
        ]
      )
      image = train_preprocess(decode(ex['image']), example_seed, data_config)
      return {
        'image': image,
        'labels': ex['labels'],
        'index': tf.cast(ex['index'], tf.int32),
      }

    ds = ds.map(prepare_example, num_parallel_calls=data_config.num_parallel_calls)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(data_config.prefetch)
    yield from ds.with_options(_options()).as_numpy_iterator()
    epoch, offset = epoch + 1, 0


def eval_batches(
  builder: tfds.core.DatasetBuilder,
  data_config: ml_collections.ConfigDict,
  split: str,
  *,
  global_batch: int,
  process_index: int = 0,
  process_count: int = 1,
  extra_keys: tuple[str, ...] = (),
) -> tuple[Iterator[dict[str, np.ndarray]], int]:
  """Every example of `split` exactly once, in padded per-process batches.

  Args:
    builder: a prepared builder.
    data_config: `config.data`.
    split: split name.
    global_batch: eval batch size over all processes.
    process_index: this process.
    process_count: number of processes.
    extra_keys: further features to pass through (e.g. 'cue_boxes').

  Returns:
    (iterator, num_batches): batches with `image`, `labels`, `index`, `mask` (False
    on padding) and the extra keys; every process yields `num_batches` batches.
  """
  if global_batch % process_count:
    raise ValueError(f'Eval batch {global_batch} is not divisible by {process_count} processes.')
  local_batch = global_batch // process_count
  num_examples = builder.info.splits[split].num_examples
  per_process = -(-num_examples // process_count)
  num_batches = max(1, -(-per_process // local_batch))
  ds = _encoded(builder, split, cache=False).shard(process_count, process_index)

  def prepare_example(ex):
    out = {
      'image': eval_preprocess(decode(ex['image']), data_config),
      'labels': ex['labels'],
      'index': tf.cast(ex['index'], tf.int32),
      'mask': tf.constant(True),
    }
    out.update({k: ex[k] for k in extra_keys})
    return out

  ds = ds.map(prepare_example, num_parallel_calls=data_config.num_parallel_calls)
  ds = ds.with_options(_options())

  def batches():
    count = 0
    for batch in ds.batch(local_batch).prefetch(data_config.prefetch).as_numpy_iterator():
      yield _pad(batch, local_batch)
      count += 1
    spec = ds.element_spec
    while count < num_batches:  # This process ran out earlier than others.
      yield {k: np.zeros((local_batch, *s.shape), s.dtype.as_numpy_dtype) for k, s in spec.items()}
      count += 1

  return batches(), num_batches


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  n = len(batch['mask'])
  if n == size:
    return batch
  return {
    k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()
  }
