r"""Square vs 2:1 vs aspect-preserving input, on the synthetic pedestrians (tall crops).

  python -m experiments.launch --sweep=experiments/aspect_ratio.py --workdir=runs/aspect
  python -m experiments.summarize --sweep=experiments/aspect_ratio.py --workdir=runs/aspect \
      --out=experiments/results/aspect_ratio.md

The paper resizes every person crop to a square and names it as its limitation. The
synthetic crops are 96-192 px tall and 0.35-0.6 of their height wide (aspect 1.7:1
to 2.9:1, `jaxattr/data/pedestrians.py`), so the square stretches them 1.7-2.9x
horizontally. Three ways to feed them, at (nearly) the same pixel count:

  square     112 x 112 (12,544 px): the demo, crops stretched to 1:1.
  2:1        160 x 80 (12,800 px, +2 %): crops stretched to 2:1, much less distortion.
  2:1 kept   160 x 80, each crop first padded with the mean pixel to 2:1
             (`data.keep_aspect`): no distortion at all; the padding is wasted pixels.

Everything else is the demo's recipe and budget (configs/demo.py: ResNet-18 at 1/8
width, 10 epochs, Adam + cosine, both attention levels), fixed before the runs and
the same for every row. The paper augmentation's scale range is the demo's, relative
to the height: crops of [112, 128] of 128 at 112 px, of [160, 183] of 183 at 160 px
(183 = 128 x 160 / 112, rounded; the widths follow the 2:1 aspect). No attention
figure (`eval.attention_grid` off); `sweeps.SEEDS` seeds, seed-major. The headline
metric is test mAP (voc); the pointing game scores the masks against the drawn cues
(with padding, the cue boxes are moved into the padded frame).
"""

import ml_collections

from experiments import sweeps
from jaxattr import schema

PAPER_METRIC = 'map_voc'

_TALL = {
  'data.image_size': (160, 80),
  'data.resize_size': 183,
  'data.crop_min': 160,
  'data.crop_max': 183,
}

ROWS: tuple[sweeps.Row, ...] = (
  ('square 112x112', {'data.image_size': 112, 'data.keep_aspect': False}, None),
  ('2:1 160x80, stretched', {**_TALL, 'data.keep_aspect': False}, None),
  ('2:1 160x80, aspect kept (padded)', {**_TALL, 'data.keep_aspect': True}, None),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/demo.py (its 10 epochs), without the attention figure."""
  del arg
  config = schema.load_recipe('demo').get_config()
  config.eval.attention_grid = False
  return config


def sweep(add) -> None:
  """Calls `add(**overrides, seed=...)` for every row times `sweeps.SEEDS`."""
  sweeps.add_runs(add, ROWS)
