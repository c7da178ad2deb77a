"""The synthetic pedestrian dataset: drawn person crops, their labels and cue boxes.

Pure numpy and PIL (no TensorFlow): `jaxattr.data.synthetic` wraps it in a TFDS
builder, and benchmarks or tests can draw examples without TFDS.

No real attribute dataset can ship with jaxattr, so the demo and the tests use
drawn person crops that keep what makes the task hard: 14 labels per image with the
class imbalance of WIDER-Attribute, small cues whose position varies with the
figure's size, position and lean, background clutter with look-alike cues placed
outside the figure, occluders, and ~10% of labels hidden as unknown. No spatial
annotation reaches the model, but since we draw the cues we know where each one is
(`cue_boxes`), so attention maps can be scored (pointing game). The canvas, the
per-example generators and the stored example are `jaxattr.data.canvas`'s.

Difficulty knobs live together below (`CUE_SCALE`, `DISTRACTOR_RATE`,
`OCCLUDER_RATE`, ...) so they can be tuned without touching the drawing code.

Design rule of the cues. A crop (96-192 px tall, width 0.35-0.6 of its height)
reaches the model resized to a square, 112x112 in the demo: about 0.6-1.2x
vertically and 1.7-2.9x horizontally, so the vertical size of a cue is the one
that can get too small.
(1) Every cue is at least ~4 px tall and ~10 px wide at 112 px for a full-body
    figure (figure height ~95 px): sunglasses 0.044-0.052 of the figure height
    (4-5 px), logos 0.065-0.085 (6-8 px), face masks 0.06-0.07 (6-7 px), stripes
    with a period of 0.06-0.08 (5-8 px, each stripe half of it), hats 0.06-0.1.
(2) The rare local cues stay small against the crop, so that global average
    pooling dilutes them (the regime the paper's attention is for): the median box
    of sunglasses, logos and face masks covers under 2 % of the crop's area
    (0.8 %, 1.0 % and 1.9 %, `experiments/cue_size_audit.py`); upper-body crops,
    whose heads are larger, reach 2.5-6 % at the 90th percentile.
(3) Every cue is decidable from the pixels: no cue shares its place, shape and
    colour with another attribute's (no dark face masks, which look like beards;
    hats contrast with the hair).
"""

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import ImageDraw

from jaxattr.data.canvas import (
  Drawing,
  Uniforms,
  background,
  clutter,
  example_rngs,
  hsv,
  normalise,
  overlaps,
  to_example,
)
from jaxattr.data.wider_names import ATTRIBUTE_NAMES as ATTRIBUTES

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

# --- Difficulty knobs ---------------------------------------------------------
CUE_SCALE = 1.0  # Multiplies the size of the small cues (glasses, mask, logo, tie, stripes).
DISTRACTOR_RATE = 0.3  # Fraction of images with look-alike cues outside the figure.
MAX_DISTRACTORS = 3  # 1..MAX_DISTRACTORS of them when present.
OCCLUDER_RATE = 0.12  # Fraction of images with a box covering part of the figure.
UNKNOWN_RATE = 0.1  # Fraction of label entries hidden as unknown (-1), as in WIDER.
# Crop geometry, like real person crops.
CROP_HEIGHT = (96, 192)
CROP_ASPECT = (0.35, 0.6)  # width / height.
# When no lower-body garment is labelled, how the legs are explained: an
# upper-body crop, a long coat/dress, or legs hidden behind an object.
NO_LOWER_MODES = (('half_body', 0.6), ('coat', 0.2), ('legs_hidden', 0.2))

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
def _cloth(u: Uniforms, avoid_blue: bool = False) -> tuple[int, int, int]:
  """A garment colour: saturated, pastel, or grey-ish."""
  h = u()
  if avoid_blue and 0.53 < h < 0.7:
    h += 0.2
  kind = u()
  if kind < 0.3:
    return hsv(h, u(0.0, 0.12), u(0.12, 0.9))  # black / grey / white
  if kind < 0.65:
    return hsv(h, u(0.45, 0.9), u(0.35, 0.9))
  return hsv(h, u(0.15, 0.45), u(0.5, 0.95))


