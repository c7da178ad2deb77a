"""The painter of the synthetic pedestrian dataset: scenes, labels and cue boxes.

Pure numpy and PIL (no TensorFlow): `jaxattr.data.synthetic` wraps it in a TFDS
builder, and benchmarks or tests can draw examples without TFDS.

No real attribute dataset can ship with jaxattr, so the demo and the tests use
drawn person crops that keep what makes the task hard: 14 labels per image with the
class imbalance of WIDER-Attribute, small cues whose position varies with the
figure's size, position and lean, background clutter with look-alike cues placed
outside the figure, occluders, and ~10% of labels hidden as unknown. No spatial
annotation reaches the model, but since we draw the cues we know where each one is
(`cue_boxes`), so attention maps can be scored (pointing game).

Each example is a pure function of (seed, split, index): it draws from
`numpy.random.default_rng([seed, split_id, index])`, so examples are independent
of generation order and a config's splits are prefixes of a larger config's.

Difficulty knobs live together below (`CUE_SCALE`, `DISTRACTOR_RATE`,
`OCCLUDER_RATE`, ...) so they can be tuned without touching the drawing code.

Design rule of the cues (version 1.1.0; issue 15). A crop (96-192 px tall, width
0.35-0.6 of its height) reaches the model resized to a square, 112x112 in the
demo: about 0.6-1.2x vertically and 1.7-2.9x horizontally, so the vertical size of
a cue is the one that can get too small.
(1) Every cue is at least ~4 px tall and ~10 px wide at 112 px for a full-body
    figure (figure height ~95 px): sunglasses 0.044-0.052 of the figure height
    (4-5 px), logos 0.065-0.085 (6-8 px), face masks 0.06-0.07 (6-7 px), stripes
    with a period of 0.06-0.08 (5-8 px, each stripe half of it), hats 0.06-0.1.
(2) The rare local cues stay small against the crop, so that global average
    pooling dilutes them (the regime the paper's attention is for): the median box
    of sunglasses, logos and face masks covers under 2 % of the crop's area
    (0.8 %, 1.0 % and 1.9 % in `cue_size_audit()`); upper-body crops, whose heads
    are larger, reach 2.5-6 % at the 90th percentile.
(3) Every cue is decidable from the pixels: no cue shares its place, shape and
    colour with another attribute's (no dark face masks, which look like beards;
    hats contrast with the hair).
Version 1.0.0 broke (1) for sunglasses (3.5 px tall) and logos (4.5 px at the
10th percentile) and (3) for dark masks and hair-coloured hats; faceMask,
sunglass and Hat had the demo's lowest APs (12, 38, 49).
"""

import colorsys
import dataclasses
import io
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

# The 14 WIDER-Attribute attributes, same names and order as the real dataset
# (`jaxattr.data.wider.ATTRIBUTE_NAMES`, which imports TFDS; a test keeps them equal).
ATTRIBUTES = (
  'Male',
  'longHair',
  'sunglass',
  'Hat',
  'Tshirt',
  'longSleeve',
  'formal',
  'shorts',
  'jeans',
  'longPants',
  'skirt',
  'faceMask',
  'logo',
  'stripe',
)
# Positive ratios of the WIDER-Attribute train split, same order.
POSITIVE_RATIOS = (
  0.563,
  0.224,
  0.051,
  0.228,
  0.218,
  0.468,
  0.074,
  0.147,
  0.085,
  0.364,
  0.102,
  0.034,
  0.266,
  0.053,
)
NUM_CLASSES = len(ATTRIBUTES)
_IDX = {name: i for i, name in enumerate(ATTRIBUTES)}
SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2}

# --- Difficulty knobs ---------------------------------------------------------
CUE_SCALE = 1.0  # Multiplies the size of the small cues (glasses, mask, logo, tie, stripes).
DISTRACTOR_RATE = 0.3  # Fraction of images with look-alike cues outside the figure.
MAX_DISTRACTORS = 3  # 1..MAX_DISTRACTORS of them when present.
OCCLUDER_RATE = 0.12  # Fraction of images with a box covering part of the figure.
UNKNOWN_RATE = 0.1  # Fraction of label entries hidden as unknown (-1), as in WIDER.
NOISE_AMPLITUDE = (4.0, 16.0)  # Range of the background texture amplitude (grey levels).
JPEG_QUALITY = 90
# Crop geometry, like real person crops.
CROP_HEIGHT = (96, 192)
CROP_ASPECT = (0.35, 0.6)  # width / height.
# When no lower-body garment is labelled, how the legs are explained: an
# upper-body crop, a long coat/dress, or legs hidden behind an object.
NO_LOWER_MODES = (('half_body', 0.6), ('coat', 0.2), ('legs_hidden', 0.2))

_NOISE_BANK_SIZE = 256
# Fixed texture bank: examples take a random window of it, which is much cheaper
# than drawing per-pixel noise for every image and still deterministic.
_NOISE_BANK = (
  np.random.default_rng(20180908).standard_normal((_NOISE_BANK_SIZE, _NOISE_BANK_SIZE, 3))
).astype(np.float32)
_NOISE_BANK = (_NOISE_BANK + np.roll(_NOISE_BANK, 1, axis=0) + np.roll(_NOISE_BANK, 1, axis=1)) / 3

_SKIN_TONES = (
  (255, 224, 196),
  (241, 194, 160),
  (224, 172, 135),
  (198, 134, 96),
  (161, 102, 70),
  (120, 78, 52),
)
_HAIR_COLOURS = (
  (25, 20, 18),
  (60, 40, 25),
  (105, 70, 40),
  (190, 160, 95),
  (150, 150, 150),
  (130, 50, 25),
)
_DARK = (22, 22, 26)


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


class _Uniforms:
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


