"""PA-100K (26 attributes) — beyond the paper; PETA's recipe.

  python -m jaxattr.main --config=configs/pa100k.py --workdir=runs/pa100k \
      --config.data.manual_dir=/path/to/PA-100K
"""

from jaxattr import schema

# PETA's recipe, the base of this one (configs/peta.py, loaded by its path).
peta = schema.load_recipe('peta')


def get_config(arg: str | None = None):
  config = peta.get_config()
  config.data.name = 'pa100k'
  config.data.builder_config = ''
  config.train.num_epochs = 30
  return schema.apply_args(config, arg)
