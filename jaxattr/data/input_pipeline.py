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

BAD_IMAGE_MODES = ('fail', 'skip')


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


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bilinear resize to size², antialiased (PIL's and torchvision's filter rule).

  The one resize of train and eval, so a model sees the same filtering in both.
  Antialiasing widens the bilinear triangle by the shrink factor on an axis that
  shrinks; on an axis that does not, it is the same triangle as a plain bilinear
  resize, which is then used (up to float rounding the same result, and ~3x
  cheaper than the antialiasing kernel).
  """
  shrinks = tf.reduce_any(tf.shape(image)[:2] > size)
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
  instead of two, and 3x cheaper than `crop_and_resize`), with the same
  antialiasing rule as `eval_preprocess`.

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
  out = _to_uint8(_resize(window, size))
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
  return _to_uint8(_resize(image, data_config.image_size))


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
    out = {
      'image': eval_preprocess(decode(ex['image']), data_config),
      'labels': ex['labels'],
      'index': tf.cast(ex['index'], tf.int32),
      'mask': tf.constant(True),
    }
    out.update({k: ex[k] for k in extra_keys})
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