# --- Labels -------------------------------------------------------------------
def _conditionals() -> dict[str, float]:
  """Conditional probabilities that reproduce POSITIVE_RATIOS under the constraints.

  Correlations follow common sense (long hair and skirts more often on women,
  formal wear is long-sleeved, jeans are long pants) and every marginal stays
  equal to its target.
  """
  r = dict(zip(ATTRIBUTES, POSITIVE_RATIOS, strict=True))
  p_long_hair_male = 0.08
  female = 1.0 - r['Male']
  other_lower = r['shorts'] + r['longPants']
  no_lower = 1.0 - other_lower - r['skirt']
  return {
    'male': r['Male'],
    'long_hair_male': p_long_hair_male,
    'long_hair_female': (r['longHair'] - r['Male'] * p_long_hair_male) / female,
    'formal_given_long_sleeve': r['formal'] / r['longSleeve'],
    'jeans_given_pants': r['jeans'] / r['longPants'],
    # Skirts are drawn on women only; the rest of the lower-body mass is split
    # in the same proportions for both sexes, which keeps the marginals exact.
    'skirt_female': r['skirt'] / female,
    'shorts_share': r['shorts'] / (other_lower + no_lower),
    'pants_share': r['longPants'] / (other_lower + no_lower),
  }


_COND = _conditionals()


def sample_labels(rng: np.random.Generator) -> np.ndarray:
  """Samples one consistent label vector (before any label is hidden).

  Constraints: at most one lower-body garment among shorts / skirt / longPants,
  jeans imply longPants, Tshirt and longSleeve are exclusive, formal implies
  longSleeve. Marginals equal POSITIVE_RATIOS.

  Args:
    rng: the example's generator.

  Returns:
    int8 [C] array of 0/1.
  """
  u = rng.random(10).tolist()
  c = _COND
  r = dict(zip(ATTRIBUTES, POSITIVE_RATIOS, strict=True))
  y = dict.fromkeys(ATTRIBUTES, 0)
  male = u[0] < c['male']
  y['Male'] = int(male)
  y['longHair'] = int(u[1] < (c['long_hair_male'] if male else c['long_hair_female']))
  y['sunglass'] = int(u[2] < r['sunglass'])
  y['Hat'] = int(u[3] < r['Hat'])
  y['faceMask'] = int(u[4] < r['faceMask'])
  y['logo'] = int(u[5] < r['logo'])
  y['stripe'] = int(u[6] < r['stripe'])
  if u[7] < r['Tshirt']:
    y['Tshirt'] = 1
  elif u[7] < r['Tshirt'] + r['longSleeve']:
    y['longSleeve'] = 1
    y['formal'] = int(u[8] < c['formal_given_long_sleeve'])
  # Lower body: a skirt (women only), else shorts / long pants / nothing labelled.
  x = u[9]
  if not male:
    if x < c['skirt_female']:
      y['skirt'] = 1
      x = None
    else:
      x = (x - c['skirt_female']) / (1.0 - c['skirt_female'])
  if x is not None:
    if x < c['shorts_share']:
      y['shorts'] = 1
    elif x < c['shorts_share'] + c['pants_share']:
      y['longPants'] = 1
      # Reuse the position inside the pants interval: an independent uniform.
      within = (x - c['shorts_share']) / c['pants_share']
      y['jeans'] = int(within < c['jeans_given_pants'])
  return np.array([y[a] for a in ATTRIBUTES], dtype=np.int8)


def hide_labels(
  labels: np.ndarray, rng: np.random.Generator, rate: float = UNKNOWN_RATE
) -> np.ndarray:
  """Marks a random `rate` of the entries as unknown (-1), independent of the drawing.

  Args:
    labels: int8 [C] labels.
    rng: a generator not used by the drawing.
    rate: probability that an entry is hidden.

  Returns:
    int8 [C] labels with -1 where hidden.
  """
  hidden = rng.random(labels.shape) < rate
  return np.where(hidden, np.int8(-1), labels).astype(np.int8)


# --- Colours ------------------------------------------------------------------
def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
  r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
  return int(r * 255), int(g * 255), int(b * 255)


def _cloth(u: _Uniforms, avoid_blue: bool = False) -> tuple[int, int, int]:
  """A garment colour: saturated, pastel, or grey-ish."""
  h = u()
  if avoid_blue and 0.53 < h < 0.7:
    h += 0.2
  kind = u()
  if kind < 0.3:
    return _hsv(h, u(0.0, 0.12), u(0.12, 0.9))  # black / grey / white
  if kind < 0.65:
    return _hsv(h, u(0.45, 0.9), u(0.35, 0.9))
  return _hsv(h, u(0.15, 0.45), u(0.5, 0.95))


def _contrast(colour: tuple[int, int, int], u: _Uniforms) -> tuple[int, int, int]:
  """A colour that stands out on `colour` (for emblems and stripes)."""
  lum = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
  v = u(0.05, 0.3) if lum > 120 else u(0.75, 1.0)
  return _hsv(u(), u(0.0, 0.9), v)


