"""recipes: each family's recipe reaches every dataset's config, and no other way round it."""

import pytest

from jaxattr import optim, recipes, schema

# Every dataset config that takes a backbone argument: (recipe file, its argument prefix).
DATASETS = [
  ('wider', ''),
  ('peta', ''),
  ('peta', 'vespa,'),
  ('pa100k', ''),
  ('rap2', ''),
  ('custom', ''),
  ('peers', 'rap2,'),
]


def test_the_transformer_recipe_is_swins_coco_fine_tuning():
  # mmdetection's configs/swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py and Swin's
  # Sec. 4.2: AdamW lr 1e-4, weight decay 0.05, batch 16, 36 epochs, x0.1 at 27 and 33.
  fields = recipes.TRANSFORMER
  assert (fields['optimizer.name'], fields['optimizer.learning_rate']) == ('adamw', 1e-4)
  assert (fields['optimizer.weight_decay'], fields['train.batch_size']) == (0.05, 16)
  assert fields['train.num_epochs'] == 36
  assert (fields['schedule.name'], fields['schedule.step_epochs']) == ('step', (27, 33))
  assert fields['schedule.factor'] == 0.1
  # One lr for backbone and heads, no frozen stage, no clipping.
  assert fields['optimizer.backbone_lr_scale'] == 1.0
  assert fields['train.freeze_backbone_epochs'] == 0
  assert fields['optimizer.grad_clip_norm'] == 0.0


@pytest.mark.parametrize(('recipe', 'prefix'), DATASETS)
@pytest.mark.parametrize('backbone', ['vit_b_16', 'swin_t', 'convnext_tiny'])
def test_every_dataset_config_gets_the_family_recipe(recipe, prefix, backbone):
  config = schema.load_recipe(recipe).get_config(f'{prefix}{backbone}')
  assert config.model.backbone == backbone
  flat = config.to_dict()
  for field, value in recipes.TRANSFORMER.items():
    node = flat
    for part in field.split('.'):
      node = node[part]
    assert (tuple(node) if isinstance(node, list) else node) == value, field
  assert config.model.pretrained == schema.PUBLISHED
  assert schema.validate(config, num_devices=4) == []


@pytest.mark.parametrize(('recipe', 'prefix'), DATASETS)
def test_the_paper_backbone_keeps_the_dataset_recipe(recipe, prefix):
  config = schema.load_recipe(recipe).get_config(f'{prefix}resnet50')
  assert config.recipe == recipes.PAPER
  assert config.optimizer.name in ('sgd', 'adam')
  assert config.model.pretrained == schema.PUBLISHED


def test_a_backbone_override_without_its_recipe_is_refused():
  # `--config.model.backbone=swin_t` on configs/wider.py: set after get_config.
  config = schema.load_recipe('wider').get_config()
  config.model.backbone = 'swin_t'
  (line,) = schema.validate(config, num_devices=4)
  assert line.startswith("config.recipe: 'paper' is not the recipe of swin_t ('transformer')")
  assert '--config=configs/<recipe>.py:swin_t' in line
  config.recipe = recipes.OWN  # Explicitly the paper's numbers with swin_t.
  assert schema.validate(config, num_devices=4) == []
  # And the other way: the transformer recipe with a ResNet.
  config = schema.load_recipe('wider').get_config('swin_t')
  config.model.backbone = 'resnet101'
  (line,) = schema.validate(config, num_devices=4)
  assert line.startswith("config.recipe: 'transformer' is not the recipe of resnet101 ('paper')")


def test_own_numbers_stay_with_any_backbone():
  test = schema.load_recipe('test').get_config()
  for arg in ('swin_t', 'vit_b_16'):
    config = schema.load_recipe('test').get_config(arg)
    assert (config.recipe, config.optimizer.name) == (recipes.OWN, test.optimizer.name)
  demo = schema.load_recipe('demo').get_config('swin')
  assert (demo.recipe, demo.optimizer.learning_rate) == (recipes.OWN, 1e-3)


@pytest.mark.parametrize('backbone', ['vit_b_16', 'swin_t', 'convnext_tiny'])
def test_the_backbone_starts_training_at_the_start_of_the_warm_up(backbone):
  """The backbone's lr at its first trained step is the warm-up's first, not ~full."""
  config = schema.load_recipe('wider').get_config(backbone)
  steps_per_epoch = 100
  first = int(config.train.freeze_backbone_epochs * steps_per_epoch)  # As train.py counts.
  lr_fn = optim.make_lr_fn(config, steps_per_epoch)
  backbone_lr = lambda step: float(lr_fn(step)) * config.optimizer.backbone_lr_scale  # noqa: E731
  lr = config.optimizer.learning_rate
  warmup = int(config.schedule.warmup_epochs * steps_per_epoch)
  assert warmup == 100
  # Linear from 0: 0 at the first trained step, lr / 2 halfway, lr at the end.
  assert [backbone_lr(first + s) for s in (0, 50, 100)] == pytest.approx([0.0, lr / 2, lr])
