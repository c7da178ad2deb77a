r"""How large each synthetic pedestrian cue is once the crop reaches the model.

The audit behind the design rule of the cues (`jaxattr.data.pedestrians`): per
attribute, the height and width in pixels of its cue box after the crop is resized
to a square, and the share of the crop's area it covers.

  python -m experiments.cue_size_audit
  python -m experiments.cue_size_audit --num_examples=5000 --size=224
"""

import numpy as np
from absl import app, flags

from jaxattr.data import pedestrians
from jaxattr.data.canvas import example_rngs

_NUM_EXAMPLES = flags.DEFINE_integer('num_examples', 1500, 'Examples drawn (the first of --split).')
_SIZE = flags.DEFINE_integer('size', 112, "The model's input side in pixels.")
_SPLIT = flags.DEFINE_string('split', 'train', "Which split's examples.")
_SEED = flags.DEFINE_integer('seed', 0, 'Dataset seed.')


def cue_size_audit(
  num_examples: int = 1500, size: int = 112, split: str = 'train', seed: int = 0
) -> dict[str, dict[str, float]]:
  """How large each attribute's cue is once the crop is resized to size x size.

  The numbers behind the design rule of `jaxattr.data.pedestrians`' docstring.

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
  boxes: dict[str, list[np.ndarray]] = {a: [] for a in pedestrians.ATTRIBUTES}
  for index in range(num_examples):
    drawing = pedestrians.draw_example(example_rngs(split, index, seed)[0])
    for c, name in enumerate(pedestrians.ATTRIBUTES):
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


def main(argv):
  del argv
  audit = cue_size_audit(_NUM_EXAMPLES.value, _SIZE.value, _SPLIT.value, _SEED.value)
  columns = ('positives', 'height_px', 'height_px_p10', 'width_px', 'area', 'area_p90')
  print(f'{"attribute":<12}' + ''.join(f'{c:>15}' for c in columns))
  for name, row in audit.items():
    cells = (f'{row[c]:>15d}' if c == 'positives' else f'{row[c]:>15.4g}' for c in columns)
    print(f'{name:<12}' + ''.join(cells))


if __name__ == '__main__':
  app.run(main)
