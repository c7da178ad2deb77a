"""Your own attributes: a folder of images plus a CSV (see docs/custom_data.md).

  python -m jaxattr.main --config=configs/custom.py --workdir=runs/mine \
      --config.data.manual_dir=/path/to/my_data

PETA's recipe: ResNet-101 from its published ImageNet weights (`model.pretrained=
'published'`, downloaded once; offline, docs/pretrained.md says how to pass a converted
folder), the backbone frozen for the first 3 epochs. `--config.model.pretrained=scratch`
trains from random weights, with `--config.train.freeze_backbone_epochs=0` (a random
backbone is not frozen). A backbone name after ':' (`configs/custom.py:swin_t`) brings
its family's recipe (`jaxattr/recipes.py`).
"""

from jaxattr import schema

# PETA's recipe, the base of this one (configs/peta.py, loaded by its path): its
# `on_another_dataset` holds what changes for a dataset beyond the paper.
peta = schema.load_recipe('peta')


def get_config(arg: str | None = None):
  return schema.apply_args(peta.on_another_dataset('custom_attributes'), arg)
