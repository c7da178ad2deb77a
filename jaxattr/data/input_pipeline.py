"""Input pipeline: TFDS split -> per-process batches of uint8 images, labels, indices.

Train stream (deterministic given the seed, resumable at any step):
  * Epoch e reads the split in the order of `epoch_order(n, seed, e)`, a uniform
    random permutation of the whole split drawn from (seed, e), cut to
    `steps_per_epoch * global_batch` examples: an epoch never repeats an example,
    and every example is equally likely at every position whatever the split's
    size (a `tf.data` shuffle buffer smaller than the split cannot promise that:
    with 16,384 slots, the last examples of a 20,000-example split never come
    first). The records are read by position from the encoded split, which each
    process holds in host memory (as large as the split's record files; the
    images stay encoded).
  * Every process follows the same order and keeps every P-th record (sharding
    after the shuffle), so the global batch at step t holds the same examples
    whatever the number of processes; only decoding is split.
  * Resuming at step t starts the order at record `(t % steps_per_epoch) *
    global_batch` (nothing is read or decoded to get there), so the data order
    continues, it does not replay.
  * The random crop and flip of an example are drawn with stateless ops seeded by
    (seed, epoch, index): the same example gets the same augmentation whatever
    the parallelism.
Eval stream: every example of the split exactly once, resized, in batches padded
to a fixed size with `mask` False on the padding (metrics stay exact).

Corrupt images (`data.on_bad_image`). tf.data has no try/except: an image that
fails to decode fails the batch that holds it, and since elements keep their
order that batch is known. Its records are then prepared again one by one,
eagerly, which names the culprit (`image_id`, `index`): 'fail' (the default)
stops with a `DataError` naming it; 'skip' logs it, filters its index out before
decoding from then on, and restarts the stream at the same batch, so the batch is
completed by the next examples. Clean data pays nothing for this (no per-example
status, no Python in the map). With 'skip' the train stream of each process reads
past the epoch's cut (its unused rest, then the epoch's start again) to stand in
for skipped images, so every process still yields exactly `steps_per_epoch`
batches per epoch and all processes change epoch together. Two things are no
longer exact once an image was skipped: the global batch then depends on the
process count, and a run resumed later in that epoch, which has not met the image
yet, has its stream shifted by the skipped images. In evaluation a skipped image
is left out of the metrics (logged, and `num_examples` shows it).

Images leave the pipeline as uint8 (4x less host->device traffic); normalisation
with the ImageNet statistics happens on device (`jaxattr.inference.normalize`).
"""

import dataclasses
import re
from collections.abc import Callable, Generator, Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

# The builder modules register their datasets with TFDS when imported.
from jaxattr.data import common, custom, manual, pa100k, peers, peta, rap1, rap2, synthetic, wider  # noqa: F401  # noqa: F401
from jaxattr.schema import image_hw, pad_fill

BAD_IMAGE_MODES = ('fail', 'skip')
# `data.augment`: the paper's scale crop, or Rethinking_of_PAR's pad-and-crop.
AUGMENTATIONS = ('paper', 'rethinking')


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
  """The TFDS builder named by the config (jaxattr's builders are registered).

  A builder over a manual download also gets `data.max_image_pixels` (when the
  config has it): larger images are refused by name (`jaxattr.data.images`).
  """
  kwargs = {}
  if data_config.builder_config:
    kwargs['config'] = data_config.builder_config
  if data_config.data_dir:
    kwargs['data_dir'] = data_config.data_dir
  limit = data_config.get('max_image_pixels')
  if limit and issubclass(tfds.builder_cls(data_config.name), manual.ManualDirBuilder):
    kwargs['max_image_pixels'] = limit
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


def _encoded(builder: tfds.core.DatasetBuilder, split: str) -> tf.data.Dataset:
  return builder.as_dataset(
    split=split,
    shuffle_files=False,
    decoders={'image': tfds.decode.SkipDecoding()},
  )


# What the train stream reads of a record (not e.g. the synthetic `cue_boxes`).
_TRAIN_KEYS = ('image', 'labels', 'index', 'image_id')


