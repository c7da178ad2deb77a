"""Tests of the training system on the tiny synthetic dataset (configs/test.py)."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxattr import checkpoints, evaluators, inference, losses, metrics, train
from jaxattr.data import input_pipeline
from jaxattr.models import model as model_lib
from jaxattr.run import logs
from tests.conftest import FLOAT64, make_config, run_steps, tree_allclose


@pytest.mark.slow
def test_main_writes_everything(trained_run):
  workdir, proc = trained_run
  for name in ('config.json', 'metrics.jsonl', 'results.json', 'results.md'):
    assert (workdir / name).is_file(), name
  assert list(workdir.glob('events.out.tfevents.*'))
  assert (workdir / 'checkpoints').is_dir() and (workdir / 'best').is_dir()
  results = json.loads((workdir / 'results.json').read_text())
  assert results['steps'] == 24
  assert results['test']['num_examples'] == 64
  assert len(results['test']['per_attribute']) == 14
  assert 'pointing_game' in results['test']
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert any('train/loss' in r for r in rows) and any('val/map_voc' in r for r in rows)
  config = json.loads((workdir / 'config.json').read_text())
  assert config['model']['backbone'] == 'resnet18'
  # Orbax's INFO chatter (about 20 lines per save) is filtered; our own lines stay.
  assert 'new best validation map' in proc.stderr
  # The console shows the run: TFDS's lines of every evaluation go to the log file.
  log = (workdir / 'log.txt').read_text()
  for chatter in ('Constructing tf.data.Dataset', 'Creating a tf.data.Dataset'):
    assert chatter not in proc.stderr and chatter in log, chatter
  assert 'new best validation map' in log
  # The final lines give the pointing game beside its chance level, as results.json.
  game = results['test']['pointing_game']['mask_4']
  assert f'Test pointing game mask_4: {100 * game["overall"]:.1f} % (chance' in proc.stderr
  assert 0 < game['chance'] < 1
  # Orbax's INFO lines are gone (its warnings stay: under load it warns that a save
  # waited for the previous one, which is not chatter).
  info_lines = [line for line in proc.stderr.splitlines() if line.startswith('I')]
  for orbax_file in ('checkpoint_manager.py', 'async_checkpointer.py', 'event_tracking.py'):
    assert not [line for line in info_lines if f'{orbax_file}:' in line], orbax_file


def test_library_info_filter():
  def record(path, level):
    return logging.LogRecord('absl', level, path, 1, 'message', None, None)

  keep = logs.DropLibraryInfo(('orbax',)).filter
  orbax = os.path.join('', 'site-packages', 'orbax', 'checkpoint', 'checkpoint_manager.py')
  assert not keep(record(orbax, logging.INFO))
  assert keep(record(orbax, logging.WARNING)) and keep(record(orbax, logging.ERROR))
  assert keep(record(os.path.join('', 'jaxattr', 'train.py'), logging.INFO))
  assert keep(record(os.path.join('', 'site-packages', 'orbaxlike', 'x.py'), logging.INFO))


@pytest.mark.parametrize(
  'overrides',
  [
    {},
    {
      'model.attention.levels': (),
      'loss.primary': 'bce',
      'loss.attention': 'bce',
    },
  ],
  ids=['full_method', 'primary_only_bce'],
)
def test_loss_decreases(data_dir, overrides):
  config = make_config(
    data_dir,
    **{'train.freeze_backbone_epochs': 0, 'history.start_epoch': 0, **overrides},
  )
  ex = train.create_experiment(config, devices=jax.devices()[:1])
  _, losses_ = run_steps(ex, 30)
  assert np.all(np.isfinite(losses_))
  assert np.mean(losses_[-5:]) < 0.8 * np.mean(losses_[:5]), losses_


@pytest.mark.slow
def test_multi_device_equals_single_device(data_dir, float64):
  """4 devices and 1 device: same losses, parameters, BN statistics and history."""
  # In float64: the devices sum the batch in another order, and the 1e-5 bound holds
  # on any CPU because float64 rounding leaves it a margin of 1e6 (conftest.py, FLOAT64).
  # The paper's lr, the frozen stage (8 steps) and the first end-to-end step.
  config = make_config(
    data_dir, **{'history.start_epoch': 0, 'optimizer.learning_rate': 1e-3, **FLOAT64}
  )
  n = 9
  one = train.create_experiment(config, devices=jax.devices()[:1])
  four = train.create_experiment(config, devices=jax.devices()[:4])
  assert four.mesh.size == 4
  state1, losses1 = run_steps(one, n)
  state4, losses4 = run_steps(four, n)
  np.testing.assert_allclose(losses4, losses1, rtol=1e-5)
  tree_allclose(state4.params, state1.params)
  tree_allclose(state4.batch_stats, state1.batch_stats)
  tree_allclose(state4.history, state1.history)
  assert int(state4.history['count'].sum()) == n * config.train.batch_size


def test_frozen_stage_freezes_backbone_and_statistics(data_dir):
  config = make_config(data_dir)
  ex = train.create_experiment(config, devices=jax.devices()[:1])
  assert ex.freeze_steps == 8
  init = jax.device_get(ex.state)
  frozen_state, _ = run_steps(ex, ex.freeze_steps)
  frozen = jax.device_get(frozen_state)
  for part in ('params', 'batch_stats'):
    for a, b in zip(
      jax.tree.leaves(getattr(init, part)['backbone']),
      jax.tree.leaves(getattr(frozen, part)['backbone']),
      strict=True,
    ):
      np.testing.assert_array_equal(a, b)
  # The heads (parameters and their BN statistics) did train.
  assert not np.allclose(init.params['classifier']['kernel'], frozen.params['classifier']['kernel'])
  head_stats = [k for k in init.batch_stats if k != 'backbone']
  assert head_stats
  assert any(
    not np.allclose(a, b)
    for k in head_stats
    for a, b in zip(
      jax.tree.leaves(init.batch_stats[k]), jax.tree.leaves(frozen.batch_stats[k]), strict=True
    )
  )
  # End to end afterwards: the backbone and its statistics change.
  after, _ = run_steps(ex, 2, state=frozen_state, start=ex.freeze_steps)
  after = jax.device_get(after)
  conv = frozen.params['backbone']['conv1']['kernel']
  assert not np.allclose(conv, after.params['backbone']['conv1']['kernel'])
  bn = frozen.batch_stats['backbone']['bn1']['mean']
  assert not np.allclose(bn, after.batch_stats['backbone']['bn1']['mean'])


def test_history_burn_in_and_attention_loss(data_dir):
  """No history during burn-in; after two epochs of it, L_a differs from L_b."""
  config = make_config(data_dir, **{'history.start_epoch': 1, 'train.freeze_backbone_epochs': 0})
  ex = train.create_experiment(config, devices=jax.devices()[:1])
  spe = ex.steps_per_epoch
  state, _ = run_steps(ex, spe)
  assert int(jax.device_get(state.history['count']).sum()) == 0
  assert float(jnp.abs(state.history['probs']).sum()) == 0.0
  state, _ = run_steps(ex, 2 * spe, state=state, start=spe)
  count = np.asarray(jax.device_get(state.history['count']))
  seen = count > 0
  # Each epoch writes spe * batch examples once each.
  assert count.sum() == 2 * spe * config.train.batch_size
  assert count.max() <= 2

  # A batch of examples with two entries: std > 0, so L_a != L_b on the same logits.
  batch = next(ex.train_batches(start_step=3 * spe))
  idx = batch['index']
  assert seen[idx].any()
  std = train.history_std(state.history, jnp.asarray(idx), 2)
  assert float(jnp.max(std)) > 0
  images = inference.normalize(jnp.asarray(batch['image']), config.data)
  out = ex.model.apply(
    {'params': state.params, 'batch_stats': state.batch_stats}, images, train=False
  )
  targets, mask = losses.targets_and_mask(jnp.asarray(batch['labels']))
  l_b = losses.reduce(losses.bce(out['attention_logits'][0], targets), mask)
  l_a = losses.reduce(
    losses.variance_weighted_bce(out['attention_logits'][0], targets, std[0]), mask
  )
  assert float(l_a) > float(l_b)


@pytest.mark.slow  # Three training runs with their evaluations (~2 min).
def test_resume_equals_uninterrupted(data_dir, tmp_path):
  """N steps straight == N/2 steps, stop, resume, N/2 more (mid-epoch cut)."""
  n = 20  # Two evaluations (steps 8 and 16) and a plateau update in between.
  straight = make_config(data_dir, **{'train.max_steps': n})
  train.train_and_evaluate(straight, str(tmp_path / 'a'), devices=jax.devices()[:1])
  first = make_config(data_dir, **{'train.max_steps': n // 2})
  train.train_and_evaluate(first, str(tmp_path / 'b'), devices=jax.devices()[:1])
  train.train_and_evaluate(straight, str(tmp_path / 'b'), devices=jax.devices()[:1])

  ex = train.create_experiment(straight, devices=jax.devices()[:1])
  a = checkpoints.Checkpointer(tmp_path / 'a').restore(ex.state)
  b = checkpoints.Checkpointer(tmp_path / 'b').restore(ex.state)
  assert int(a.step) == int(b.step) == n
  # Exact: the resumed run executes the same compiled steps on the same batches from the
  # restored (bit-for-bit) state, so nothing differs on any CPU.
  for part in ('params', 'batch_stats', 'history', 'opt_state', 'plateau'):
    jax.tree.map(np.testing.assert_array_equal, getattr(b, part), getattr(a, part))

  def val_rows(path):
    rows = [json.loads(x) for x in (path / 'metrics.jsonl').read_text().splitlines()]
    return {r['step']: r['val/map_voc'] for r in rows if 'val/map_voc' in r}

  va, vb = val_rows(tmp_path / 'a'), val_rows(tmp_path / 'b')
  assert sorted(va) == [8, 16]
  for step in (8, 16):
    assert vb[step] == pytest.approx(va[step], rel=1e-5)
  ra = json.loads((tmp_path / 'a' / 'results.json').read_text())
  rb = json.loads((tmp_path / 'b' / 'results.json').read_text())
  assert rb['test']['map_voc'] == pytest.approx(ra['test']['map_voc'], rel=1e-5)


def test_eval_metrics_are_exact(data_dir):
  """Eval over padded batches == metrics of every example predicted one by one."""
  config = make_config(data_dir)
  ex = train.create_experiment(config, devices=jax.devices()[:4])
  state, _ = run_steps(ex, 3)
  split = 'validation'
  n = ex.info.split_sizes[split]
  assert n % config.eval.batch_size != 0
  result, gathered = ex.evaluate(state, split)
  assert sorted(gathered['index']) == list(range(n))

  # By hand: every example of the split, one at a time, straight from TFDS.
  ds = ex.builder.as_dataset(split=split, shuffle_files=False)
  probs, labels = np.zeros((n, 14), np.float32), np.zeros((n, 14), np.int8)
  params = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  # One compiled program for one example (op-by-op, the model compiled ~120 programs).
  apply = jax.jit(lambda v, x: jax.nn.sigmoid(ex.model.apply(v, x, train=False)['logits'][0]))
  for example in tfds.as_numpy(ds):
    image = input_pipeline.eval_preprocess(example['image'], config.data).numpy()
    x = inference.normalize(jnp.asarray(image)[None], config.data)
    probs[example['index']] = np.asarray(apply(params, x))
    labels[example['index']] = example['labels']
  order = np.argsort(gathered['index'])
  np.testing.assert_allclose(gathered['probs'][order], probs, atol=2e-5)
  np.testing.assert_array_equal(gathered['labels'][order], labels)
  expected = metrics.compute_metrics(probs, labels, ex.info.attribute_names)
  for key in ('map_voc', 'map_sklearn', 'ma', 'acc', 'prec', 'rec', 'f1'):
    assert result[key] == pytest.approx(expected[key], abs=1e-4), key


def test_primary_only_state_checkpoints(data_dir, tmp_path):
  """Without attention there is no history; the state still saves and restores."""
  config = make_config(data_dir, **{'model.attention.levels': (), 'loss.attention': 'bce'})
  ex = train.create_experiment(config, devices=jax.devices()[:1])
  state, _ = run_steps(ex, 2)
  ckpt = checkpoints.Checkpointer(tmp_path)
  ckpt.save(2, state)
  ckpt.wait()
  restored = checkpoints.Checkpointer(tmp_path).restore(state)
  assert restored.history == {}
  tree_allclose(restored.params, state.params)


def test_init_compiled_at_o1_gives_the_default_compiles_values():
  """The state's init is compiled at LLVM -O1 on CPU (4x faster to compile): -O2's values."""
  config = make_config('unused')
  model = model_lib.create_model(config.model, 14)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state = train.create_train_state(config, model, 128, 14, sharding)
  x = jnp.zeros((1, config.data.image_size, config.data.image_size, 3))
  # XLA's default level (-O2), passed explicitly: conftest.py sets -O0 for the tests.
  init = jax.jit(lambda: model.init(jax.random.key(config.seed), x, train=False)).lower()
  default = init.compile(compiler_options={'xla_backend_optimization_level': 2})()
  assert len(jax.tree.leaves(default['params'])) > 100

  # Every initial value is an elementwise function of its own random bits (threefry's
  # integer hash, exact at any level, then about ten float32 ops: bits -> uniform -> an
  # affine map -> erfinv, whose slope is below 7 inside the 2-sigma truncation -> a
  # scale), with no sums over elements. Two compilations may contract or reorder those
  # ops differently (LLVM's choices depend on the level and the CPU), each op then
  # rounding by up to an ulp: under 32 ulps of the tensor's largest value.
  def close(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    ulp = np.finfo(np.float32).eps * float(np.max(np.abs(want), initial=0.0))
    np.testing.assert_allclose(got, want, rtol=0, atol=32 * ulp)

  jax.tree.map(close, state.params, default['params'])
  jax.tree.map(close, state.batch_stats, default['batch_stats'])


@pytest.mark.slow
def test_peers_protocol_reports_the_test_curve_and_selects_the_same_checkpoint(data_dir, tmp_path):
  """The test split every epoch is reported beside, never instead of, validation selection."""
  n = 16  # Two epochs: evaluations at steps 8 and 16.
  plain = make_config(data_dir, **{'train.max_steps': n})
  peers = evaluators.add_peers_protocol(make_config(data_dir, **{'train.max_steps': n}))
  a = train.train_and_evaluate(plain, str(tmp_path / 'a'), devices=jax.devices()[:1])
  b = train.train_and_evaluate(peers, str(tmp_path / 'b'), devices=jax.devices()[:1])
  assert b['best_step'] == a['best_step']
  assert b['test']['map_voc'] == a['test']['map_voc']
  assert b['validation']['map_voc'] == a['validation']['map_voc']

  rows = [json.loads(x) for x in (tmp_path / 'b' / 'metrics.jsonl').read_text().splitlines()]
  key = 'test_every_epoch/map_voc'
  logged = {r['step']: r[key] for r in rows if key in r}
  assert sorted(logged) == [8, 16]
  curve = b['test_every_epoch']
  assert [e['step'] for e in curve['per_epoch']] == [8, 16]
  assert curve['best']['map_voc'] == max(logged.values())
  # The epoch-8 row is the test metric of the state at step 8; at the selected step it
  # equals the final test of the selected checkpoint (a second path to the same number).
  at_best = next(e for e in curve['per_epoch'] if e['step'] == b['best_step'])
  assert at_best['map_voc'] == pytest.approx(b['test']['map_voc'], abs=1e-6)
  saved = json.loads((tmp_path / 'b' / 'results.json').read_text())
  label = "best epoch on test (the peers' protocol; optimistic)"
  assert saved['test_every_epoch']['label'] == label
  assert label in (tmp_path / 'b' / 'results.md').read_text()
  assert "peers' protocol" not in (tmp_path / 'a' / 'results.md').read_text()
