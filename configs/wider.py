"""WIDER-Attribute, the paper's recipe (supplementary + authors' answers).

  python -m jaxattr.main --config=configs/wider.py --workdir=runs/wider \
      --config.data.manual_dir=/path/to/wider_attribute
  python -m jaxattr.main --config=configs/wider.py:resnet50 ...   # another backbone

Paper (ResNet-101, all components): test mAP 86.4 (VOC AP), on one GTX 1080 Ti.
Unlike the peers, the best epoch is chosen on the validation split, and test is
evaluated once at the end.
"""

from configs import default


def get_config(arg: str | None = None):
  config = default.get_config()
  config.data.name = 'wider_attribute'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.test_split = 'test'
  config.data.image_size = 224
  config.data.resize_size = 256
  config.data.crop_min, config.data.crop_max = 128, 224

  config.model.backbone = 'resnet101'
  config.model.attention.levels = (3, 4)

  config.loss.gamma = 0.5
  config.history.length = 5

  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  # lr / 10 when the validation mAP plateaus, down to 1e-5.
  config.schedule.name = 'plateau'
  config.schedule.patience = 3
  config.schedule.min_lr = 1e-5

  config.train.batch_size = 32
  config.train.num_epochs = 40
  config.train.freeze_backbone_epochs = 3
  config.eval.metric = 'map'
  config.eval.ap = 'voc'
  return default.apply_args(config, arg)
