"""What the two synthetic datasets share: the canvas, its randomness and the example.

The pedestrian crops (`jaxattr.data.pedestrians`) and the cues task
(`jaxattr.data.cues`) are drawn on the same textured, cluttered background, from
the same per-example generators, and stored as the same example dict. Pure numpy
and PIL (no TensorFlow).

Each example is a pure function of (seed, split, index): it draws from
`numpy.random.default_rng([seed, split_id, index])`, so examples are independent
of generation order and a config's splits are prefixes of a larger config's.
"""

import colorsys
import io
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2}
NOISE_AMPLITUDE = (4.0, 16.0)  # Range of the background texture amplitude (grey levels).
JPEG_QUALITY = 90

_NOISE_BANK_SIZE = 256
# Fixed texture bank: examples take a random window of it, which is much cheaper
# than drawing per-pixel noise for every image and still deterministic.
_NOISE_BANK = (
  np.random.default_rng(20180908).standard_normal((_NOISE_BANK_SIZE, _NOISE_BANK_SIZE, 3))
).astype(np.float32)
_NOISE_BANK = (_NOISE_BANK + np.roll(_NOISE_BANK, 1, axis=0) + np.roll(_NOISE_BANK, 1, axis=1)) / 3


class Drawing(NamedTuple):
  """One drawn example before any label is hidden.

  Attributes:
    image: uint8 [H, W, 3] crop.
    labels: int8 [C], 1 = present, 0 = absent.
    cue_boxes: float32 [C, 4], normalised [ymin, xmin, ymax, xmax] of each present
      cue, zeros for absent attributes.
    distractor_boxes: float32 [D, 4], normalised boxes of look-alike cues drawn
      outside the figure (D = 0 for most images).
  """

  image: np.ndarray
  labels: np.ndarray
  cue_boxes: np.ndarray
  distractor_boxes: np.ndarray


class Uniforms:
  """Uniform numbers drawn from a Generator in blocks.

  One vectorised call per block instead of one call per number keeps the Python
  overhead of a few hundred draws per image small; the sequence is still a pure
  function of the generator's state.
  """

  def __init__(self, rng: np.random.Generator, block: int = 128):
    self._rng = rng
    self._block = block
    self._buf: list[float] = []
    self._pos = 0

  def __call__(self, lo: float = 0.0, hi: float = 1.0) -> float:
    if self._pos >= len(self._buf):
      self._buf = self._rng.random(self._block).tolist()
      self._pos = 0
    x = self._buf[self._pos]
    self._pos += 1
    return lo + (hi - lo) * x

  def chance(self, p: float) -> bool:
    return self() < p

  def index(self, n: int) -> int:
    return min(int(self() * n), n - 1)

  def pick(self, seq: Sequence[Any]) -> Any:
    return seq[self.index(len(seq))]

  def weighted(self, weights: Sequence[float]) -> int:
    x = self() * sum(weights)
    for i, w in enumerate(weights):
      x -= w
      if x < 0:
        return i
    return len(weights) - 1


# --- Geometry and colours --------------------------------------------------


def hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
  r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
  return int(r * 255), int(g * 255), int(b * 255)


def overlaps(a, b) -> bool:
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def normalise(box, width: int, height: int) -> list[float]:
  """Pixel (x0, y0, x1, y1) -> normalised [ymin, xmin, ymax, xmax] clipped to the image."""
  x0, y0, x1, y1 = box
  return [
    min(max(y0 / height, 0.0), 1.0),
    min(max(x0 / width, 0.0), 1.0),
    min(max(y1 / height, 0.0), 1.0),
    min(max(x1 / width, 0.0), 1.0),
  ]


# --- The canvas ------------------------------------------------------------


def background(u: Uniforms, width: int, height: int) -> Image.Image:
  """Muted base colour, vertical gradient and a window of the texture bank."""
  base = np.array(hsv(u(), u(0.05, 0.45), u(0.3, 0.85)), np.float32)
  tint = np.array(hsv(u(), u(0.05, 0.45), u(0.3, 0.85)), np.float32)
  ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
  img = base + (tint - base) * ramp * u(0.0, 0.8)
  y0 = u.index(_NOISE_BANK_SIZE - height)
  x0 = u.index(_NOISE_BANK_SIZE - width)
  img = img + u(*NOISE_AMPLITUDE) * _NOISE_BANK[y0 : y0 + height, x0 : x0 + width]
  return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def clutter(draw: ImageDraw.ImageDraw, u: Uniforms, width: int, height: int):
  """Low-contrast rectangles and lines: walls, windows, poles."""
  for _ in range(2 + u.index(4)):
    x0, y0 = u(-0.2, 1.0) * width, u(-0.2, 1.0) * height
    w, h = u(0.1, 0.7) * width, u(0.05, 0.5) * height
    draw.rectangle((x0, y0, x0 + w, y0 + h), fill=hsv(u(), u(0.0, 0.3), u(0.25, 0.85)))
  for _ in range(u.index(3)):
    x = u(0, width)
    draw.line((x, 0, x + u(-5, 5), height), fill=hsv(u(), u(0.0, 0.3), u(0.2, 0.8)), width=1)


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  """JPEG bytes of a uint8 [H, W, 3] image."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def example_rngs(
  split: str, index: int, seed: int = 0
) -> tuple[np.random.Generator, np.random.Generator]:
  """The two independent generators of one example: (drawing, hiding labels).

  `pedestrians.draw_example(example_rngs(split, index, seed)[0])` redraws a stored example,
  e.g. to get its distractor boxes.

  Args:
    split: 'train', 'validation' or 'test'.
    index: position in the split.
    seed: dataset seed.

  Returns:
    (rng for the drawing, rng for hiding labels).
  """
  root = np.random.default_rng([seed, SPLIT_IDS[split], index])
  draw_rng, hide_rng = root.spawn(2)
  return draw_rng, hide_rng


def to_example(
  drawing: Drawing, labels: np.ndarray, split: str, index: int, encode: bool
) -> dict[str, Any]:
  """The stored example of a drawing.

  Args:
    drawing: the drawn image and its cue boxes.
    labels: int8 [C] labels as stored (-1 = unknown).
    split: split name (part of `image_id`).
    index: position in the split.
    encode: store JPEG bytes (True) or the uint8 image (False).

  Returns:
    Dict with `image`, `labels`, `index`, `image_id`, `cue_boxes` (float32 [C, 4]).
  """
  return {
    'image': encode_jpeg(drawing.image) if encode else drawing.image,
    'labels': labels,
    'index': index,
    'image_id': f'{split}_{index:07d}',
    'cue_boxes': drawing.cue_boxes,
  }
