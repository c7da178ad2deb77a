"""optim: the two parameter groups' SGD steps and the learning-rate schedules, by hand."""

import jax
import numpy as np
import pytest

from jaxattr import optim
from tests.conftest import make_config


def _params():
  return {
    'backbone': {'w': np.array([1.0, -2.0], np.float32)},
    'classifier': {'w': np.array([0.5, 4.0], np.float32)},
  }


def _grads():
  return {
    'backbone': {'w': np.array([0.1, 0.2], np.float32)},
    'classifier': {'w': np.array([-1.0, 2.0], np.float32)},
  }


@pytest.mark.parametrize('freeze_backbone', [True, False])
def test_update_is_sgd_with_l2_decay_per_group(freeze_backbone):
  opt = make_config('unused').optimizer
  opt.name, opt.momentum, opt.weight_decay, opt.backbone_lr_scale = 'sgd', 0.9, 0.1, 0.5
  tx = optim.make_optimizer(opt)
  params, grads = _params(), _grads()
  backbone, heads = optim.split_params(params)
  state = {'backbone': tx.init(backbone), 'heads': tx.init(heads)}
  new, new_state = optim.update(params, grads, state, opt, 0.2, freeze_backbone)
  # First step: the momentum trace is g + wd * p, and p moves by -lr * trace.
  for part, lr in (('classifier', 0.2), ('backbone', 0.2 * 0.5)):
    p, g = params[part]['w'], grads[part]['w']
    if part == 'backbone' and freeze_backbone:
      expected = p
    else:
      expected = p - lr * (g + 0.1 * p)
    np.testing.assert_allclose(new[part]['w'], expected, rtol=1e-6)
  if freeze_backbone:  # The backbone's state is the initial one, untouched.
    jax.tree.map(np.testing.assert_array_equal, new_state['backbone'], state['backbone'])


def test_learning_rate_schedules_by_hand():
  config = make_config('unused')
  config.optimizer.learning_rate = 0.1
  config.train.num_epochs = 10
  config.schedule.name, config.schedule.step_epochs, config.schedule.factor = 'step', (4, 8), 0.1
  fn = optim.make_lr_fn(config, steps_per_epoch=10)
  # 0.1, x0.1 at epoch 4 and again at epoch 8.
  steps = [0, 39, 40, 79, 80, 99]
  expected = [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
  np.testing.assert_allclose([float(fn(s)) for s in steps], expected, rtol=1e-6)

  config.schedule.name, config.schedule.min_lr, config.schedule.warmup_epochs = 'cosine', 0.0, 1.0
  fn = optim.make_lr_fn(config, steps_per_epoch=10)
  assert [float(fn(s)) for s in (0, 5)] == pytest.approx([0.0, 0.05])  # Linear warm-up.
  # After the warm-up: 0.1 * (1 + cos(pi * t)) / 2 over the remaining 90 steps.
  for step in (10, 55, 100):
    t = (step - 10) / 90
    assert float(fn(step)) == pytest.approx(0.1 * (1 + np.cos(np.pi * t)) / 2, abs=1e-7)


def test_step_schedule_drops_at_its_epochs_under_a_warm_up():
  config = make_config('unused')
  config.optimizer.learning_rate = 0.1
  config.train.num_epochs = 10
  config.schedule.name, config.schedule.step_epochs, config.schedule.factor = 'step', (4, 8), 0.1
  config.schedule.warmup_epochs = 1.0
  fn = optim.make_lr_fn(config, steps_per_epoch=10)
  # Linear from 0 over the first 10 steps, then 0.1; x0.1 at step 40 and 80, not later.
  steps = [0, 5, 10, 39, 40, 79, 80]
  expected = [0.0, 0.05, 0.1, 0.1, 0.01, 0.01, 0.001]
  np.testing.assert_allclose([float(fn(s)) for s in steps], expected, rtol=1e-6, atol=1e-12)


def _backbone_params(backbone: str, width: float) -> dict:
  """The model's parameter shapes with the backbone at the smallest depth."""
  from jaxattr.models import model as model_lib

  config = make_config('unused')
  config.model.backbone, config.model.width, config.model.depth = backbone, width, 0.01
  model = model_lib.create_model(config.model, 3)
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, 64, 64, 3)), train=False)
  )
  return variables['params']


def _decaying(params: dict) -> set[str]:
  mask = optim.decay_mask(params)
  return {
    '/'.join(str(k.key) for k in path)
    for path, decays in jax.tree_util.tree_leaves_with_path(mask)
    if decays
  }


