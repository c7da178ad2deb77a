"""The cues dataset: the controlled localisation task of experiments/localisation.py.

`synthetic_attributes/cues` holds square images of textured clutter with a few
small coloured shapes. Each attribute is one (shape, colour) conjunction and is
present exactly when that shape is drawn in that colour, so the cue alone decides
the label and its box is where to look. The other shapes on the image are
distractors: every one shares its colour with one attribute and its shape with
another (the colour alone or the shape alone never decides). Positive ratios are
imbalanced, from common to rare.

Pure numpy and PIL (no TensorFlow), on the canvas of `jaxattr.data.canvas`; each
example is a pure function of (seed, split, index).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import ImageDraw

from jaxattr.data.canvas import (
  Drawing,
  Uniforms,
  background,
  clutter,
  example_rngs,
  normalise,
  overlaps,
  to_example,
)

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
  u = Uniforms(rng)
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

  img = background(u, size, size)
  draw = ImageDraw.Draw(img)
  clutter(draw, u, size, size)
  cue_boxes = np.zeros((num, 4), np.float32)
  distractor_boxes, placed = [], []
  for name, attribute in order:
    side = u(*cue_size) * size
    for _ in range(50):  # Rejection sampling: shapes never touch each other.
      x0, y0 = u(1, size - side - 1), u(1, size - side - 1)
      box = (x0, y0, x0 + side, y0 + side)
      grown = (x0 - 2, y0 - 2, x0 + side + 2, y0 + side + 2)
      if not any(overlaps(grown, b) for b in placed):
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
      cue_boxes[attribute] = normalise(box, size, size)
    else:
      distractor_boxes.append(normalise(box, size, size))
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
  return to_example(drawing, drawing.labels, split, index, encode)