def _jitter(colour: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
  return tuple(int(max(0, min(255, c + amount))) for c in colour)


# --- Geometry -----------------------------------------------------------------
class _Figure:
  """Maps body coordinates to pixels.

  v runs from the top of the head (0) to the soles (1); u is the horizontal offset
  from the body axis; both are in units of the figure height. The lean shears the
  body about the hips.
  """

  def __init__(self, cx: float, top: float, height: float, lean: float):
    self.cx, self.top, self.h, self.lean = cx, top, height, lean

  def p(self, u: float, v: float) -> tuple[float, float]:
    return (self.cx + (u + self.lean * (v - 0.55)) * self.h, self.top + v * self.h)

  def poly(self, pts: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [self.p(u, v) for u, v in pts]


def _bbox(points: Sequence[tuple[float, float]]) -> tuple[float, float, float, float]:
  """Pixel box (x0, y0, x1, y1) of a point set."""
  xs = [p[0] for p in points]
  ys = [p[1] for p in points]
  return min(xs), min(ys), max(xs), max(ys)


def _union(*boxes: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
  return (
    min(b[0] for b in boxes),
    min(b[1] for b in boxes),
    max(b[2] for b in boxes),
    max(b[3] for b in boxes),
  )


def _overlaps(a, b) -> bool:
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _normalise(box, width: int, height: int) -> list[float]:
  """Pixel (x0, y0, x1, y1) -> normalised [ymin, xmin, ymax, xmax] clipped to the image."""
  x0, y0, x1, y1 = box
  return [
    min(max(y0 / height, 0.0), 1.0),
    min(max(x0 / width, 0.0), 1.0),
    min(max(y1 / height, 0.0), 1.0),
    min(max(x1 / width, 0.0), 1.0),
  ]


def _ellipse_box(fig: _Figure, u: float, v: float, hu: float, hv: float):
  x, y = fig.p(u, v)
  return (x - hu * fig.h, y - hv * fig.h, x + hu * fig.h, y + hv * fig.h)


# --- Drawing ------------------------------------------------------------------
def _background(u: _Uniforms, width: int, height: int) -> Image.Image:
  """Muted base colour, vertical gradient and a window of the texture bank."""
  base = np.array(_hsv(u(), u(0.05, 0.45), u(0.3, 0.85)), np.float32)
  tint = np.array(_hsv(u(), u(0.05, 0.45), u(0.3, 0.85)), np.float32)
  ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
  img = base + (tint - base) * ramp * u(0.0, 0.8)
  y0 = u.index(_NOISE_BANK_SIZE - height)
  x0 = u.index(_NOISE_BANK_SIZE - width)
  img = img + u(*NOISE_AMPLITUDE) * _NOISE_BANK[y0 : y0 + height, x0 : x0 + width]
  return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _clutter(draw: ImageDraw.ImageDraw, u: _Uniforms, width: int, height: int):
  """Low-contrast rectangles and lines: walls, windows, poles."""
  for _ in range(2 + u.index(4)):
    x0, y0 = u(-0.2, 1.0) * width, u(-0.2, 1.0) * height
    w, h = u(0.1, 0.7) * width, u(0.05, 0.5) * height
    draw.rectangle((x0, y0, x0 + w, y0 + h), fill=_hsv(u(), u(0.0, 0.3), u(0.25, 0.85)))
  for _ in range(u.index(3)):
    x = u(0, width)
    draw.line((x, 0, x + u(-5, 5), height), fill=_hsv(u(), u(0.0, 0.3), u(0.2, 0.8)), width=1)


def _draw_emblem(draw, u: _Uniforms, cx: float, cy: float, size: float, colour) -> tuple:
  """A logo-like shape centred at (cx, cy); returns its pixel box."""
  r = size / 2
  kind = u.index(4)
  if kind == 0:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
  elif kind == 1:
    draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
  elif kind == 2:
    draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
  else:
    draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
  return (cx - r, cy - r, cx + r, cy + r)


def _draw_stripes(draw, x0, y0, x1, y1, period: float, colour, half_widths=None):
  """Horizontal stripes in a region; `half_widths(y)` bounds them to a body shape."""
  y = y0
  thick = max(period / 2, 1.0)
  while y < y1:
    ya, yb = y, min(y + thick, y1)
    if half_widths is None:
      draw.rectangle((x0, ya, x1, max(ya, yb - 1)), fill=colour)
    else:
      (la, ra), (lb, rb) = half_widths(ya), half_widths(yb)
      draw.polygon([(la, ya), (ra, ya), (rb, yb), (lb, yb)], fill=colour)
    y += period


def _distractors(draw, u: _Uniforms, fh: float, width: int, height: int, avoid) -> list[tuple]:
  """Look-alike cues (emblems, stripes, dark bands, light patches) outside the figure."""
  boxes = []
  for _ in range(1 + u.index(MAX_DISTRACTORS)):
    kind = u.index(4)
    if kind == 0:
      w = h = u(0.045, 0.08) * fh
    elif kind == 1:
      w, h = u(0.08, 0.16) * fh, u(0.08, 0.16) * fh
    elif kind == 2:
      w, h = u(0.06, 0.12) * fh, u(0.022, 0.035) * fh
    else:
      w, h = u(0.06, 0.1) * fh, u(0.035, 0.055) * fh
    w, h = min(w, width - 2), min(h, height - 2)
    for attempt in range(24):  # Rejection sampling of a spot that does not touch the figure.
      if attempt and attempt % 8 == 0:  # Narrow crops leave little room: shrink.
        w, h = max(w * 0.8, 2.0), max(h * 0.8, 2.0)
      x0, y0 = u(0, width - w), u(0, height - h)
      box = (x0, y0, x0 + w, y0 + h)
      # One pixel of margin: rasterised shapes may cover the pixel their box ends in.
      grown = (x0 - 1, y0 - 1, x0 + w + 1, y0 + h + 1)
      if not any(_overlaps(grown, b) for b in avoid + boxes):
        break
    else:
      continue
    if kind == 0:
      _draw_emblem(draw, u, x0 + w / 2, y0 + h / 2, w, _hsv(u(), u(0.3, 1.0), u(0.3, 1.0)))
    elif kind == 1:
      period = u(0.035, 0.055) * fh
      _draw_stripes(draw, x0, y0, x0 + w, y0 + h, period, _hsv(u(), u(0, 1), u(0.1, 1)))
    elif kind == 2:
      draw.rectangle(box, fill=_jitter(_DARK, u(0, 30)))
    else:
      draw.rounded_rectangle(box, radius=h / 3, fill=_hsv(u(), u(0.0, 0.3), u(0.75, 1.0)))
    boxes.append(box)
  return boxes


def _crop_geometry(u: _Uniforms, half_body: bool, shoulder: float):
  """Crop size and figure placement; returns (width, height, figure)."""
  height = CROP_HEIGHT[0] + u.index(CROP_HEIGHT[1] - CROP_HEIGHT[0] + 1)
  lo, hi = CROP_ASPECT
  lean = u(-0.06, 0.06)
  if half_body:
    # Upper-body crop: the figure is cut above mid-thigh, so the head is larger.
    aspect = u(max(lo, 0.45), hi)
    width = int(round(height * aspect))
    fh = height * u(1.4, 1.8)
    fh = max(min(fh, 0.98 * width / (2 * shoulder)), height / 0.7)
    # Room above the head for the tallest hat.
    top = (0.05 + u(0.0, 0.03)) * fh
    cx = width / 2 + u(-0.06, 0.06) * width
  else:
    aspect = u(lo, hi)
    width = int(round(height * aspect))
    # Half-width of the figure in units of its height (arms and hands included).
    half = shoulder + 0.08 + abs(lean) * 0.45
    fh = min(height * u(0.75, 0.95), width / (2 * half))
    top = 0.05 * fh + u(0.0, max(0.0, 0.99 * height - 1.05 * fh))
    slack = max(0.0, width / 2 - half * fh)
    cx = width / 2 + u(-1, 1) * slack
  width = min(max(width, math.ceil(lo * height)), math.floor(hi * height))
  return width, height, _Figure(cx, top, fh, lean)


class _Recorder:
  """ImageDraw proxy that remembers the pixel box of every shape of the figure.

  Distractors are then placed outside all of them, so no look-alike cue ever
  touches the person.
  """

  def __init__(self, draw: ImageDraw.ImageDraw):
    self._draw = draw
    self._shapes: list[Any] = []

  def _note(self, xy) -> None:
    self._shapes.append(xy)

  @property
  def boxes(self) -> list[tuple[float, float, float, float]]:
    """Pixel boxes (x0, y0, x1, y1) of the shapes drawn so far."""
    # Computed on demand: only images with distractors need them.
    return [
      tuple(xy) if len(xy) == 4 and not isinstance(xy[0], tuple) else _bbox(xy)
      for xy in self._shapes
    ]

  def polygon(self, xy, fill) -> None:
    self._note(xy)
    self._draw.polygon(xy, fill=fill)

  def rectangle(self, xy, fill) -> None:
    self._note(xy)
    self._draw.rectangle(xy, fill=fill)

  def rounded_rectangle(self, xy, radius, fill) -> None:
    self._note(xy)
    self._draw.rounded_rectangle(xy, radius=radius, fill=fill)

  def ellipse(self, xy, fill) -> None:
    self._note(xy)
    self._draw.ellipse(xy, fill=fill)

  def chord(self, xy, start, end, fill) -> None:
    self._note(xy)
    self._draw.chord(xy, start, end, fill=fill)

  def line(self, xy, fill, width: int = 1) -> None:
    self._note(xy)
    self._draw.line(xy, fill=fill, width=width)

  def point(self, xy, fill) -> None:
    self._draw.point(xy, fill=fill)


@dataclasses.dataclass
class _Scene:
  """What the body-part painters share while drawing one figure."""

  u: _Uniforms
  fig: _Figure
  draw: _Recorder
  y: dict[str, bool]
  male: bool
  shoulder: float
  waist: float
  head_hu: float
  head_hv: float
  skin: tuple[int, int, int]
  hair: tuple[int, int, int]
  top_colour: tuple[int, int, int]
  no_lower_mode: str | None
  boxes: dict[str, tuple] = dataclasses.field(default_factory=dict)

  def torso_edges(self, v: float) -> tuple[float, float]:
    """Left and right u of the torso at height v."""
    t = min(max((v - 0.17) / 0.33, 0.0), 1.0)
    half = self.shoulder + (self.waist - self.shoulder) * t
    return -half, half


def _paint_lower(sc: _Scene) -> None:
  """Legs, shoes and the lower-body garment (shorts, skirt, long pants, jeans)."""
  u, fig, draw, y, fh = sc.u, sc.fig, sc.draw, sc.y, sc.fig.h
  stance = u(0.035, 0.07)
  leg_w = 0.036 if sc.male else 0.032

  def leg(side, v0, v1, extra=0.0):
    t0, t1 = (v0 - 0.5) / 0.46, (v1 - 0.5) / 0.46
    c0 = side * (0.045 + (stance - 0.045) * t0)
    c1 = side * (0.045 + (stance - 0.045) * t1)
    w0, w1 = leg_w + extra, leg_w * 0.8 + extra
    return fig.poly([(c0 - w0, v0), (c0 + w0, v0), (c1 + w1, v1), (c1 - w1, v1)])

  bare_legs = sc.skin if u.chance(0.7) else _jitter(_DARK, u(0, 40))  # Or dark tights.
  shoe = _jitter(_DARK, u(0, 80))
  lower_colour = _cloth(u, avoid_blue=u.chance(0.85))  # Some plain navy pants look like jeans.
  for side in (-1, 1):
    draw.polygon(leg(side, 0.5, 0.965), fill=bare_legs)
    fx, fy = fig.p(side * (stance + 0.01), 0.975)
    draw.ellipse((fx - 0.04 * fh, fy - 0.018 * fh, fx + 0.04 * fh, fy + 0.02 * fh), fill=shoe)
  w = sc.waist
  hips = fig.poly([(-w, 0.48), (w, 0.48), (w + 0.005, 0.56), (-w - 0.005, 0.56)])
  if y['longPants'] or y['shorts']:
    v_end = u(0.93, 0.955) if y['longPants'] else u(0.63, 0.7)
    colour = lower_colour
    if y['jeans']:
      colour = _hsv(u(0.58, 0.63), u(0.4, 0.65), u(0.45, 0.75))
    parts = [hips, leg(-1, 0.5, v_end, 0.008), leg(1, 0.5, v_end, 0.008)]
    for part in parts:
      draw.polygon(part, fill=colour)
    if y['jeans']:
      # Denim texture: lighter and darker threads along the legs, faded knees.
      for side in (-1, 1):
        for _ in range(3 + u.index(3)):
          du = side * u(0.005, 0.07)
          shade = _jitter(colour, u(-35, 45))
          draw.line([fig.p(du, 0.55), fig.p(du + side * 0.015, v_end - 0.01)], fill=shade)
        kx, ky = fig.p(side * 0.05, u(0.7, 0.76))
        r = 0.015 * fh
        draw.ellipse((kx - r, ky - 1.5 * r, kx + r, ky + 1.5 * r), fill=_jitter(colour, 30))
    box = _union(*(_bbox(p) for p in parts))
    sc.boxes['longPants' if y['longPants'] else 'shorts'] = box
    if y['jeans']:
      sc.boxes['jeans'] = box
  elif y['skirt']:
    v_end = u(0.66, 0.78)
    flare = u(0.03, 0.08)
    pts = fig.poly([(-w, 0.47), (w, 0.47), (w + flare, v_end), (-w - flare, v_end)])
    draw.polygon(pts, fill=lower_colour)
    sc.boxes['skirt'] = _bbox(pts)
  elif sc.no_lower_mode != 'coat':
    # Unlabelled lower body (hidden or cut off): a plain hip band.
    draw.polygon(hips, fill=_jitter(sc.top_colour, -20))


def _paint_torso(sc: _Scene) -> None:
  """The top garment with its stripes, logo and formal collar and tie."""
  u, fig, draw, y, fh = sc.u, sc.fig, sc.draw, sc.y, sc.fig.h
  s, w = sc.shoulder, sc.waist
  coat_end = {'half_body': 0.8, 'coat': u(0.8, 0.88)}.get(sc.no_lower_mode, 0.52)
  flare = 0.05 if coat_end > 0.6 else 0.0
  torso = fig.poly(
    [
      (-s * 0.8, 0.16),
      (s * 0.8, 0.16),
      (s, 0.185),
      (w, 0.5),
      (w + flare, coat_end),
      (-w - flare, coat_end),
      (-w, 0.5),
      (-s, 0.185),
    ]
  )
  draw.polygon(torso, fill=sc.top_colour)
  cs = CUE_SCALE
  if y['stripe']:
    v0 = u(0.19, 0.3)
    v1 = min(v0 + u(0.1, 0.2) * cs, 0.49)
    period = max(u(0.06, 0.08) * fh * cs, 2.0)
    colour = _contrast(sc.top_colour, u)

    def edges_px(py):
      v = (py - fig.top) / fh
      lu, ru = sc.torso_edges(v)
      return fig.p(lu, v)[0], fig.p(ru, v)[0]

    y0, y1 = fig.p(0, v0)[1], fig.p(0, v1)[1]
    _draw_stripes(draw, 0, y0, 0, y1, period, colour, half_widths=edges_px)
    lu, ru = sc.torso_edges(v0)
    sc.boxes['stripe'] = _bbox(fig.poly([(lu, v0), (ru, v0), (lu, v1), (ru, v1)]))
  if y['formal']:
    collar = fig.poly([(-0.04, 0.165), (0.0, 0.215), (0.04, 0.165)])
    draw.polygon(collar, fill=_hsv(u(), u(0, 0.1), u(0.85, 1.0)))
    tw = u(0.012, 0.018) * cs
    end = u(0.32, 0.38)
    tie = fig.poly(
      [(-tw * 0.6, 0.19), (tw * 0.6, 0.19), (tw, end - 0.02), (0, end), (-tw, end - 0.02)]
    )
    draw.polygon(tie, fill=_hsv(u(), u(0.5, 1.0), u(0.2, 0.8)))
    sc.boxes['formal'] = _union(_bbox(collar), _bbox(tie))
  if y['logo']:
    size = u(0.065, 0.085) * cs * fh
    # Beside the tie when there is one.
    lu = u(0.045, 0.06) * (1 if u.chance(0.5) else -1) if y['formal'] else u(-0.05, 0.05)
    lx, ly = fig.p(lu, u(0.23, 0.33))
    sc.boxes['logo'] = _draw_emblem(draw, u, lx, ly, size, _contrast(sc.top_colour, u))


def _paint_arms(sc: _Scene) -> None:
  """Arms and hands; the sleeve length tells Tshirt, longSleeve and sleeveless apart."""
  u, fig, draw, y, fh = sc.u, sc.fig, sc.draw, sc.y, sc.fig.h
  arm_out = u(0.0, 0.04)
  sleeves = []
  sv, wv = 0.175, 0.47  # Heights of shoulder and wrist.
  for side in (-1, 1):
    su, wu = side * (sc.shoulder - 0.015), side * (sc.shoulder + arm_out)

    def segment(t0, t1, widen=0.0, su=su, wu=wu):
      u0, v0 = su + (wu - su) * t0, sv + (wv - sv) * t0
      u1, v1 = su + (wu - su) * t1, sv + (wv - sv) * t1
      w0, w1 = 0.034 - 0.01 * t0 + widen, 0.034 - 0.01 * t1 + widen
      return fig.poly([(u0 - w0, v0), (u0 + w0, v0), (u1 + w1, v1), (u1 - w1, v1)])

    draw.polygon(segment(0.0, 1.0), fill=sc.skin)
    hx, hy = fig.p(su + (wu - su) * 1.04, sv + (wv - sv) * 1.04)
    r = 0.024 * fh
    draw.ellipse((hx - r, hy - r, hx + r, hy + r), fill=sc.skin)
    if y['Tshirt']:
      sleeve = segment(0.0, u(0.3, 0.42), 0.006)
    elif y['longSleeve']:
      sleeve = segment(0.0, 0.97, 0.004)
    else:
      sleeve = segment(0.0, 0.06, 0.004)  # Just a strap: sleeveless.
    draw.polygon(sleeve, fill=sc.top_colour)
    sleeves.append(sleeve)
  if y['Tshirt'] or y['longSleeve']:
    sc.boxes['Tshirt' if y['Tshirt'] else 'longSleeve'] = _union(*(_bbox(s) for s in sleeves))


def _paint_head(sc: _Scene) -> None:
  """Neck, hair, face, and the head cues: beard, sunglasses, face mask, hat."""
  u, fig, draw, y, fh = sc.u, sc.fig, sc.draw, sc.y, sc.fig.h
  hu, hv = sc.head_hu, sc.head_hv
  cs = CUE_SCALE
  draw.polygon(fig.poly([(-0.02, 0.12), (0.02, 0.12), (0.022, 0.17), (-0.022, 0.17)]), sc.skin)
  if y['longHair']:
    end = u(0.25, 0.34)
    strands = [
      fig.poly(
        [
          (side * (hu - 0.012), 0.03),
          (side * (hu + 0.016), 0.05),
          (side * (hu + 0.024), end),
          (side * (hu - 0.012), end - 0.02),
        ]
      )
      for side in (-1, 1)
    ]
    for strand in strands:
      draw.polygon(strand, fill=sc.hair)
    sc.boxes['longHair'] = _union(
      *(_bbox(s) for s in strands), _ellipse_box(fig, 0, 0.03, hu, 0.03)
    )
  draw.ellipse(_ellipse_box(fig, 0, hv, hu, hv), fill=sc.skin)
  if y['longHair'] or not sc.male or u.chance(0.85):  # Some men are bald.
    # The hairline stays above the eyes so glasses never merge with the hair.
    draw.chord(_ellipse_box(fig, 0, 0.45 * hv, hu + 0.004, 0.45 * hv + 0.008), 180, 360, sc.hair)
  eye_v = hv + u(-0.003, 0.005)
  for side in (-1, 1):
    draw.point(fig.p(side * hu * 0.4, eye_v), fill=_DARK)
  mx, my = fig.p(0, hv + 0.048)
  draw.line((mx - 0.012 * fh, my, mx + 0.012 * fh, my), fill=_jitter(sc.skin, -60))
  if sc.male:
    beard = None
    if u.chance(0.5):
      beard = fig.poly(
        [
          (-hu * 0.95, hv + 0.03),
          (hu * 0.95, hv + 0.03),
          (hu * 0.5, hv + 0.075),
          (-hu * 0.5, hv + 0.075),
        ]
      )
      draw.polygon(beard, fill=sc.hair)
      draw.line((mx - 0.01 * fh, my, mx + 0.01 * fh, my), fill=sc.skin)
    # The Male cue is the jaw-to-shoulder region: the beard (if any) and broad shoulders.
    s = sc.shoulder
    box = _bbox(fig.poly([(-s, 0.185), (s, 0.185), (0, hv + 0.04)]))
    sc.boxes['Male'] = _union(box, _bbox(beard)) if beard else box
  if y['sunglass']:
    # A dark band across the eyes (some lenses mirrored), with temples to the ears.
    half_h = u(0.022, 0.026) * cs * fh
    x0, yc = fig.p(-hu * 0.95, eye_v)
    x1, _ = fig.p(hu * 0.95, eye_v)
    box = (x0, yc - half_h, x1, yc + half_h)
    lens = _jitter(_DARK, u(0, 25)) if u.chance(0.85) else _hsv(u(0.45, 0.7), 0.5, u(0.6, 0.9))
    draw.rounded_rectangle(box, radius=half_h * 0.5, fill=lens)
    sc.boxes['sunglass'] = box
  if y['faceMask']:
    # A light-blue, white or pale-green surgical mask from the nose to the chin, with
    # ear straps. Never dark: a dark mask has the place, shape and colour of the beard
    # that half of the men wear, so its label could not be read from the pixels.
    v0 = hv + 0.02
    v1 = v0 + u(0.06, 0.07) * cs
    mask = fig.poly([(-hu * 0.97, v0), (hu * 0.97, v0), (hu * 0.6, v1), (-hu * 0.6, v1)])
    palette = ((150, 200, 240), (240, 240, 245), (170, 225, 190))
    k = u.weighted((0.55, 0.3, 0.15))
    # Never skin-coloured: a white mask on pale skin would be invisible.
    while sum(abs(a - b) for a, b in zip(palette[k], sc.skin, strict=True)) < 120:
      k = (k + 1) % len(palette)
    colour = _jitter(palette[k], u(-12, 12))
    draw.polygon(mask, fill=colour)
    straps = [[fig.p(side * hu * 0.95, v0), fig.p(side * hu, hv - 0.01)] for side in (-1, 1)]
    for strap in straps:
      draw.line(strap, fill=colour)
    sc.boxes['faceMask'] = _union(_bbox(mask), *(_bbox(strap) for strap in straps))
  if y['Hat']:
    # Taller than hair and of a colour that stands out on the hair: shape and colour
    # cues (a hat of the hair's colour would read as hair).
    colour = _contrast(sc.hair, u)
    kind = u.index(3)
    if kind == 0:  # Cap: a dome above the head and a peak to one side.
      crown = _ellipse_box(fig, 0, 0.04, hu + 0.01, 0.065)
      draw.chord(crown, 180, 360, fill=colour)
      side = 1 if u.chance(0.5) else -1
      peak = fig.poly([(0, 0.03), (side * (hu + 0.05), 0.038), (0, 0.048)])
      draw.polygon(peak, fill=_jitter(colour, -30))
      box = _union((crown[0], crown[1], crown[2], (crown[1] + crown[3]) / 2), _bbox(peak))
    elif kind == 1:  # Beanie, down to the brows.
      beanie = _ellipse_box(fig, 0, 0.045, hu + 0.008, 0.07)
      draw.chord(beanie, 180, 360, fill=colour)
      band = fig.poly([(-hu - 0.008, 0.03), (hu + 0.008, 0.03), (hu + 0.008, 0.05)])
      band += fig.poly([(-hu - 0.008, 0.05)])
      draw.polygon(band, fill=_jitter(colour, -30))
      box = _union((beanie[0], beanie[1], beanie[2], (beanie[1] + beanie[3]) / 2), _bbox(band))
    else:  # Brimmed hat.
      crown = fig.poly([(-hu * 0.85, -0.045), (hu * 0.85, -0.045), (hu, 0.025), (-hu, 0.025)])
      brim = _ellipse_box(fig, 0, 0.027, hu + u(0.035, 0.055), 0.012)
      draw.polygon(crown, fill=colour)
      draw.ellipse(brim, fill=_jitter(colour, -30))
      box = _union(_bbox(crown), brim)
    sc.boxes['Hat'] = box


def draw_example(rng: np.random.Generator) -> Drawing:
  """Draws one person crop with its attribute cues.

  Args:
    rng: the example's generator (consumed).

  Returns:
    A `Drawing` (image, labels before hiding, cue boxes, distractor boxes).
  """
  labels = sample_labels(rng)
  y = {a: bool(labels[i]) for i, a in enumerate(ATTRIBUTES)}
  u = _Uniforms(rng)
  male = y['Male']
  no_lower_mode = None
  if not (y['shorts'] or y['skirt'] or y['longPants']):
    no_lower_mode = NO_LOWER_MODES[u.weighted([w for _, w in NO_LOWER_MODES])][0]
    if male and no_lower_mode == 'coat':
      no_lower_mode = 'half_body'  # A knee-long coat over bare legs reads as a dress.

  # Body shape: broad shoulders are one of the Male cues.
  shoulder = u(0.12, 0.145) if male else u(0.095, 0.115)
  waist = u(0.08, 0.095) if male else u(0.07, 0.09)
  width, height, fig = _crop_geometry(u, no_lower_mode == 'half_body', shoulder)

  img = _background(u, width, height)
  draw = ImageDraw.Draw(img)
  _clutter(draw, u, width, height)
  if no_lower_mode != 'half_body':  # Ground under the feet.
    ground_y = fig.p(0, 0.97)[1]
    draw.rectangle((0, ground_y, width, height), fill=_hsv(u(), u(0, 0.3), u(0.2, 0.6)))

  top_colour = _cloth(u)
  if y['formal'] and u.chance(0.7):
    top_colour = _hsv(u(), u(0, 0.4), u(0.1, 0.35))  # A dark suit.
  scene = _Scene(
    u=u,
    fig=fig,
    draw=_Recorder(draw),
    y=y,
    male=male,
    shoulder=shoulder,
    waist=waist,
    head_hu=u(0.052, 0.06),
    head_hv=u(0.074, 0.08),
    skin=_jitter(u.pick(_SKIN_TONES), u(-12, 12)),
    hair=u.pick(_HAIR_COLOURS),
    top_colour=top_colour,
    no_lower_mode=no_lower_mode,
  )
  _paint_lower(scene)
  _paint_torso(scene)
  _paint_arms(scene)
  _paint_head(scene)

  # Clutter that looks like cues around the figure, then occluders over it.
  distractors = []
  if u.chance(DISTRACTOR_RATE):
    # Cue boxes too: a look-alike inside a cue box would blur the pointing game.
    avoid = scene.draw.boxes + list(scene.boxes.values())
    distractors = _distractors(draw, u, fig.h, width, height, avoid)
  if no_lower_mode == 'legs_hidden':  # A bench or a car bonnet in front of the legs.
    oy = fig.p(0, u(0.52, 0.6))[1]
    draw.rectangle((0, oy, width, height), fill=_hsv(u(), u(0.0, 0.7), u(0.2, 0.8)))
    draw.line((0, oy, width, oy), fill=_hsv(u(), u(0.0, 0.5), u(0.1, 0.9)), width=2)
  if u.chance(OCCLUDER_RATE):
    ow, oh = u(0.2, 0.45) * width, u(0.15, 0.4) * height
    ox = 0 if u.chance(0.5) else width - ow
    oy = u(0.1, 0.9) * (height - oh)
    draw.rectangle((ox, oy, ox + ow, oy + oh), fill=_hsv(u(), u(0.0, 0.7), u(0.15, 0.9)))

  cue_boxes = np.zeros((NUM_CLASSES, 4), np.float32)
  for name, box in scene.boxes.items():
    cue_boxes[_IDX[name]] = _normalise(box, width, height)
  distractor_boxes = np.array([_normalise(b, width, height) for b in distractors], np.float32)
  return Drawing(np.asarray(img), labels, cue_boxes, distractor_boxes.reshape(-1, 4))


def cue_size_audit(
  num_examples: int = 1500, size: int = 112, split: str = 'train', seed: int = 0
) -> dict[str, dict[str, float]]:
  """How large each attribute's cue is once the crop is resized to size x size.

  The numbers behind the design rule of the module docstring (print them with
  `python -c "from jaxattr.data import painter; print(painter.cue_size_audit())"`).

  Args:
    num_examples: examples drawn (the first of `split`).
    size: the model's input side (the demo's 112).
    split: which split's examples.
    seed: dataset seed.

  Returns:
    Per attribute: `positives`, the median and 10th percentile of the cue box's
    height in pixels (`height_px`, `height_px_p10`), its median width in pixels
    (`width_px`, after the horizontal stretch to a square), and the median and 90th
    percentile of its share of the crop's area (`area`, `area_p90`, fractions).
  """
  boxes: dict[str, list[np.ndarray]] = {a: [] for a in ATTRIBUTES}
  for index in range(num_examples):
    drawing = draw_example(example_rngs(split, index, seed)[0])
    for c, name in enumerate(ATTRIBUTES):
      if drawing.labels[c] == 1:
        boxes[name].append(drawing.cue_boxes[c])
  out = {}
  for name, rows in boxes.items():
    b = np.array(rows, np.float64).reshape(-1, 4)
    height, width = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    area = height * width
    out[name] = {
      'positives': len(b),
      'height_px': float(np.median(height) * size) if len(b) else float('nan'),
      'height_px_p10': float(np.percentile(height, 10) * size) if len(b) else float('nan'),
      'width_px': float(np.median(width) * size) if len(b) else float('nan'),
      'area': float(np.median(area)) if len(b) else float('nan'),
      'area_p90': float(np.percentile(area, 90)) if len(b) else float('nan'),
    }
  return out


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  """JPEG bytes of a uint8 [H, W, 3] image."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def example_rngs(
  split: str, index: int, seed: int = 0
) -> tuple[np.random.Generator, np.random.Generator]:
  """The two independent generators of one example: (drawing, hiding labels).

  `draw_example(example_rngs(split, index, seed)[0])` redraws a stored example,
  e.g. to get its distractor boxes.

  Args:
    split: 'train', 'validation' or 'test'.
    index: position in the split.
    seed: dataset seed.

  Returns:
    (rng for `draw_example`, rng for `hide_labels`).
  """
  root = np.random.default_rng([seed, SPLIT_IDS[split], index])
  draw_rng, hide_rng = root.spawn(2)
  return draw_rng, hide_rng


def generate(split: str, index: int, seed: int = 0, encode: bool = True) -> dict[str, Any]:
  """The canonical example `index` of `split`, a pure function of its arguments.

  Args:
    split: 'train', 'validation' or 'test'.
    index: position in the split.
    seed: dataset seed (the builder config's).
    encode: return JPEG bytes (True) or the uint8 image (False).

  Returns:
    Dict with `image`, `labels` (int8 [C], -1 = unknown), `index`, `image_id`,
    `cue_boxes` (float32 [C, 4]).
  """
  draw_rng, hide_rng = example_rngs(split, index, seed)
  drawing = draw_example(draw_rng)
  return {
    'image': encode_jpeg(drawing.image) if encode else drawing.image,
    'labels': hide_labels(drawing.labels, hide_rng),
    'index': index,
    'image_id': f'{split}_{index:07d}',
    'cue_boxes': drawing.cue_boxes,
  }


def generate_range(split: str, num_examples: int, seed: int) -> Iterator[dict[str, Any]]:
  """Examples 0..num_examples-1 of a split, in order.

  One process draws ~2,000 images/s, so `small` builds in seconds; a process
  pool would add start-up time and a `__main__` guard requirement for callers.

  Args:
    split: split name.
    num_examples: how many examples.
    seed: dataset seed.

  Yields:
    Canonical example dicts, index 0 first.
  """
  for index in range(num_examples):
    yield generate(split, index, seed)


# --- Cues: the controlled localisation task ------------------------------------------
# `synthetic_attributes/cues` (experiments/localisation.py): square images of
# textured clutter with a few small coloured shapes. Each attribute is one (shape,
# colour) conjunction and is present exactly when that shape is drawn in that
# colour, so the cue alone decides the label and its box is where to look. The
# other shapes on the image are distractors: every one shares its colour with one
# attribute and its shape with another (the colour alone or the shape alone never
# decides). Positive ratios are imbalanced, from common to rare.
CUE_SHAPES = ('disc', 'square', 'triangle', 'diamond')
CUE_COLOURS = {
  'red': (220, 40, 40),
  'blue': (40, 80, 230),
  'green': (40, 190, 60),
  'yellow': (235, 215, 40),
}
# (attribute name = colour_shape, positive ratio).
CUE_ATTRIBUTES = (
  ('red_disc', 0.4),
  ('blue_square', 0.25),
  ('green_triangle', 0.15),
  ('yellow_diamond', 0.1),
  ('red_square', 0.06),
  ('blue_disc', 0.04),
)
CUE_NAMES = tuple(name for name, _ in CUE_ATTRIBUTES)
CUE_SIZE = (0.075, 0.1)  # Side of a cue, as a fraction of the image side (0.6-1 % of its area).
CUE_DISTRACTORS = (2, 5)  # Distractor shapes per image (inclusive range).
CUE_COLOUR_JITTER = 25  # Grey levels of per-channel jitter on every shape's colour.


def _draw_cue_shape(draw, kind: str, box, colour) -> None:
  x0, y0, x1, y1 = box
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  if kind == 'disc':
    draw.ellipse(box, fill=colour)
  elif kind == 'square':
    draw.rectangle(box, fill=colour)
  elif kind == 'triangle':
    draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
  else:
    draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)


def draw_cues_example(
  rng: np.random.Generator,
  size: int = 112,
  ratios: Sequence[float] | None = None,
  cue_size: tuple[float, float] = CUE_SIZE,
  distractors: tuple[int, int] = CUE_DISTRACTORS,
) -> Drawing:
  """Draws one image of the controlled localisation task (see `CUE_ATTRIBUTES`).

  Args:
    rng: the example's generator (consumed).
    size: side of the square image in pixels.
    ratios: positive ratio per attribute; default those of `CUE_ATTRIBUTES`.
    cue_size: range of a shape's side, as a fraction of `size`.
    distractors: inclusive range of the number of distractor shapes.

  Returns:
    A `Drawing` over the attributes of `CUE_NAMES` (image, labels, cue boxes,
    distractor boxes).
  """
  u = _Uniforms(rng)
  num = len(CUE_ATTRIBUTES)
  if ratios is None:
    ratios = [p for _, p in CUE_ATTRIBUTES]
  labels = np.array([u.chance(p) for p in ratios], np.int8)
  names = set(CUE_NAMES)
  # Distractors: any (colour, shape) that is not an attribute; each of them shares its
  # colour with one attribute and its shape with another.
  others = [f'{c}_{s}' for c in CUE_COLOURS for s in CUE_SHAPES if f'{c}_{s}' not in names]
  shapes = [(CUE_NAMES[i], i) for i in range(num) if labels[i]]
  lo, hi = distractors
  shapes += [(u.pick(others), -1) for _ in range(lo + u.index(hi - lo + 1))]
  order = [shapes[i] for i in rng.permutation(len(shapes))]

  img = _background(u, size, size)
  draw = ImageDraw.Draw(img)
  _clutter(draw, u, size, size)
  cue_boxes = np.zeros((num, 4), np.float32)
  distractor_boxes, placed = [], []
  for name, attribute in order:
    side = u(*cue_size) * size
    for _ in range(50):  # Rejection sampling: shapes never touch each other.
      x0, y0 = u(1, size - side - 1), u(1, size - side - 1)
      box = (x0, y0, x0 + side, y0 + side)
      grown = (x0 - 2, y0 - 2, x0 + side + 2, y0 + side + 2)
      if not any(_overlaps(grown, b) for b in placed):
        break
    else:
      if attribute < 0:
        continue  # No room for this distractor; a cue is drawn anyway (it decides the label).
    colour_name, kind = name.split('_')
    colour = tuple(
      int(min(255, max(0, c + u(-CUE_COLOUR_JITTER, CUE_COLOUR_JITTER))))
      for c in CUE_COLOURS[colour_name]
    )
    _draw_cue_shape(draw, kind, box, colour)
    placed.append(box)
    if attribute >= 0:
      cue_boxes[attribute] = _normalise(box, size, size)
    else:
      distractor_boxes.append(_normalise(box, size, size))
  return Drawing(
    np.asarray(img), labels, cue_boxes, np.array(distractor_boxes, np.float32).reshape(-1, 4)
  )


def generate_cues(
  split: str, index: int, seed: int = 0, size: int = 112, encode: bool = True, **kwargs: Any
) -> dict[str, Any]:
  """Example `index` of `split` of the cues task, a pure function of its arguments.

  Args:
    split: 'train', 'validation' or 'test'.
    index: position in the split.
    seed: dataset seed.
    size: image side in pixels.
    encode: return JPEG bytes (True) or the uint8 image (False).
    **kwargs: `ratios`, `cue_size`, `distractors` of `draw_cues_example`.

  Returns:
    Dict with `image`, `labels` (int8 [C], no unknown labels), `index`, `image_id`,
    `cue_boxes` (float32 [C, 4]).
  """
  draw_rng, _ = example_rngs(split, index, seed)
  drawing = draw_cues_example(draw_rng, size, **kwargs)
  return {
    'image': encode_jpeg(drawing.image) if encode else drawing.image,
    'labels': drawing.labels,
    'index': index,
    'image_id': f'{split}_{index:07d}',
    'cue_boxes': drawing.cue_boxes,
  }
