"""A tiny run of the whole system, for tests and smoke checks (seconds on a CPU).

  python -m jaxattr.main --config=configs/test.py --workdir=/tmp/jaxattr_test

The same architecture as the paper (ResNet-18 at 1/16 width, both attention
levels, all losses, two stages) on the `tiny` synthetic dataset at 64x64. It
learns little; it exercises everything.
"""

from jaxattr import recipes, schema


def get_config(arg: str | None = None):
  config = schema.defaults()
  config.data.name = 'synthetic_attributes'
  config.data.builder_config = 'tiny'
  config.data.image_size = 64
  config.data.resize_size = 72
  config.data.crop_min, config.data.crop_max = 48, 72

  config.model.backbone = 'resnet18'
  config.model.width = 0.0625
  config.model.attention.mask_channels = 256
  config.model.attention.classifier_channels = (256, 512, 512)
  config.model.pretrained = schema.SCRATCH
  config.recipe = recipes.OWN  # Its numbers hold for any backbone the tests choose.

  # The sum of the paper's Eqs. 3-4: this tiny run's lr was chosen with it.
  config.loss.attribute_reduction = 'sum'
  config.history.start_epoch = 1
  config.optimizer.learning_rate = 0.05
  config.schedule.name = 'plateau'
  config.schedule.patience = 1
  config.schedule.min_lr = 5e-4

  config.train.batch_size = 16
  config.train.num_epochs = 3
  # A frozen random backbone: only to exercise both stages.
  config.train.freeze_backbone_epochs = 1
  config.train.allow_frozen_scratch = True
  config.train.log_every_steps = 4
  config.train.checkpoint_every_steps = 8
  config.eval.batch_size = 24  # Not a divisor of the split: exercises padding.
  config.eval.metric = 'map'
  return schema.apply_args(config, arg)
