"""The CLIP image towers on the attribute datasets: the recipe of the CLIP-based PAR methods.

  python -m jaxattr.main --config=configs/clip.py:peta --workdir=runs/peta_clip \
      --config.data.manual_dir=/path/to/PETA
  python -m jaxattr.main --config=configs/clip.py:peta,frozen --workdir=runs/peta_clip_frozen \
      --config.data.manual_dir=/path/to/PETA          # the tower frozen for the whole run
  python -m jaxattr.main --config=configs/clip.py:pa100k,clip_vit_b_16 --workdir=runs/pa_b16 \
      --config.data.manual_dir=/path/to/PA-100K

Arguments (after ':', comma-separated): the dataset (`peta` by default, `pa100k`, `rap2`,
`wider`: that file's config, its split and loss), `frozen`, and a CLIP backbone
(`clip_vit_l_14` by default, `clip_vit_b_16`). The weights are OpenAI's
(`model.pretrained=openai:ViT-L-14` / `openai:ViT-B-16`, fetched once and cached:
docs/pretrained.md). The paper's heads read the towers' token grids (14x14 for B/16,
16x16 for L/14 at 224x224) and the class token.

The numbers are PromptPAR's (Wang et al., "Pedestrian Attribute Recognition via CLIP
based Vision-Language Fusion with Prompt Tuning", code Event-AHU/OpenPAR, PromptPAR/
config.py and train.py; PETA mA 88.8 and PA-100K mA 87.5 with CLIP ViT-L/14): 224x224
inputs, CLIP's own normalisation, batch 16, SGD with momentum 0.9, weight decay 1e-4,
lr 8e-3 for the heads and 4e-3 on the CLIP side (`backbone_lr_scale` 0.5), 5 warm-up
epochs then cosine decay, 100 epochs (the code's default). PromptPAR trains only prompts
and heads, with the tower's weights frozen throughout, as SequencePAR does: that is
`FROZEN` (`train.freeze_backbone_epochs` = the whole run), where the 0.5 scale has
nothing to act on. Without `frozen` the tower is fine-tuned after the paper's
heads-only first stage (`train.freeze_backbone_epochs` 3); its half-rate SGD is
PromptPAR's CLIP-side rate applied to the whole tower, jaxattr's choice, not a number
a paper reports for full fine-tuning.

Memory (experiments/results/memory_table.md, a CPU-compiled estimate): ViT-L/14 with
the paper's heads at batch 32 needs about 36 GB (a 40 GB GPU), and about 7 GB with
`--config.model.remat=True` (a 24 GB GPU); ViT-B/16 at batch 32 about 11 GB.
"""

from jaxattr import schema

# OpenAI CLIP's image normalisation (its preprocessing `Normalize`).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EPOCHS = 100

# Flattened config fields of the recipe (the backbone's own weights set by `get_config`).
RECIPE = {
  'model.backbone': 'clip_vit_l_14',
  'model.pretrained': 'openai:ViT-L-14',
  'data.image_size': 224,
  'data.resize_size': 256,
  'data.crop_min': 160,
  'data.crop_max': 224,
  'data.mean': CLIP_MEAN,
  'data.std': CLIP_STD,
  'optimizer.name': 'sgd',
  'optimizer.learning_rate': 8e-3,
  'optimizer.momentum': 0.9,
  'optimizer.weight_decay': 1e-4,
  'optimizer.backbone_lr_scale': 0.5,
  'schedule.name': 'cosine',
  'schedule.warmup_epochs': 5.0,
  'train.batch_size': 16,
  'train.num_epochs': EPOCHS,
}
# The tower frozen for the whole run: only the heads train (PromptPAR, SequencePAR).
FROZEN = {**RECIPE, 'train.freeze_backbone_epochs': EPOCHS}

DATASETS = ('peta', 'pa100k', 'rap2', 'wider')
OPENAI_NAMES = {'clip_vit_b_16': 'openai:ViT-B-16', 'clip_vit_l_14': 'openai:ViT-L-14'}


def get_config(arg: str | None = None):
  """The dataset's config with the CLIP recipe.

  Args:
    arg: comma-separated tokens: a dataset of `DATASETS`, `frozen`, a CLIP backbone.

  Returns:
    The config.

  Raises:
    ValueError: for any other token.
  """
  tokens = [t for t in (arg or '').split(',') if t]
  dataset, backbone, recipe = 'peta', RECIPE['model.backbone'], RECIPE
  for token in tokens:
    if token in DATASETS:
      dataset = token
    elif token == 'frozen':
      recipe = FROZEN
    elif token in OPENAI_NAMES:
      backbone = token
    else:
      expected = (*DATASETS, 'frozen', *OPENAI_NAMES)
      raise ValueError(f'Unknown configs/clip.py argument {token!r}; expected one of {expected}.')
  config = schema.load_recipe(dataset).get_config()
  config.update_from_flattened_dict(
    {**recipe, 'model.backbone': backbone, 'model.pretrained': OPENAI_NAMES[backbone]}
  )
  return config
