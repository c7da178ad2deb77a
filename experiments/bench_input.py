r"""Throughput of the input pipeline (images/s) on WIDER-like and PETA-like JPEG crops.

  python -m experiments.bench_input
  python -m experiments.bench_input --data_root=/tmp/jaxattr_bench_input \
      --kinds=wider --num_train=10000 --steps=250

Builds once (cached in --data_root) a `custom_attributes` dataset per crop kind:
random smooth content (noise octaves over colour gradients), so the JPEG files
have realistic sizes (WIDER-like 150x300 crops: ~10-30 KB). Then times
`input_pipeline.train_batches` with the paper's augmentation (resize 256, random
square crop with side in [128, 224], resize to 224x224, flip) and
`input_pipeline.eval_batches` (resize to 224x224) after a warm-up, and prints the
images/s, how many CPU cores the process kept busy (process CPU time / wall time
over the timed window) and images per CPU-second (the cost, which other load on
the machine does not change much). The target is >= 1,000 images/s for the train
pipeline on a 2-core machine.
"""

import csv
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from PIL import Image

from jaxattr import schema
from jaxattr.data import input_pipeline

# (width, height) of a crop of each kind; each crop's size is jittered by up to 15%.
KINDS = {'wider': (150, 300), 'peta': (60, 150)}

_DATA_ROOT = flags.DEFINE_string(
  'data_root',
  os.path.join(tempfile.gettempdir(), 'jaxattr_bench_input'),
  'Where the generated images and the prepared datasets are kept (reused when present).',
)
_KINDS = flags.DEFINE_list('kinds', list(KINDS), f'Crop kinds to time, of {list(KINDS)}.')
_NUM_TRAIN = flags.DEFINE_integer('num_train', 3000, 'Train images per kind.')
_NUM_EVAL = flags.DEFINE_integer('num_eval', 1000, 'Validation images per kind.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Global batch (train and eval).')
_WARMUP = flags.DEFINE_integer('warmup', 10, 'Batches read before the clock starts.')
_STEPS = flags.DEFINE_integer('steps', 60, 'Timed batches (train: kept within one epoch).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Output side.')
_QUALITY = flags.DEFINE_integer('jpeg_quality', 90, 'JPEG quality of the generated files.')

NUM_ATTRIBUTES = 14


