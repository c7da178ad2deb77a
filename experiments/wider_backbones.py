"""Table 2 (left) of the paper: the primary network alone, 12 backbones, WIDER-Attribute.

  python -m experiments.launch --sweep=experiments/wider_backbones.py --workdir=runs/backbones \
      --config.data.manual_dir=/path/to/wider_attribute \
      --config.model.pretrained=pretrained/{backbone}_v1
  python -m experiments.launch --sweep=experiments/wider_backbones.py:synthetic \
      --workdir=runs/backbones                                   # CPU scale, 1/8 width
  python -m experiments.summarize --sweep=experiments/wider_backbones.py --workdir=runs/backbones

"Primary network only" is the row 1 of Table 2 (right) with another backbone: no
attention, plain BCE (ResNet-101 gives 83.7 in both halves of the table). The
paper fine-tunes ImageNet weights; `{backbone}` in a launcher argument is replaced
by each run's backbone, so one command points every run at its converted weights
(docs/pretrained.md; `--config.model.pretrained=torchvision:{backbone}` downloads
them).

The paper's five backbones are followed by the modern ones of the backbone registry
(ViT-B/16, Swin-T/S/B, ConvNeXt-T/S/B), which the paper predates: rows without a
paper number, trained with their family's recipe (`jaxattr/recipes.py`: AdamW,
warm-up, the 3x step schedule) as `configs/wider.py:vit_b_16` does; the synthetic
variant applies that recipe too. The rows are the ImageNet backbones (torchvision's);
the CLIP towers, pretrained on image-text pairs, are not Table 2's question and run by
their own recipe (`configs/wider.py:clip_vit_b_16`).
"""

import ml_collections

from experiments.sweeps import synthetic_base
from jaxattr import recipes, schema
from jaxattr.models import registry

wider = schema.load_recipe('wider')

PRIMARY_ONLY = {'model.attention.levels': (), 'loss.primary': 'bce', 'loss.attention': 'bce'}
# (label, overrides, the paper's test mAP on WIDER-Attribute: Table 2, left).
PAPER_ROWS = tuple(
  (name, {'model.backbone': name, **PRIMARY_ONLY}, paper)
  for name, paper in (
    ('resnet50', 82.3),
    ('densenet121', 82.9),
    ('resnet101', 83.7),
    ('resnet152', 84.2),
    ('densenet201', 84.5),
  )
)
MODERN_ROWS = tuple(
  (name, {'model.backbone': name, **PRIMARY_ONLY, **recipes.FAMILIES[entry.family]}, None)
  for name, entry in registry.BACKBONES.items()
  if entry.family in recipes.FAMILIES and entry.publisher == 'torchvision'
)
ROWS = PAPER_ROWS + MODERN_ROWS
SEEDS = (0, 1, 2)
PAPER_METRIC = 'map_voc'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The sweep's base config.

  Args:
    arg: 'synthetic' for the CPU-scale synthetic base (configs/demo.py recipe at
      1/8 width, as the Table 2 sweep); otherwise the tokens of configs/wider.py.

  Returns:
    The base config; `sweep` sets the backbone and the primary-only switches.
  """
  if arg == 'synthetic':
    return synthetic_base()
  return wider.get_config(arg)


def sweep(add) -> None:
  """Calls `add(**overrides)` for each backbone times `SEEDS` (seed-major order).

  Args:
    add: callback taking dotted config keys (and `seed`) as keyword arguments.
  """
  for seed in SEEDS:
    for _, overrides, _ in ROWS:
      add(**overrides, seed=seed)
