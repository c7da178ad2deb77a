"""Your own attributes: a folder of images plus a CSV (see docs/custom_data.md).

  python -m jaxattr.main --config=configs/custom.py --workdir=runs/mine \
      --config.data.manual_dir=/path/to/my_data
"""

from jaxattr import schema

# PETA's recipe, the base of this one (configs/peta.py, loaded by its path).
peta = schema.load_recipe('peta')


def get_config(arg: str | None = None):
  config = peta.get_config()
  config.data.name = 'custom_attributes'
  config.data.builder_config = ''
  config.train.num_epochs = 30
  return schema.apply_args(config, arg)
