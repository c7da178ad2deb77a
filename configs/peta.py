"""PETA (35 attributes), the paper's recipe.

  python -m jaxattr.main --config=configs/peta.py --workdir=runs/peta \
      --config.data.manual_dir=/path/to/PETA
  # The paper's own split (VeSPA lists) instead of PETA.mat partition 0:
  ... --config.data.builder_config=vespa

Paper (ResNet-101): mA 84.59, Acc 78.56, Prec 86.79, Rec 86.12, F1 86.46.
"""

from configs import default


def get_config(arg: str | None = None):
  config = default.get_config()
  config.data.name = 'peta'
  config.data.builder_config = 'mat0'  # PETA.mat partition 0, as the peers.
  config.data.image_size = 224
  config.data.resize_size = 256
  config.data.crop_min, config.data.crop_max = 160, 224

  config.model.backbone = 'resnet101'
  config.model.attention.levels = (3, 4)
  config.loss.gamma = 0.5
  config.history.length = 5

  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-4
  config.optimizer.weight_decay = 5e-4
  # lr / 10 twice when validation shows no gain for more than 8 epochs: optax's
  # reduce_on_plateau cuts after `patience` evaluations without gain, so 9.
  config.schedule.name = 'plateau'
  config.schedule.patience = 9
  config.schedule.min_lr = 1e-6

  config.train.batch_size = 32
  config.train.num_epochs = 60
  config.train.freeze_backbone_epochs = 3
  config.eval.metric = 'f1'
  return default.apply_args(config, arg)