def _split_in_memory(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, tf.Tensor]:
  """The split's encoded records as tensors of N rows, in stored order (for reading by position)."""
  parts: dict[str, list[np.ndarray]] = {k: [] for k in _TRAIN_KEYS}
  for batch in _encoded(builder, split).batch(4096).as_numpy_iterator():
    for key in _TRAIN_KEYS:
      parts[key].append(batch[key])
  return {k: tf.constant(np.concatenate(v)) for k, v in parts.items()}


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order in which epoch `epoch` reads the train split: a uniform random permutation.

  Args:
    num_examples: N, the split's size.
    seed: the run's seed.
    epoch: the epoch (0-based).

  Returns:
    int64 [N]: record positions (0..N-1 in stored order), a permutation drawn from
    (seed, epoch) alone, the same in every process.
  """
  rng = np.random.default_rng([seed % 2**64, epoch])  # SeedSequence wants non-negative words.
  return rng.permutation(num_examples)


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


def _resize(image: tf.Tensor, hw: tuple[int, int]) -> tf.Tensor:
  """Bilinear resize to `hw` = (height, width), antialiased (PIL's and torchvision's rule).

  The one resize of train and eval, so a model sees the same filtering in both.
  Antialiasing widens the bilinear triangle by the shrink factor on an axis that
  shrinks; on an axis that does not, it is the same triangle as a plain bilinear
  resize, which is then used (up to float rounding the same result, and ~3x
  cheaper than the antialiasing kernel).
  """
  shrinks = tf.reduce_any(tf.shape(image)[:2] > hw)
  return tf.cond(
    shrinks,
    lambda: tf.image.resize(image, hw, method='bilinear', antialias=True),
    lambda: tf.image.resize(image, hw, method='bilinear'),
  )


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  # Rounds half up; the clip only guards against float error at 0 and 255.
  return tf.cast(tf.clip_by_value(image + 0.5, 0.0, 255.0), tf.uint8)


def aspect_padding(size: tf.Tensor, hw: tuple[int, int]) -> tf.Tensor:
  """The padding that brings an image of `size` to the aspect of `hw` (`pad_to_aspect`).

  A crop taller than the target gets columns on the left and right, a wider one rows
  above and below (the odd pixel after), so a resize to `hw` then scales both axes
  alike instead of stretching one.

  Args:
    size: int32 [2], the image's (H, W).
    hw: the target (height, width).

  Returns:
    int32 [2, 2]: [[top, bottom], [left, right]], with (H + top + bottom) / (W + left
    + right) = height / width to the nearest pixel.
  """
  src_h, src_w = size[0], size[1]
  # Integer cross-multiplication decides the side exactly: src_h / src_w vs h / w.
  tall = src_h * hw[1] > src_w * hw[0]
  want_w = tf.cast(tf.round(tf.cast(src_h, tf.float64) * hw[1] / hw[0]), tf.int32)
  want_h = tf.cast(tf.round(tf.cast(src_w, tf.float64) * hw[0] / hw[1]), tf.int32)
  pad_h = tf.where(tall, 0, tf.maximum(want_h - src_h, 0))
  pad_w = tf.where(tall, tf.maximum(want_w - src_w, 0), 0)
  return tf.stack([[pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2]])


def pad_to_aspect(image: tf.Tensor, hw: tuple[int, int], fill: tuple[int, int, int]) -> tf.Tensor:
  """Pads an image with `fill` to the aspect of `hw` (`aspect_padding`).

  `data.keep_aspect` pads with `schema.pad_fill`.

  Args:
    image: uint8 [H, W, 3].
    hw: the target (height, width).
    fill: the padding pixel, uint8 RGB.

  Returns:
    uint8 [H', W', 3] with H' / W' = height / width (to the nearest pixel).
  """
  paddings = tf.concat([aspect_padding(tf.shape(image)[:2], hw), [[0, 0]]], axis=0)
  fill = tf.constant(fill, tf.int32)
  return tf.cast(tf.pad(tf.cast(image, tf.int32) - fill, paddings) + fill, tf.uint8)


def boxes_after_padding(boxes: tf.Tensor, size: tf.Tensor, paddings: tf.Tensor) -> tf.Tensor:
  """Normalised [ymin, xmin, ymax, xmax] boxes of an image, in the frame of its padding.

  Args:
    boxes: float32 [..., 4], normalised to the image of `size`.
    size: int32 [2], the image's (H, W).
    paddings: int32 [2, 2] (`aspect_padding`).

  Returns:
    float32 [..., 4], normalised to the padded image.
  """
  size = tf.cast(size, tf.float32)
  before = tf.cast(paddings[:, 0], tf.float32)
  padded = size + tf.cast(tf.reduce_sum(paddings, axis=1), tf.float32)
  scale = tf.tile(size / padded, [2])
  shift = tf.tile(before / padded, [2])
  return boxes * scale + shift


def _maybe_pad_to_aspect(image: tf.Tensor, data_config) -> tf.Tensor:
  fill = pad_fill(data_config)
  return image if fill is None else pad_to_aspect(image, image_hw(data_config), fill)


def _flip(image: tf.Tensor, seed: tf.Tensor, data_config) -> tf.Tensor:
  if not data_config.random_flip:
    return image
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def train_preprocess(image: tf.Tensor, seed: tf.Tensor, data_config) -> tf.Tensor:
  """The train augmentation of `data.augment`, on one decoded image.

  With `data.keep_aspect` the image is first padded to the aspect of image_size
  (`pad_to_aspect`). Then 'paper' (`_paper_augment`) or 'rethinking'
  (`_rethinking_augment`).

  Args:
    image: uint8 [H, W, 3].
    seed: int32 [2], the stateless seed of this example.
    data_config: `config.data`.

  Returns:
    uint8 [height, width, 3] of `image_hw(data_config)`.
  """
  augment = data_config.get('augment', 'paper')
  if augment not in AUGMENTATIONS:
    raise ValueError(f'data.augment: must be one of {AUGMENTATIONS}, got {augment!r}')
  image = _maybe_pad_to_aspect(image, data_config)
  seeds = tf.random.experimental.stateless_split(seed, 4)
  if augment == 'rethinking':
    return _rethinking_augment(image, seeds, data_config)
  return _paper_augment(image, seeds, data_config)


def _paper_augment(image: tf.Tensor, seeds: tf.Tensor, data_config) -> tf.Tensor:
  """The paper's train augmentation.

  Resize the crop to resize_size², take a random square of side s ~ U[crop_min,
  crop_max] at a random position, resize it to image_size², flip at random. For an
  image_size of (height, width) the sides above count along the height and the
  widths follow the aspect: resize to resize_size x round(resize_size * width /
  height), a crop of s x round(s * width / height), resized to height x width (the
  square recipe when height == width). The first resize and the crop are folded
  into one: the window of the original image that the crop covers (rounded to whole
  source pixels, at most half a source pixel off) is sliced out and resized once to
  image_size (one interpolation instead of two, and 3x cheaper than
  `crop_and_resize`), with the same antialiasing rule as `eval_preprocess`.
  """
  r = data_config.resize_size
  hw = image_hw(data_config)
  if not 0 < data_config.crop_min <= data_config.crop_max <= r:
    raise ValueError(
      f'Need 0 < data.crop_min ({data_config.crop_min}) <= data.crop_max '
      f'({data_config.crop_max}) <= data.resize_size ({r}).'
    )
  aspect = hw[1] / hw[0]
  side = tf.random.stateless_uniform(
    [], seeds[0], data_config.crop_min, data_config.crop_max + 1, dtype=tf.int32
  )
  side_f = tf.cast(side, tf.float32)
  # The crop's (height, width) and the resized image's, in pixels of the resized image.
  crop = tf.stack([side_f, tf.maximum(tf.round(side_f * aspect), 1.0)])
  resized = tf.constant([r, max(round(r * aspect), 1)], tf.float32)
  room = resized - crop
  y0 = tf.floor(tf.random.stateless_uniform([], seeds[1]) * (room[0] + 1.0))
  x0 = tf.floor(tf.random.stateless_uniform([], seeds[2]) * (room[1] + 1.0))
  # The window [y0, y0 + crop_h) x [x0, x0 + crop_w) of the resized image, in source pixels.
  src = tf.shape(image)[:2]
  scale = tf.cast(src, tf.float32) / resized
  corner = tf.stack([y0, x0])
  start = tf.minimum(tf.cast(tf.round(corner * scale), tf.int32), src - 1)
  end = tf.cast(tf.round((corner + crop) * scale), tf.int32)
  extent = tf.clip_by_value(end - start, 1, src - start)
  window = tf.slice(image, tf.concat([start, [0]], 0), tf.concat([extent, [3]], 0))
  return _flip(_to_uint8(_resize(window, hw)), seeds[3], data_config)


def _rethinking_augment(image: tf.Tensor, seeds: tf.Tensor, data_config) -> tf.Tensor:
  """Rethinking_of_PAR's train augmentation (their `dataset/augmentation.py`, 'pedes').

  Resize to image_size (their `T.Resize((height, width))`), pad `data.crop_padding`
  pixels of zeros on every side (`T.Pad(10)`: constant fill 0), take an image_size
  window at offsets drawn uniformly from [0, 2 * padding] on each axis
  (`T.RandomCrop`), flip at random (`T.RandomHorizontalFlip`).
  """
  hw = image_hw(data_config)
  p = int(data_config.crop_padding)
  resized = _to_uint8(_resize(image, hw))
  padded = tf.pad(resized, [[p, p], [p, p], [0, 0]])
  y0 = tf.random.stateless_uniform([], seeds[1], 0, 2 * p + 1, dtype=tf.int32)
  x0 = tf.random.stateless_uniform([], seeds[2], 0, 2 * p + 1, dtype=tf.int32)
  window = tf.slice(padded, tf.stack([y0, x0, 0]), [hw[0], hw[1], 3])
  return _flip(window, seeds[3], data_config)


def eval_preprocess(image: tf.Tensor, data_config) -> tf.Tensor:
  """Eval: resize to image_size (antialiased, as PIL/torchvision resize).

  With `data.keep_aspect` the image is first padded to image_size's aspect with the
  mean pixel (`pad_to_aspect`, `schema.pad_fill`), as in training.

  Args:
    image: uint8 [H, W, 3].
    data_config: `config.data`.

  Returns:
    uint8 [height, width, 3] of `image_hw(data_config)`.
  """
  image = _maybe_pad_to_aspect(image, data_config)
  return _to_uint8(_resize(image, image_hw(data_config)))


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


def _local_batch(what: str, global_batch: int, process_count: int) -> int:
  """This process's share of `global_batch`; a ValueError if it does not divide evenly."""
  if global_batch % process_count:
    raise ValueError(f'{what} {global_batch} is not divisible by {process_count} processes.')
  return global_batch // process_count


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
  local_batch = _local_batch('Global batch', global_batch, process_count)
  mode = bad_image_mode(data_config)
  split = data_config.train_split
  num_examples = builder.info.splits[split].num_examples
  spe = steps_per_epoch(num_examples, global_batch)
  stored = _split_in_memory(builder, split)
  epoch, offset = divmod(start_step, spe)
  bad: set[int] = set()  # Indices of corrupt images met by this process ('skip').

  @tf.autograph.experimental.do_not_convert  # Straight-line code: nothing to convert.
  def read(positions):
    return {k: tf.gather(v, positions) for k, v in stored.items()}

  while True:

    def records(epoch=epoch, offset=offset):
      order = epoch_order(num_examples, seed, epoch)
      # 'skip' reads on past the epoch's cut to replace skipped images (see module doc).
      order = np.concatenate([order, order]) if mode == 'skip' else order[: spe * global_batch]
      # Resume, then this process's share: the same cut of the same order everywhere.
      order = order[offset * global_batch :][process_index::process_count]
      # Gathered 256 at a time: one op call per key and block, not per record.
      ds = tf.data.Dataset.from_tensor_slices(order).batch(256).map(read).unbatch()
      return _without(ds, bad)

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

    def make_batches(skip, records=records, prepare_example=prepare_example, offset=offset):
      ds = records().skip(skip)
      ds = ds.map(prepare_example, num_parallel_calls=data_config.num_parallel_calls)
      ds = ds.batch(local_batch, drop_remainder=True).take(spe - offset - skip // local_batch)
      return ds.prefetch(data_config.prefetch).with_options(_options())

    done = yield from _guarded_batches(
      make_batches,
      records,
      prepare_example,
      local_batch=local_batch,
      mode=mode,
      split=split,
      bad=bad,
    )
    if done < spe - offset:
      raise common.DataError(
        f'Epoch {epoch} of split {split!r} ran out after {done} of {spe - offset} batches: '
        f'process {process_index} skipped {len(bad)} corrupt images, more than the split '
        'can stand in for.'
      )
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
  local_batch = _local_batch('Eval batch', global_batch, process_count)
  mode = bad_image_mode(data_config)
  num_examples = builder.info.splits[split].num_examples
  per_process = -(-num_examples // process_count)
  num_batches = max(1, -(-per_process // local_batch))
  bad: set[int] = set()

  def records():
    return _without(_encoded(builder, split).shard(process_count, process_index), bad)

  def prepare_example(ex):
    image = decode(ex['image'])
    out = {
      'image': eval_preprocess(image, data_config),
      'labels': ex['labels'],
      'index': tf.cast(ex['index'], tf.int32),
      'mask': tf.constant(True),
    }
    out.update({k: ex[k] for k in extra_keys})
    if 'cue_boxes' in out and pad_fill(data_config) is not None:
      # The boxes of the crop, in the frame of the padded image the model sees.
      size = tf.shape(image)[:2]
      paddings = aspect_padding(size, image_hw(data_config))
      out['cue_boxes'] = boxes_after_padding(out['cue_boxes'], size, paddings)
    return out

  def make_batches(skip):
    ds = records().skip(skip)
    ds = ds.map(prepare_example, num_parallel_calls=data_config.num_parallel_calls)
    return ds.batch(local_batch).prefetch(data_config.prefetch).with_options(_options())

  spec = make_batches(0).element_spec

  def batches():
    count = 0
    for batch in _guarded_batches(
      make_batches,
      records,
      prepare_example,
      local_batch=local_batch,
      mode=mode,
      split=split,
      bad=bad,
    ):
      yield _pad(batch, local_batch)
      count += 1
    while count < num_batches:  # This process ran out earlier than others.
      yield {
        k: np.zeros((local_batch, *s.shape[1:]), s.dtype.as_numpy_dtype) for k, s in spec.items()
      }
      count += 1

  return batches(), num_batches


def bad_image_mode(data_config: ml_collections.ConfigDict) -> str:
  """What to do with a corrupt image: `data.on_bad_image`, checked.

  Args:
    data_config: `config.data`.

  Returns:
    'fail' or 'skip'.
  """
  mode = data_config.get('on_bad_image', 'fail')
  if mode not in BAD_IMAGE_MODES:
    raise ValueError(f'data.on_bad_image must be one of {BAD_IMAGE_MODES}, not {mode!r}.')
  return mode


def _without(ds: tf.data.Dataset, bad: set[int]) -> tf.data.Dataset:
  """Drops the records whose index is in `bad` (before decoding, so it costs nothing)."""
  if not bad:
    return ds
  bad_indices = tf.constant(sorted(bad), tf.int64)

  def keep(ex):
    return tf.logical_not(tf.reduce_any(tf.equal(tf.cast(ex['index'], tf.int64), bad_indices)))

  return ds.filter(keep)


def _guarded_batches(
  make_batches: Callable[[int], tf.data.Dataset],
  records: Callable[[], tf.data.Dataset],
  prepare: Callable[[dict], dict],
  *,
  local_batch: int,
  mode: str,
  split: str,
  bad: set[int],
) -> Generator[dict[str, np.ndarray], None, int]:
  """The batches of `make_batches(0)`, naming (and in 'skip' mode dropping) corrupt images.

  Args:
    make_batches: skip -> the batches of `records()` after its first `skip` records.
    records: this process's encoded records in stream order, without those in `bad`.
    prepare: the per-record map of `make_batches` (run eagerly to find a culprit).
    local_batch: records per batch.
    mode: 'fail' or 'skip'.
    split: split name (for messages).
    bad: indices to leave out; 'skip' adds the culprits it finds.

  Yields:
    numpy batches.

  Returns:
    The number of batches yielded.

  Raises:
    DataError: in 'fail' mode, naming the corrupt images.
  """
  done = 0
  while True:
    try:
      for batch in make_batches(done * local_batch).as_numpy_iterator():
        done += 1
        yield batch
      return done
    except tf.errors.OpError as error:
      # The failed batch is the next one: its records, prepared one at a time.
      culprits = _find_bad(records().skip(done * local_batch).take(local_batch), prepare)
      if not culprits:  # Not an image's fault (e.g. an unreadable file): as it was.
        raise
      if mode == 'fail':
        named = '; '.join(f'{i!r} (index {n}: {why.rstrip(".")})' for n, i, why in culprits)
        raise common.DataError(
          f'Corrupt image in split {split!r}: {named}. Replace or remove it and rebuild the '
          'dataset, or set --config.data.on_bad_image=skip to leave corrupt images out.'
        ) from error
      for index, image_id, why in culprits:
        logging.warning(
          'Skipping corrupt image %r (index %d) of split %r: %s', image_id, index, split, why
        )
        bad.add(index)


def _find_bad(records: tf.data.Dataset, prepare: Callable[[dict], dict]) -> list[tuple]:
  """(index, image_id, reason) of every record that `prepare` fails on."""
  found = []
  try:
    for ex in records:
      try:
        prepare(ex)
      except tf.errors.OpError as e:
        image_id = ex['image_id'].numpy().decode('utf-8', 'replace')
        found.append((int(ex['index']), image_id, _reason(e)))
  except tf.errors.OpError:  # The records themselves cannot be read.
    pass
  return found


def _reason(error: tf.errors.OpError) -> str:
  """The op's own words, without TF's function-node prefix and op suffix."""
  text = re.sub(r'\{\{function_node [^}]*\}\}', '', error.message)
  text = re.sub(r'\[Op:\w+\].*', '', text, flags=re.S)
  return ' '.join(text.split())


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  n = len(batch['mask'])
  if n == size:
    return batch
  return {
    k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()
  }
