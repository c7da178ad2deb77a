"""PA-100K (26 attributes) — beyond the paper; PETA's recipe.

  python -m jaxattr.main --config=configs/pa100k.py --workdir=runs/pa100k \
      --config.data.manual_dir=/path/to/PA-100K
"""

from jaxattr import schema

# PETA's recipe, the base of this one (configs/peta.py, loaded by its path): its
# `on_another_dataset` holds what changes for a dataset beyond the paper.
peta = schema.load_recipe('peta')


def get_config(arg: str | None = None):
  return schema.apply_args(peta.on_another_dataset('pa100k'), arg)
