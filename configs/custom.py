"""Your own attributes: a folder of images plus a CSV (see docs/custom_data.md).

  python -m jaxattr.main --config=configs/custom.py --workdir=runs/mine \
      --config.data.manual_dir=/path/to/my_data
"""

from jaxattr import schema

# PETA's recipe, the base of this one (configs/peta.py, loaded by its path): its
# `on_another_dataset` holds what changes for a dataset beyond the paper.
peta = schema.load_recipe('peta')


def get_config(arg: str | None = None):
  return schema.apply_args(peta.on_another_dataset('custom_attributes'), arg)
