r"""The controlled localisation task of experiments/localisation.py (issue 15).

  python -m experiments.localisation --config=configs/localisation.py \
      --out=experiments/results/localisation.md

The demo's model and recipe (configs/demo.py: ResNet-18 at 1/8 width, 112x112,
both attention levels, all losses, Adam 3e-3 with a cosine schedule) on
`synthetic_attributes/cues`: square 112x112 images (no stretch) in which each of
six attributes is one small coloured shape (0.6-1 % of the image) at a random
place among distractors sharing its colour or its shape, positive ratios 40 % to
4 %. The cue alone decides the label, so a model that classifies well must find
it; the pointing game then says whether the attention masks, the weighted masks
or the primary network's CAMs point at it. 8 epochs of 3,000 images.
"""

from jaxattr import schema

demo = schema.load_recipe('demo')


def get_config(arg: str | None = None):
  config = demo.get_config(arg)
  config.data.builder_config = 'cues'
  config.train.num_epochs = 8
  config.eval.attention_grid = False
  return config
