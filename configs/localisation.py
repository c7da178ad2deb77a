r"""The controlled localisation task: does the attention look at the cue?

  python -m experiments.localisation --config=configs/localisation.py \
      --workdir=runs/localisation --out=experiments/results/localisation.md
  python -m jaxattr.main --config=configs/localisation.py:primary --workdir=runs/loc_primary

The demo's model and recipe (configs/demo.py: ResNet-18 at 1/8 width, 112x112,
both attention levels, all losses, Adam 3e-3 with a cosine schedule) on
`synthetic_attributes/cues`: square 112x112 images (no stretch) in which each of
six attributes is one small coloured shape (0.6-1 % of the image) at a random
place among distractors sharing its colour or its shape, positive ratios 40 % to
4 %. The cue alone decides the label, so a model that classifies well must find
it; the `pointing` evaluator then says whether the attention masks, the weighted
masks or the primary network's CAMs point at it. 8 epochs of 3,000 images.

Arguments (comma-separated, after the backbones of configs/default.py):
  primary  the same config with `model.attention.levels=()` (the primary network
           alone, same data, seed and budget);
  trace    also the pointing game and mask entropy on the first 512 validation
           examples after every epoch (`trace/...` in metrics.jsonl).
"""

from jaxattr import schema

demo = schema.load_recipe('demo')

ARGS = ('primary', 'trace')


def get_config(arg: str | None = None):
  tokens = [t for t in (arg or '').split(',') if t]
  config = demo.get_config(','.join(t for t in tokens if t not in ARGS))
  config.data.builder_config = 'cues'
  config.train.num_epochs = 8
  config.eval.attention_grid = False
  if 'primary' in tokens:
    config.model.attention.levels = ()
  config.evals.val = dict(
    type='attributes',
    split='validation',
    every_epochs=1,
    at_end=True,
    select=True,
    results_key='validation',
  )
  config.evals.test = dict(type='attributes', split='test', at_end=True)
  config.evals.pointing = dict(type='pointing', split='test', at_end=True)
  if 'trace' in tokens:
    config.evals.trace = dict(type='pointing', split='validation', every_epochs=1, limit=512)
  return config
