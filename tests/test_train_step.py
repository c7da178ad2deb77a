"""The train step's options: the EMA of the weights, stochastic depth, gradient accumulation.

Each is checked against an independent computation: the EMA against numpy's average of
the weights the steps produced, the accumulated step against one step on the whole batch
(a backbone without batch statistics, in float64), the EMA run's tools against the model
applied to the EMA's variables restored from the checkpoint by hand.
"""

import json
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattr import checkpoints, export, inference, schema, train
from jaxattr.models import model as model_lib
from jaxattr.run import restore
from tests.conftest import FLOAT64, main_command, make_config, run_steps, tool_env, tree_allclose

DECAY = 0.9


def host_copy(tree):
  """A numpy copy, taken before the next step donates the device buffers."""
  return jax.tree.map(lambda x: np.array(x, np.float64), jax.device_get(tree))


def fresh(state):
  """The state in new buffers, so that a step (which donates its input) can start from it
  again."""
  return jax.tree.map(jnp.copy, state)


# --- EMA ------------------------------------------------------------------------------


def test_ema_is_the_hand_computed_average(data_dir):
  config = make_config(data_dir, **{'train.ema_decay': DECAY})
  ex = train.create_experiment(config, devices=jax.devices()[:1])
  average = host_copy(ex.state.variables())
  jax.tree.map(np.testing.assert_array_equal, host_copy(ex.state.ema), average)
  state, batches = ex.state, ex.train_batches()
  for step in range(3):  # The frozen stage: the heads train, the backbone does not.
    state, _ = ex.train_step(state, next(batches), step)
    weights = host_copy(state.variables())
    average = jax.tree.map(lambda e, w: DECAY * e + (1 - DECAY) * w, average, weights)
  ema = host_copy(state.ema)
  tree_allclose(ema, average)
  kernel = ema['params']['classifier']['kernel']
  assert not np.allclose(kernel, weights['params']['classifier']['kernel'])
  # The frozen backbone's average is its weights, exactly.
  for part in ('params', 'batch_stats'):
    jax.tree.map(np.testing.assert_array_equal, ema[part]['backbone'], weights[part]['backbone'])
  assert state.eval_variables() is state.ema
  no_ema = state.replace(ema={})
  assert no_ema.eval_variables()['params'] is state.params


def test_ema_decay_is_checked_and_fixed_on_resume():
  config = schema.defaults()
  config.train.ema_decay = 1.0
  assert 'config.train.ema_decay: must be' in '\n'.join(schema.validate(config))
  assert schema.fixed_reason('train.ema_decay', schema.MISSING, 0.0) is None
  assert schema.fixed_reason('train.ema_decay', 0.9, 0.9) is None
  assert 'EMA' in schema.fixed_reason('train.ema_decay', 0.0, 0.9)
  assert 'EMA' in schema.fixed_reason('train.ema_decay', 0.99, 0.9)


class StateBeforeEMA(flax.struct.PyTreeNode):
  """The train state as runs saved it before the EMA existed."""

  step: Any
  params: Any
  batch_stats: Any
  opt_state: Any
  history: Any
  plateau: Any
  best_metric: Any


def test_old_checkpoints_restore_and_the_tools_read_the_ema(tmp_path):
  fields = {
    'step': jnp.asarray(3),
    'params': {'w': jnp.arange(3.0)},
    'batch_stats': {'m': jnp.ones(2)},
    'opt_state': {'v': jnp.full(3, 2.0)},
    'history': {},
    'plateau': jnp.zeros(()),
    'best_metric': jnp.asarray(0.5),
  }
  ckpt = checkpoints.Checkpointer(tmp_path / 'old')
  ckpt.save(3, StateBeforeEMA(**fields))
  ckpt.close()
  target = train.TrainState(**jax.tree.map(jnp.zeros_like, fields), ema={})
  restored = checkpoints.Checkpointer(tmp_path / 'old').restore(target)
  assert restored.ema == {}
  for name, value in fields.items():
    jax.tree.map(np.testing.assert_array_equal, getattr(restored, name), value)
  variables = restore.restore_variables(tmp_path / 'old', restore.CheckpointRef('latest', 3))
  np.testing.assert_array_equal(variables['params']['w'], [0.0, 1.0, 2.0])

  ema = {'params': {'w': jnp.full(3, 7.0)}, 'batch_stats': {'m': jnp.full(2, 8.0)}}
  ckpt = checkpoints.Checkpointer(tmp_path / 'ema')
  ckpt.save(3, train.TrainState(**fields, ema=ema))
  ckpt.close()
  variables = restore.restore_variables(tmp_path / 'ema', restore.CheckpointRef('latest', 3))
  jax.tree.map(np.testing.assert_array_equal, variables, ema)
  no_ema = train.TrainState(**fields, ema={})
  ckpt = checkpoints.Checkpointer(tmp_path / 'raw')
  ckpt.save(3, no_ema)
  ckpt.close()
  variables = restore.restore_variables(tmp_path / 'raw', restore.CheckpointRef('latest', 3))
  jax.tree.map(np.testing.assert_array_equal, variables, no_ema.variables())