def _contrast(colour: tuple[int, int, int], u: Uniforms) -> tuple[int, int, int]:
  """A colour that stands out on `colour` (for emblems and stripes)."""
  lum = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
  v = u(0.05, 0.3) if lum > 120 else u(0.75, 1.0)
  return hsv(u(), u(0.0, 0.9), v)


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


def _ellipse_box(fig: _Figure, u: float, v: float, hu: float, hv: float):
  x, y = fig.p(u, v)
  return (x - hu * fig.h, y - hv * fig.h, x + hu * fig.h, y + hv * fig.h)


# --- Drawing ------------------------------------------------------------------
def _draw_emblem(draw, u: Uniforms, cx: float, cy: float, size: float, colour) -> tuple:
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


def _distractors(draw, u: Uniforms, fh: float, width: int, height: int, avoid) -> list[tuple]:
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
      if not any(overlaps(grown, b) for b in avoid + boxes):
        break
    else:
      continue
    if kind == 0:
      _draw_emblem(draw, u, x0 + w / 2, y0 + h / 2, w, hsv(u(), u(0.3, 1.0), u(0.3, 1.0)))
    elif kind == 1:
      period = u(0.035, 0.055) * fh
      _draw_stripes(draw, x0, y0, x0 + w, y0 + h, period, hsv(u(), u(0, 1), u(0.1, 1)))
    elif kind == 2:
      draw.rectangle(box, fill=_jitter(_DARK, u(0, 30)))
    else:
      draw.rounded_rectangle(box, radius=h / 3, fill=hsv(u(), u(0.0, 0.3), u(0.75, 1.0)))
    boxes.append(box)
  return boxes


def _crop_geometry(u: Uniforms, half_body: bool, shoulder: float):
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

  u: Uniforms
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
      colour = hsv(u(0.58, 0.63), u(0.4, 0.65), u(0.45, 0.75))
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
    draw.polygon(collar, fill=hsv(u(), u(0, 0.1), u(0.85, 1.0)))
    tw = u(0.012, 0.018) * cs
    end = u(0.32, 0.38)
    tie = fig.poly(
      [(-tw * 0.6, 0.19), (tw * 0.6, 0.19), (tw, end - 0.02), (0, end), (-tw, end - 0.02)]
    )
    draw.polygon(tie, fill=hsv(u(), u(0.5, 1.0), u(0.2, 0.8)))
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
    lens = _jitter(_DARK, u(0, 25)) if u.chance(0.85) else hsv(u(0.45, 0.7), 0.5, u(0.6, 0.9))
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
  u = Uniforms(rng)
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

  img = background(u, width, height)
  draw = ImageDraw.Draw(img)
  clutter(draw, u, width, height)
  if no_lower_mode != 'half_body':  # Ground under the feet.
    ground_y = fig.p(0, 0.97)[1]
    draw.rectangle((0, ground_y, width, height), fill=hsv(u(), u(0, 0.3), u(0.2, 0.6)))

  top_colour = _cloth(u)
  if y['formal'] and u.chance(0.7):
    top_colour = hsv(u(), u(0, 0.4), u(0.1, 0.35))  # A dark suit.
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
    draw.rectangle((0, oy, width, height), fill=hsv(u(), u(0.0, 0.7), u(0.2, 0.8)))
    draw.line((0, oy, width, oy), fill=hsv(u(), u(0.0, 0.5), u(0.1, 0.9)), width=2)
  if u.chance(OCCLUDER_RATE):
    ow, oh = u(0.2, 0.45) * width, u(0.15, 0.4) * height
    ox = 0 if u.chance(0.5) else width - ow
    oy = u(0.1, 0.9) * (height - oh)
    draw.rectangle((ox, oy, ox + ow, oy + oh), fill=hsv(u(), u(0.0, 0.7), u(0.15, 0.9)))

  cue_boxes = np.zeros((NUM_CLASSES, 4), np.float32)
  for name, box in scene.boxes.items():
    cue_boxes[_IDX[name]] = normalise(box, width, height)
  distractor_boxes = np.array([normalise(b, width, height) for b in distractors], np.float32)
  return Drawing(np.asarray(img), labels, cue_boxes, distractor_boxes.reshape(-1, 4))


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
  return to_example(drawing, hide_labels(drawing.labels, hide_rng), split, index, encode)


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
