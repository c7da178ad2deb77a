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