@pytest.fixture(scope='module')
def ema_runs(data_dir, tmp_path_factory):
  """configs/test.py with `--config.train.ema_decay` on the command line: 12 steps straight,
  and 6 steps, stop, 6 more: (straight workdir, resumed workdir, config).

  All three are separate processes alike: a process with other devices (the tests' four)
  may compile kernels that round differently.
  """
  import subprocess

  root = tmp_path_factory.mktemp('ema')
  n = 12  # One evaluation (step 8, the best checkpoint); the cut at 6 is inside the frozen stage.
  for workdir, steps, *more in (('a', n), ('b', n // 2), ('b', n, '--allow_config_change')):
    flags = [f'--config.train.ema_decay={DECAY}', f'--config.train.max_steps={steps}', *more]
    proc = subprocess.run(
      main_command(data_dir, root / workdir, *flags),
      capture_output=True,
      text=True,
      timeout=900,
      env=tool_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
  config = make_config(data_dir, **{'train.ema_decay': DECAY, 'train.max_steps': n})
  return root / 'a', root / 'b', config


def abstract_state(config):
  model = model_lib.create_model(config.model, 14)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.eval_shape(lambda: train.create_train_state(config, model, 128, 14, sharding))
  return model, abstract


@pytest.mark.slow  # Three command-line runs (~3 min).
def test_ema_resume_equals_uninterrupted(ema_runs):
  straight, resumed, config = ema_runs
  _, abstract = abstract_state(config)
  a = checkpoints.Checkpointer(straight).restore(abstract)
  b = checkpoints.Checkpointer(resumed).restore(abstract)
  assert int(a.step) == int(b.step) == 12
  for part in ('params', 'batch_stats', 'ema', 'history', 'opt_state', 'plateau'):
    jax.tree.map(np.testing.assert_array_equal, getattr(b, part), getattr(a, part))
  assert a.ema  # Kept, and not the weights.
  assert not np.allclose(a.ema['params']['classifier']['kernel'], a.params['classifier']['kernel'])
  for workdir in (straight, resumed):
    results = json.loads((workdir / 'results.json').read_text())
    assert results['weights'] == 'ema'
    assert 'EMA weights' in (workdir / 'results.md').read_text()
  ra = json.loads((straight / 'results.json').read_text())
  rb = json.loads((resumed / 'results.json').read_text())
  assert rb['test']['map_voc'] == pytest.approx(ra['test']['map_voc'], rel=1e-5)


@pytest.mark.slow
def test_predict_and_export_use_the_ema_weights(ema_runs, tmp_path):
  workdir, _, config = ema_runs
  model, abstract = abstract_state(config)
  best = checkpoints.Checkpointer(workdir).restore(abstract, which='best')
  images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
  mean, std = np.array(config.data.mean), np.array(config.data.std)
  x = jnp.asarray((images / 255.0 - mean) / std, jnp.float32)

  def probs(variables):
    return np.asarray(jax.nn.sigmoid(model.apply(variables, x, train=False)['logits']))

  want, raw = probs(best.ema), probs(best.variables())
  assert np.max(np.abs(want - raw)) > 1e-3  # The two would be told apart.
  predictor = inference.Predictor.from_workdir(workdir, batch_size=4)
  np.testing.assert_allclose(predictor(images)['probs'], want, atol=1e-5)
  export.export_run(workdir, tmp_path / 'model.bin', platforms=('cpu',))
  _, exported, leaves = export.read(tmp_path / 'model.bin')
  np.testing.assert_allclose(exported.call(leaves, images)['probs'], want, atol=1e-5)


# --- Stochastic depth -----------------------------------------------------------------


@pytest.mark.slow  # Two ConvNeXt steps compiled (~1 min).
def test_stochastic_depth_draws_from_seed_and_step(data_dir):
  """Rate > 0: the step differs from rate 0 and from the same step at another step number,
  and repeats exactly at the same seed and step; rate 0 draws nothing."""
  overrides = {
    'model.backbone': 'convnext_tiny',
    'model.width': 1 / 16,
    'model.depth': 1 / 4,
    'train.freeze_backbone_epochs': 0,
  }
  plain = train.create_experiment(make_config(data_dir, **overrides), devices=jax.devices()[:1])
  config = make_config(data_dir, **overrides, **{'model.drop_path_rate': 0.5})
  dropped = train.create_experiment(config, devices=jax.devices()[:1])
  batch = next(plain.train_batches())
  start = plain.state

  def loss(ex, step):
    state = fresh(start).replace(step=jnp.asarray(step, jnp.int32))
    return float(ex.train_step(state, batch, step)[1]['loss'])

  assert loss(plain, 0) == loss(plain, 1)  # Nothing random at rate 0.
  first = loss(dropped, 0)
  assert loss(dropped, 0) == first
  assert first != loss(plain, 0)
  assert loss(dropped, 1) != first


def test_stochastic_depth_refused_for_backbones_without_it():
  config = schema.defaults()
  config.recipe = 'own'  # Only the stochastic-depth check is under test.
  config.model.backbone = 'vit_b_16'
  config.model.drop_path_rate = 0.1
  assert schema.validate(config) == [
    'config.model.drop_path_rate: vit_b_16 has no stochastic depth (only swin, convnext do); '
    'use 0, got 0.1'
  ]
  config.model.backbone = 'swin_t'
  assert schema.validate(config) == []


# --- Gradient accumulation ------------------------------------------------------------


def test_micro_batches_split_and_merge_in_batch_order():
  x = np.arange(2 * 12 * 3).reshape(2, 12, 3)
  micro = np.asarray(train.split_micro_batches(jnp.asarray(x), 4, axis=1))
  assert micro.shape == (4, 2, 3, 3)
  for j in range(4):
    np.testing.assert_array_equal(micro[j], x[:, j::4])
  np.testing.assert_array_equal(train.merge_micro_batches(jnp.asarray(micro), axis=1), x)


def test_accumulated_step_equals_the_whole_batch(data_dir, float64):
  """ViT without attention heads (no batch statistics anywhere), in float64: 4 micro-batches
  of 4 update as one batch of 16, end to end."""
  overrides = {
    'model.backbone': 'vit_b_16',
    'model.width': 1 / 16,
    'model.depth': 1 / 4,
    'model.attention.levels': (),
    'loss.attention': 'bce',
    'train.freeze_backbone_epochs': 0,
    **FLOAT64,
  }
  whole = train.create_experiment(make_config(data_dir, **overrides), devices=jax.devices()[:1])
  config = make_config(data_dir, **overrides, **{'train.grad_accum_steps': 4})
  accum = train.create_experiment(config, devices=jax.devices()[:1])
  assert whole.state.batch_stats == {}
  state1, losses1 = run_steps(whole, 2)
  state4, losses4 = run_steps(accum, 2)
  np.testing.assert_allclose(losses4, losses1, rtol=1e-12)
  tree_allclose(state4.params, state1.params, rtol=1e-10)
  tree_allclose(state4.opt_state, state1.opt_state, rtol=1e-10)


@pytest.mark.slow  # A step compiled for two devices (~30 s cold).
def test_accumulation_over_devices_writes_every_prediction(data_dir):
  config = make_config(data_dir, **{'history.start_epoch': 0, 'train.grad_accum_steps': 2})
  ex = train.create_experiment(config, devices=jax.devices()[:2])
  batch = next(ex.train_batches())
  state, _ = ex.train_step(ex.state, batch, 0)
  count = np.asarray(state.history['count'])
  assert count.sum() == 16 and np.all(count[batch['index']] == 1)


def test_micro_batches_must_split_over_the_devices(data_dir):
  config = make_config(data_dir, **{'train.grad_accum_steps': 3})
  with pytest.raises(ValueError, match=r'train.batch_size \(16\) must split into'):
    train.create_experiment(config, devices=jax.devices()[:1])
  config.train.grad_accum_steps = 8
  problems = schema.validate(config, num_devices=4)
  assert problems == [
    'config.train.grad_accum_steps: config.train.batch_size (16) must split into 8 '
    'micro-batches over 4 device(s) (a multiple of 32), got 8'
  ]