# The backbone leaves AdamW decays at the smallest depth (one block per stage; Swin keeps
# its pair of unshifted and shifted blocks): the conv / linear kernels, and
# ViT's fused q/k/v projection. Biases, norms, ViT's position embedding and class token,
# Swin's relative-position tables and ConvNeXt's layer scales are spared.
_SWIN_STAGE = ('attn/qkv/kernel', 'attn/proj/kernel', 'mlp/0/kernel', 'mlp/3/kernel')
DECAYING = {
  'vit_b_16': {
    'conv_proj/kernel',
    'encoder/layers/encoder_layer_0/self_attention/in_proj_weight',
    'encoder/layers/encoder_layer_0/self_attention/out_proj/kernel',
    'encoder/layers/encoder_layer_0/mlp/0/kernel',
    'encoder/layers/encoder_layer_0/mlp/3/kernel',
  },
  'swin_t': {
    'features/0/0/kernel',
    *(f'features/{s}/{b}/{leaf}' for s in (1, 3, 5, 7) for b in (0, 1) for leaf in _SWIN_STAGE),
    *(f'features/{s}/reduction/kernel' for s in (2, 4, 6)),
  },
  'convnext_tiny': {
    'features/0/0/kernel',
    *(f'features/{s}/0/block/{i}/kernel' for s in (1, 3, 5, 7) for i in (0, 3, 5)),
    *(f'features/{s}/1/kernel' for s in (2, 4, 6)),
  },
}


@pytest.mark.parametrize('backbone', sorted(DECAYING))
def test_adamw_decays_the_kernels_only(backbone):
  params = _backbone_params(backbone, width=0.125)
  assert _decaying(params['backbone']) == DECAYING[backbone]
  # The attention heads: their conv and linear kernels, not the biases nor BatchNorms.
  heads = {k: v for k, v in params.items() if k != 'backbone'}
  assert {name.rsplit('/', 1)[1] for name in _decaying(heads)} == {'kernel'}


def test_adamw_update_spares_the_masked_leaves():
  opt = make_config('unused').optimizer
  opt.name, opt.weight_decay = 'adamw', 0.1
  params = {
    'backbone': {'encoder': {'pos_embedding': np.ones(2, np.float32)}},
    'classifier': {'kernel': np.full(2, 2.0, np.float32), 'bias': np.full(2, 3.0, np.float32)},
  }
  grads = jax.tree.map(np.zeros_like, params)
  tx = optim.make_optimizer(opt)
  backbone, heads = optim.split_params(params)
  state = {'backbone': tx.init(backbone), 'heads': tx.init(heads)}
  new, _ = optim.update(params, grads, state, opt, 0.5, False)
  # Zero gradients: Adam's step is 0, so only the decay moves a leaf, by -lr * wd * p.
  np.testing.assert_allclose(new['classifier']['kernel'], 2.0 * (1 - 0.5 * 0.1), rtol=1e-6)
  np.testing.assert_array_equal(new['classifier']['bias'], params['classifier']['bias'])
  np.testing.assert_array_equal(new['backbone']['encoder']['pos_embedding'], 1.0)


def _vit_like(num_blocks: int) -> dict:
  one = np.ones(2, np.float32)
  return {
    'conv_proj': {'kernel': one, 'bias': one},
    'class_token': one,
    'encoder': {
      'pos_embedding': one,
      'layers': {f'encoder_layer_{i}': {'mlp': {'0': {'kernel': one}}} for i in range(num_blocks)},
      'ln': {'scale': one},
    },
  }


def test_layer_decay_scales_by_hand():
  scales = optim.layer_scales(_vit_like(3), 0.5)
  # Layers 0 (embeddings), 1-3 (blocks), 4 (final norm): 0.5 ** (4 - layer).
  assert scales['conv_proj'] == {'kernel': 0.0625, 'bias': 0.0625}
  assert scales['class_token'] == 0.0625
  assert scales['encoder']['pos_embedding'] == 0.0625
  blocks = scales['encoder']['layers']
  assert [blocks[f'encoder_layer_{i}']['mlp']['0']['kernel'] for i in range(3)] == [
    0.125,
    0.25,
    0.5,
  ]
  assert scales['encoder']['ln']['scale'] == 1.0


def test_layer_decay_scales_the_backbone_step():
  opt = make_config('unused').optimizer
  opt.name, opt.momentum, opt.weight_decay, opt.layer_decay = 'sgd', 0.0, 0.0, 0.5
  params = {'backbone': _vit_like(1), 'classifier': {'kernel': np.ones(2, np.float32)}}
  grads = jax.tree.map(np.ones_like, params)
  tx = optim.make_optimizer(opt)
  backbone, heads = optim.split_params(params)
  state = {'backbone': tx.init(backbone), 'heads': tx.init(heads)}
  new, _ = optim.update(params, grads, state, opt, 0.1, False)
  # Plain SGD: p - lr * scale * g, with the scale of each layer (2 = top: 1, block: 0.5,
  # embeddings: 0.25); the heads at the full lr.
  np.testing.assert_allclose(new['backbone']['class_token'], 1 - 0.1 * 0.25)
  np.testing.assert_allclose(
    new['backbone']['encoder']['layers']['encoder_layer_0']['mlp']['0']['kernel'], 1 - 0.1 * 0.5
  )
  np.testing.assert_allclose(new['backbone']['encoder']['ln']['scale'], 1 - 0.1)
  np.testing.assert_allclose(new['classifier']['kernel'], 1 - 0.1)
