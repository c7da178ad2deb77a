"""The training recipe of each backbone family that the paper's recipes do not fit.

The paper's recipes (configs/wider.py's SGD, configs/peta.py's Adam) were tuned for
ResNets and DenseNets. Other families fine-tune their published ImageNet weights with
their own recipe, one row of `FAMILIES` each; every dataset's config gets it through
its config argument (`configs/peta.py:swin_t`: `schema.apply_args` calls `apply`),
after the dataset's own changes. The recipe's name lands in `config.recipe`, and
`schema.validate` refuses a backbone whose family's recipe is not the one in force
(a `--config.model.backbone` override is applied after `get_config`, so it skips
`apply`), unless `config.recipe` is `OWN`.

`TRANSFORMER`: ViT, Swin and ConvNeXt, all numbers from one source, Swin's COCO
fine-tuning of its ImageNet weights with new heads (Liu et al. 2021, Sec. 4.2: AdamW at
lr 1e-4, weight decay 0.05, batch 16, the 3x schedule of 36 epochs; mmdetection's
configs/swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py spells out the warm-up, the
steps and the decay exclusions), which ConvNeXt's COCO runs follow (Liu et al. 2022):
  AdamW, lr 1e-4, weight decay 0.05, batch 16   one lr for backbone and new heads
  no decay of norms, position embeddings,       `optim.decay_mask` (the source names
    relative-position tables                    norms and both embeddings; jaxattr
                                                also spares biases, layer scales and
                                                ViT's class token, as Swin's and
                                                timm's classifiers do)
  36 epochs, lr x 0.1 at epochs 27 and 33       the 3x schedule
  linear warm-up                                1,000 iterations from lr / 1000 there;
                                                1 epoch from 0 here
  the backbone trains from the first step       (no frozen stage: the warm-up reaches
                                                the backbone from lr 0)
  no gradient clipping, no layer-wise decay     as the source
The source also uses stochastic depth 0.2 (Swin-T); jaxattr's recipe does not set it.
Layer-wise lr decay (`optimizer.layer_decay`, ViT) stays an option, off.

`CLIP`: OpenAI's CLIP image towers (`clip_vit_b_16`, `clip_vit_l_14`), PromptPAR's
numbers (Wang et al., "Pedestrian Attribute Recognition via CLIP based Vision-Language
Fusion with Prompt Tuning"; code Event-AHU/OpenPAR, PromptPAR/config.py and train.py;
PETA mA 88.8 and PA-100K mA 87.5 with CLIP ViT-L/14):
  CLIP's own mean and std                        its preprocessing (224x224 there)
  SGD, momentum 0.9, weight decay 1e-4, batch 16
  lr 8e-3 heads, 4e-3 tower                      `backbone_lr_scale` 0.5
  5 warm-up epochs, then cosine; 100 epochs      the code's defaults
  the tower trains from the first step           (as `TRANSFORMER`: the warm-up reaches
                                                 it from lr 0)
PromptPAR and SequencePAR train only prompts and heads, the tower frozen throughout: the
config argument `frozen` does that (`train.freeze_backbone_epochs` = the whole run; the
0.5 scale then has nothing to act on), e.g. `configs/peta.py:clip_vit_l_14,frozen`.
Fine-tuning the whole tower at half the heads' rate is jaxattr's choice, not a number a
paper reports. The weights are the backbone's published ones, OpenAI's (`model.pretrained`
'published' = `openai:ViT-L-14` / `openai:ViT-B-16`). Memory
(experiments/results/memory_table.md, a CPU-compiled estimate): ViT-L/14 with the
paper's heads at batch 32 needs about 36 GB (a 40 GB GPU), about 7 GB with
`--config.model.remat=True`; ViT-B/16 about 11 GB.
"""

from typing import Any

import ml_collections

PAPER = 'paper'  # `config.recipe` of the paper's dataset recipes (configs/wider.py, peta.py).
OWN = 'own'  # `config.recipe` of a config whose numbers hold for any backbone.

TRANSFORMER = {
  'recipe': 'transformer',
  'optimizer.name': 'adamw',
  'optimizer.learning_rate': 1e-4,
  'optimizer.backbone_lr_scale': 1.0,
  'optimizer.weight_decay': 0.05,
  'optimizer.grad_clip_norm': 0.0,
  'optimizer.layer_decay': 0.0,
  'schedule.name': 'step',
  'schedule.step_epochs': (27, 33),
  'schedule.factor': 0.1,
  'schedule.warmup_epochs': 1.0,
  'train.batch_size': 16,
  'train.num_epochs': 36,
  'train.freeze_backbone_epochs': 0,
}

CLIP = {
  'recipe': 'clip',
  'data.mean': (0.48145466, 0.4578275, 0.40821073),  # OpenAI CLIP's `Normalize`.
  'data.std': (0.26862954, 0.26130258, 0.27577711),
  'optimizer.name': 'sgd',
  'optimizer.learning_rate': 8e-3,
  'optimizer.momentum': 0.9,
  'optimizer.weight_decay': 1e-4,
  'optimizer.backbone_lr_scale': 0.5,
  'optimizer.grad_clip_norm': 0.0,
  'optimizer.layer_decay': 0.0,
  'schedule.name': 'cosine',
  'schedule.warmup_epochs': 5.0,
  'train.batch_size': 16,
  'train.num_epochs': 100,
  'train.freeze_backbone_epochs': 0,
}

# Backbone family (`registry.Backbone.family`) -> its recipe's fields; a family not
# listed trains with the dataset's recipe (`PAPER`).
FAMILIES: dict[str, dict[str, Any]] = {
  'vit': TRANSFORMER,
  'swin': TRANSFORMER,
  'convnext': TRANSFORMER,
  'clip': CLIP,
}


def recipe_of(family: str) -> str:
  """The name of the recipe a backbone family trains with (`config.recipe`)."""
  return FAMILIES[family]['recipe'] if family in FAMILIES else PAPER


def apply(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets the recipe of the config's backbone family, unless `config.recipe` is `OWN`.

  Args:
    config: a dataset's config with its backbone chosen; changed in place.

  Returns:
    The same config.
  """
  from jaxattr.models import registry

  family = registry.get(config.model.backbone).family
  if config.recipe != OWN and family in FAMILIES:
    config.update_from_flattened_dict(FAMILIES[family])
  return config
