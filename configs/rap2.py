"""RAP v2 (54 attributes, partition 0) — beyond the paper; PETA's recipe.

  python -m jaxattr.main --config=configs/rap2.py --workdir=runs/rap2 \
      --config.data.manual_dir=/path/to/RAP
"""

from jaxattr import schema

# PETA's recipe, the base of this one (configs/peta.py, loaded by its path).
peta = schema.load_recipe('peta')


def get_config(arg: str | None = None):
  config = peta.get_config()
  config.data.name = 'rap2'
  config.data.builder_config = ''
  config.train.num_epochs = 30
  return schema.apply_args(config, arg)
