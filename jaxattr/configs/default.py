"""Default configuration: every knob of a jaxattr run, with its default.

Other configs (wider.py, peta.py, demo.py, test.py, ...) start from
`get_config()` here and change what their run needs. Every field read anywhere in
jaxattr is defined here, so `--config.<field>=...` overrides always have a target.
"""

import ml_collections

from jaxattr.models import registry


def get_config() -> ml_collections.ConfigDict:
  """Returns the default config: every field, at values the recipes start from.

  Not itself a paper recipe (its data is the synthetic set; configs/wider.py and
  configs/peta.py are the paper's recipes).
  """
  config = ml_collections.ConfigDict()
  config.seed = 0

  # --- Data -------------------------------------------------------------------
  config.data = data = ml_collections.ConfigDict()
  # TFDS builder name (registered by importing jaxattr.data) and builder config.
  data.name = 'synthetic_attributes'
  data.builder_config = ''  # '' = the builder's default config.
  data.data_dir = ''  # TFDS data_dir; '' = TFDS default (~/tensorflow_datasets).
  data.manual_dir = ''  # Folder with the user's download (real datasets).
  data.train_split = 'train'
  data.eval_split = 'validation'  # Model selection happens here, never on test.
  data.test_split = 'test'  # Evaluated once at the end, with the best checkpoint.
  data.image_size = 224
  # Paper augmentation: resize to resize_size², random square crop with side in
  # [crop_min, crop_max] (pixels of the resized image), resize to image_size, flip.
  data.resize_size = 256
  data.crop_min = 128
  data.crop_max = 224
  data.random_flip = True
  data.mean = (0.485, 0.456, 0.406)  # ImageNet statistics of the torchvision weights.
  data.std = (0.229, 0.224, 0.225)
  # Unknown labels (-1): 'negative' (the literature) or 'ignore' (masked in the loss).
  # Evaluation always ignores them.
  data.unknown_label = 'negative'
  data.num_parallel_calls = -1  # tf.data.AUTOTUNE
  data.prefetch = 2
  # At train time a corrupt image is reported with its id and skipped ('skip'),
  # or stops the run ('fail').
  data.on_bad_image = 'fail'
  # Images with more pixels (width x height) are refused, naming the file: far above
  # any person crop, and such an image still decodes in about 0.3 GB.
  data.max_image_pixels = 100_000_000

  # --- Model ------------------------------------------------------------------
  config.model = model = ml_collections.ConfigDict()
  # resnet18/34/50/101/152, densenet121/161/169/201, vit_b_16, swin_t/s/b,
  # convnext_tiny/small/base (`BACKBONES`).
  model.backbone = 'resnet101'
  # Channel multiplier of backbone and heads (1.0 = the paper's model). Tiny CPU
  # variants of the same architecture use e.g. 0.125.
  model.width = 1.0
  # Block multiplier of the backbone's stages (1.0 = torchvision's architecture; the
  # first blocks of each stage are kept, `models.resnet.scale_blocks`). Test-size
  # transformers use e.g. 0.25; pretrained weights need 1.0.
  model.depth = 1.0
  model.dtype = 'float32'  # Compute dtype ('bfloat16' for mixed precision).
  model.param_dtype = 'float32'
  model.pretrained = ''  # Path written by `python -m jaxattr.convert`.
  model.attention = attention = ml_collections.ConfigDict()
  attention.levels = (3, 4)  # () primary only; (4,) single scale; (3, 4) multi-scale.
  # 'score' | 'feature_upsample' | 'feature_maxpool' | 'feature_strided_conv'.
  attention.aggregation = 'score'
  attention.confidence_weighting = True
  attention.mask_channels = 256  # C256-C256 of the mask branch (times width).
  attention.classifier_channels = (256, 512, 512)  # C256-C512-C512 (times width).

  # --- Loss -------------------------------------------------------------------
  config.loss = loss = ml_collections.ConfigDict()
  loss.primary = 'weighted_focal'  # 'bce' | 'weighted_bce' | 'weighted_focal'.
  loss.attention = 'variance_weighted'  # 'bce' | 'variance_weighted'.
  loss.class_weights = 'vespa'  # 'vespa' | 'paper_literal' | 'none'.
  loss.gamma = 0.5
  # Over attributes: 'sum' (the paper's Eqs. 3-4) or 'mean' (the authors' released
  # code, with which the paper's lr and weight decay were tuned; docs/method.md,
  # "Losses"). Each recipe sets it and says why.
  loss.attribute_reduction = 'sum'

  # --- Prediction-variance history (Active Bias) --------------------------------
  config.history = history = ml_collections.ConfigDict()
  history.length = 5  # K most recent epochs.
  history.start_epoch = 2  # Burn-in: written from this (0-based) epoch on.
  history.source = 'attention'  # 'attention' (per level) | 'aggregate'.

  # --- Optimisation -----------------------------------------------------------
  config.optimizer = optimizer = ml_collections.ConfigDict()
  optimizer.name = 'sgd'  # 'sgd' | 'adam' | 'adamw'.
  optimizer.learning_rate = 1e-3
  optimizer.momentum = 0.9
  optimizer.nesterov = False
  optimizer.weight_decay = 5e-4  # optax.add_decayed_weights, not in the loss.
  optimizer.grad_clip_norm = 0.0  # 0 = off.
  # The backbone's learning rate is learning_rate * backbone_lr_scale (the heads' is
  # learning_rate); e.g. 0.1 for fine-tuning a pretrained transformer.
  optimizer.backbone_lr_scale = 1.0

  config.schedule = schedule = ml_collections.ConfigDict()
  # 'plateau' (on the validation metric) | 'step' | 'cosine' | 'constant'.
  schedule.name = 'plateau'
  schedule.factor = 0.1
  schedule.patience = 2  # Epochs without gain before lr /= 10 (plateau).
  schedule.min_lr = 1e-5
  schedule.step_epochs = (30, 60)  # 'step'.
  schedule.warmup_epochs = 0.0  # 'cosine' (and linear warm-up for any).

  # --- Training loop ----------------------------------------------------------
  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 32  # Global batch, over all devices and processes.
  train.num_epochs = 30
  train.freeze_backbone_epochs = 3  # Stage 1: heads only, backbone + BN frozen.
  train.log_every_steps = 50
  train.checkpoint_every_steps = 1000
  train.keep_checkpoints = 2  # Latest k, plus the best by the validation metric.
  train.max_steps = 0  # > 0 stops early (tests, benchmarks).

  config.eval = evaluation = ml_collections.ConfigDict()
  evaluation.batch_size = 64
  # Selection metric on data.eval_split: 'map' (WIDER-like) | 'ma' | 'f1' (PETA-like).
  evaluation.metric = 'map'
  evaluation.ap = 'voc'  # Headline AP definition: 'voc' | 'sklearn'.
  evaluation.threshold = 0.5
  evaluation.every_epochs = 1
  evaluation.attention_grid = False  # Write a PNG of attention masks at the end.

  # --- Evaluators ---------------------------------------------------------------
  # `config.evals.<name> = dict(type=..., split=..., every_epochs=..., at_end=...,
  # <options>)`, types and options in `jaxattr.evaluators`. Empty = validation every
  # `eval.every_epochs` epochs (selecting by `eval.metric`) and test at the end on the
  # selected checkpoint (`evaluators.default_evals`).
  config.evals = ml_collections.ConfigDict()

  # Multi-host: initialise jax.distributed (coordinator from flags or environment).
  config.distributed = False
  return config


# Every architecture of the backbone registry (`jaxattr/models/registry.py`).
BACKBONES = tuple(registry.BACKBONES)


def apply_args(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies config-file arguments, e.g. `configs/wider.py:resnet50`.

  `arg` is a comma-separated list of tokens; a backbone name selects the backbone.

  Args:
    config: the config to change in place.
    arg: the text after ':' in `--config=path:arg`, or None.

  Returns:
    The same config.
  """
  for token in filter(None, (arg or '').split(',')):
    if token in BACKBONES:
      config.model.backbone = token
    else:
      raise ValueError(f'Unknown config argument {token!r}; expected one of {BACKBONES}.')
  return config
