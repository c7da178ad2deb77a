r"""Benchmark (and look at) the synthetic pedestrian dataset.

Prints the drawing + JPEG-encoding throughput of one process and the wall time of
a full `download_and_prepare` of a builder config into a temp dir.
Optionally writes a grid of examples with their cue boxes (green) and distractor
boxes (red) outlined, to look at what is drawn.

  python -m experiments.bench_synthetic
  python -m experiments.bench_synthetic --grid=/tmp/synthetic_grid.png --num_images=0 \
      --prepare_config=
"""

import tempfile
import time

import numpy as np
from absl import app, flags, logging
from PIL import Image, ImageDraw

from jaxattr.data import pedestrians, synthetic
from jaxattr.data.canvas import example_rngs

_NUM_IMAGES = flags.DEFINE_integer('num_images', 2000, 'Images drawn per throughput run.')
_PREPARE = flags.DEFINE_string(
  'prepare_config', 'small', 'Builder config to build into a temp dir ("" = skip).'
)
_GRID = flags.DEFINE_string('grid', '', 'Write a PNG grid of examples here ("" = skip).')
_GRID_N = flags.DEFINE_integer('grid_n', 16, 'Examples in the grid.')
_GRID_START = flags.DEFINE_integer('grid_start', 0, 'First train index of the grid.')


def _throughput(num: int) -> float:
  start = time.perf_counter()
  count = sum(1 for _ in pedestrians.generate_range('train', num, 0))
  return count / (time.perf_counter() - start)


def _grid(path: str, n: int, start: int, cell: int = 128) -> None:
  """Draws n train examples resized to cell x cell (as the model sees them), boxes outlined."""
  cols = 8
  rows = (n + cols - 1) // cols
  canvas = Image.new('RGB', (cols * (cell + 4), rows * (cell + 16)), (255, 255, 255))
  for k in range(n):
    index = start + k
    drawing = pedestrians.draw_example(example_rngs('train', index, seed=0)[0])
    img = Image.fromarray(drawing.image).resize((cell, cell), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for box, present in zip(drawing.cue_boxes, drawing.labels, strict=True):
      if present:
        y0, x0, y1, x1 = box * cell
        draw.rectangle((x0, y0, x1, y1), outline=(0, 255, 0))
    for y0, x0, y1, x1 in drawing.distractor_boxes * cell:
      draw.rectangle((x0, y0, x1, y1), outline=(255, 0, 0))
    x, y = (k % cols) * (cell + 4), (k // cols) * (cell + 16)
    canvas.paste(img, (x, y))
    names = [pedestrians.ATTRIBUTES[i][:4] for i in np.flatnonzero(drawing.labels)]
    ImageDraw.Draw(canvas).text((x, y + cell), ' '.join(names)[:24], fill=(0, 0, 0))
  canvas.save(path)
  logging.info('Wrote %s', path)


def main(argv):
  del argv
  if _GRID.value:
    _grid(_GRID.value, _GRID_N.value, _GRID_START.value)
  if _NUM_IMAGES.value:
    rate = _throughput(_NUM_IMAGES.value)
    print(f'draw+encode, 1 process: {rate:.0f} images/s ({_NUM_IMAGES.value} images)')
  if _PREPARE.value:
    with tempfile.TemporaryDirectory() as data_dir:
      builder = synthetic.SyntheticAttributes(config=_PREPARE.value, data_dir=data_dir)
      start = time.perf_counter()
      builder.download_and_prepare()
      elapsed = time.perf_counter() - start
      sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
      print(f'download_and_prepare({_PREPARE.value}): {elapsed:.1f} s wall, splits {sizes}')


if __name__ == '__main__':
  app.run(main)
