"""RAP v2 (54 attributes, partition 0) — beyond the paper; PETA's recipe.

  python -m jaxattr.main --config=configs/rap2.py --workdir=runs/rap2 \
      --config.data.manual_dir=/path/to/RAP
"""

from jaxattr import schema

# PETA's recipe, the base of this one (configs/peta.py, loaded by its path): its
# `on_another_dataset` holds what changes for a dataset beyond the paper.
peta = schema.load_recipe('peta')


def get_config(arg: str | None = None):
  return schema.apply_args(peta.on_another_dataset('rap2'), arg)
