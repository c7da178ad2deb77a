"""Every field of a jaxattr run at its default (`jaxattr.schema.FIELDS`), no recipe.

  python -m jaxattr.main --config=configs/default.py --workdir=runs/default

Its data is the synthetic set and its model the paper's ResNet-101 at full size;
configs/wider.py and configs/peta.py are the paper's recipes, and every recipe here
starts from these defaults and changes what its run needs. Arguments: a backbone
name (`configs/default.py:resnet50`).
"""

from jaxattr import schema


def get_config(arg: str | None = None):
  return schema.apply_args(schema.defaults(), arg)