def smooth_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """Random smooth RGB content: colour gradients plus noise at a few scales.

  Args:
    rng: the generator.
    width: image width.
    height: image height.

  Returns:
    uint8 [height, width, 3].
  """
  yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing='ij')

  def noise(amplitudes) -> np.ndarray:
    # Octaves from blobs to fine texture, as clothes, background and edges give.
    out = np.zeros((height, width), np.float32)
    for cells, amplitude in zip((4, 16, 48, height // 2), amplitudes, strict=True):
      coarse = rng.normal(0.0, amplitude, (cells, max(1, cells * width // height)))
      up = Image.fromarray(coarse.astype(np.float32)).resize((width, height), Image.BICUBIC)
      out += np.asarray(up)
    return out

  # Shared luminance plus weaker per-channel colour, as natural images are.
  luminance = rng.uniform(70, 180) + rng.uniform(-60, 60) * yy + noise((35.0, 25.0, 14.0, 9.0))
  image = np.empty((height, width, 3), np.float32)
  for c in range(3):
    image[..., c] = luminance + rng.uniform(-30, 30) * xx + noise((20.0, 10.0, 5.0, 3.0))
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def make_dataset(root: Path, kind: str, num_train: int, num_eval: int, quality: int) -> None:
  """Writes JPEG crops and a labels.csv (written last: its presence means complete)."""
  labels_csv = root / 'labels.csv'
  if labels_csv.exists():
    return
  width, height = KINDS[kind]
  rng = np.random.default_rng(0)
  (root / 'images').mkdir(parents=True, exist_ok=True)
  rows = []
  sizes = []
  for split, count in (('train', num_train), ('validation', num_eval)):
    for i in range(count):
      w = int(width * rng.uniform(0.85, 1.15))
      h = int(height * rng.uniform(0.85, 1.15))
      name = f'images/{split}_{i:05d}.jpg'
      Image.fromarray(smooth_image(rng, w, h)).save(root / name, format='JPEG', quality=quality)
      sizes.append((root / name).stat().st_size)
      labels = rng.choice(['1', '0', '-1'], size=NUM_ATTRIBUTES, p=[0.3, 0.65, 0.05])
      rows.append([name, split, *labels])
  tmp = root / 'labels.csv.tmp'
  with open(tmp, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['image', 'split', *[f'attr{i}' for i in range(NUM_ATTRIBUTES)]])
    writer.writerows(rows)
  tmp.rename(labels_csv)
  logging.info('Wrote %d %s-like JPEGs to %s.', len(sizes), kind, root)


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def time_batches(batches, warmup: int, steps: int) -> tuple[float, float, float]:
  """Seconds to the first batch, then images/s and busy cores over `steps` after `warmup`.

  Busy cores = process CPU time / wall time over the timed batches: how many
  cores the pipeline kept busy (other processes on the machine lower it).
  """
  start = time.perf_counter()
  next(batches)
  first = time.perf_counter() - start
  for _ in range(warmup - 1):
    next(batches)
  count = 0
  start, cpu = time.perf_counter(), _cpu_seconds()
  for _ in range(steps):
    count += len(next(batches)['image'])
  wall = time.perf_counter() - start
  return first, count / wall, (_cpu_seconds() - cpu) / wall


def main(argv):
  del argv
  # TensorFlow only feeds the host here; it must not grab an accelerator.
  tf.config.set_visible_devices([], 'GPU')
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  print(
    f'CPU cores: os.cpu_count()={os.cpu_count()}, usable by this process={cores}; tf.data '
    f'workers: map num_parallel_calls=AUTOTUNE on the default threadpool, at most {cores} '
    f'threads (one per usable core); load average {os.getloadavg()[0]:.2f}'
  )
  for kind in _KINDS.value:
    if kind not in KINDS:
      raise app.UsageError(f'Unknown kind {kind!r}; expected one of {list(KINDS)}.')
    # The folder names what was generated, so other sizes never reuse a stale build.
    root = Path(_DATA_ROOT.value) / (
      f'{kind}_{_NUM_TRAIN.value}_{_NUM_EVAL.value}_q{_QUALITY.value}'
    )
    make_dataset(root / 'manual', kind, _NUM_TRAIN.value, _NUM_EVAL.value, _QUALITY.value)
    config = schema.defaults().data
    config.name = 'custom_attributes'
    config.data_dir = str(root / 'tfds')
    config.manual_dir = str(root / 'manual')
    config.image_size = _IMAGE_SIZE.value
    config.num_parallel_calls = tf.data.AUTOTUNE
    builder = input_pipeline.get_builder(config)
    input_pipeline.prepare(builder, config)
    builder = input_pipeline.get_builder(config)
    files = sorted((root / 'manual' / 'images').glob('train_*.jpg'))
    kb = np.mean([f.stat().st_size for f in files]) / 1024
    spe = input_pipeline.steps_per_epoch(
      builder.info.splits[config.train_split].num_examples, _BATCH.value
    )
    if _WARMUP.value + _STEPS.value > spe:
      logging.warning(
        'warmup + steps = %d > %d steps per epoch: the timing includes an epoch start.',
        _WARMUP.value + _STEPS.value,
        spe,
      )
    train = input_pipeline.train_batches(builder, config, global_batch=_BATCH.value, seed=0)
    train_first, train_ips, train_cores = time_batches(train, _WARMUP.value, _STEPS.value)
    eval_iter, num_batches = input_pipeline.eval_batches(
      builder, config, config.eval_split, global_batch=_BATCH.value
    )
    eval_steps = min(_STEPS.value, num_batches - _WARMUP.value - 1)
    _, eval_ips, eval_cores = time_batches(eval_iter, _WARMUP.value, eval_steps)
    print(
      f'{kind}-like ({KINDS[kind][0]}x{KINDS[kind][1]} px, mean {kb:.1f} KB JPEG), '
      f'{_IMAGE_SIZE.value}x{_IMAGE_SIZE.value} out, batch {_BATCH.value}: '
      f'train {train_ips:,.0f} images/s ({train_cores:.2f} cores busy = '
      f'{train_ips / train_cores:,.0f} images per CPU-second, '
      f'crop [{config.crop_min}, {config.crop_max}] of {config.resize_size}, flip; '
      f'first batch after {train_first:.2f} s); '
      f'eval {eval_ips:,.0f} images/s ({eval_cores:.2f} cores busy = '
      f'{eval_ips / eval_cores:,.0f} images per CPU-second)'
    )


if __name__ == '__main__':
  app.run(main)
