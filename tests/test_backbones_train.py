"""The attribute model trains with the new backbone families (ViT, Swin, ConvNeXt).

Each family at CPU scale (configs/test.py: the tiny synthetic dataset at 64x64, the
family's torchvision architecture at a small `width` and `depth`) goes through the real training
step: the loss falls over 30 steps, 4 devices equal 1 device as for the ResNets
(tests/test_train.py), and the backbone's learning-rate scale reaches the backbone
only. One ViT run of `python -m jaxattr.main` is then evaluated, exported and
predicted from with the command-line tools, as tests/test_tools.py does for ResNet-18.
"""

import json

import jax
import numpy as np
import pytest

from jaxattr import export, pretrained, train
from jaxattr.data import synthetic
from tests.conftest import FLOAT64, make_config, run_steps, run_tool, tree_allclose
from tests.test_tools import assert_close_metrics, images  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow  # Trains several backbones and launches the tools.

# family -> (registered architecture, width, depth): k1 / k2 of 4x4 / 4x4 (ViT, D = 48),
# 4x4 / 2x2 (Swin, C = 48 / 96; ConvNeXt, C = 24 / 48) at 64x64. Depth 1/4 keeps 3 of
# ViT's 12 blocks (k1 after the second), a plain and a shifted block per Swin stage
# (2, 2, 2, 2), and 1, 1, 2, 1 ConvNeXt blocks; CLIP B/16 as ViT (D = 48, 3 blocks): the
# same code paths, at half the cold compile time of the full depths (what these tests
# spend most of their time on).
FAMILIES = {
  'vit': ('vit_b_16', 1 / 16, 1 / 4),
  'swin': ('swin_t', 1 / 8, 1 / 4),
  'convnext': ('convnext_tiny', 1 / 16, 1 / 4),
  'clip': ('clip_vit_b_16', 1 / 16, 1 / 4),
}


def family_config(data_dir, family, **overrides):
  backbone, width, depth = FAMILIES[family]
  return make_config(
    data_dir,
    **{'model.backbone': backbone, 'model.width': width, 'model.depth': depth, **overrides},
  )


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_loss_decreases(data_dir, family):
  config = family_config(
    data_dir,
    family,
    **{
      'train.freeze_backbone_epochs': 0,
      'history.start_epoch': 0,
      # Transformers from scratch: AdamW (configs/wider.py's recipe) at a CPU-test rate.
      'optimizer.name': 'adamw',
      'optimizer.learning_rate': 3e-3,
      'optimizer.weight_decay': 0.05,
    },
  )
  ex = train.create_experiment(config, devices=jax.devices()[:1])
  _, losses = run_steps(ex, 30)
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_multi_device_equals_single_device(data_dir, float64, family):
  """As tests/test_train.py: the frozen stage (8 steps) and one end-to-end step, in float64.

  float64 leaves the 1e-5 bound a margin of 1e6 over rounding amplified by the steps
  (conftest.py, FLOAT64), so the different summation orders of 1 and 4 devices cannot
  reach it on any CPU.
  """
  config = family_config(
    data_dir, family, **{'history.start_epoch': 0, 'optimizer.learning_rate': 1e-3, **FLOAT64}
  )
  one = train.create_experiment(config, devices=jax.devices()[:1])
  four = train.create_experiment(config, devices=jax.devices()[:4])
  assert four.mesh.size == 4
  state1, losses1 = run_steps(one, 9)
  state4, losses4 = run_steps(four, 9)
  np.testing.assert_allclose(losses4, losses1, rtol=1e-5)
  tree_allclose(state4.params, state1.params)
  tree_allclose(state4.batch_stats, state1.batch_stats)
  tree_allclose(state4.history, state1.history)


def test_backbone_learning_rate_scale_reaches_the_backbone_only(data_dir):
  """`optimizer.backbone_lr_scale = 0`: the end-to-end step moves the heads, not the backbone."""
  config = family_config(
    data_dir, 'vit', **{'train.freeze_backbone_epochs': 0, 'optimizer.backbone_lr_scale': 0.0}
  )
  ex = train.create_experiment(config, devices=jax.devices()[:1])
  before = jax.device_get(ex.state.params)
  state, _ = run_steps(ex, 1)
  after = jax.device_get(state.params)
  jax.tree.map(np.testing.assert_array_equal, after['backbone'], before['backbone'])
  assert not np.array_equal(after['classifier']['kernel'], before['classifier']['kernel'])

  config.optimizer.backbone_lr_scale = 1.0
  ex = train.create_experiment(config, devices=jax.devices()[:1])
  state, _ = run_steps(ex, 1)
  moved = jax.device_get(state.params)['backbone']['encoder']['ln']['scale']
  assert not np.array_equal(moved, before['backbone']['encoder']['ln']['scale'])


def test_training_starts_from_a_converted_vit(data_dir, tmp_path):
  """A torchvision-layout ViT file -> convert -> the run's backbone (no batch_stats)."""
  import torch

  from jaxattr import convert
  from tests import torch_reference

  torch.manual_seed(4)
  reference = torch_reference.create_backbone('vit_b_16', FAMILIES['vit'][1])  # Full depth.
  source = tmp_path / 'vit_b_16-tiny.pth'
  torch.save(reference.state_dict(), source)
  convert.convert_file('vit_b_16', source, tmp_path / 'pretrained', width=FAMILIES['vit'][1])
  config = family_config(
    data_dir, 'vit', **{'model.pretrained': str(tmp_path / 'pretrained'), 'model.depth': 1.0}
  )
  ex = train.create_experiment(config, devices=jax.devices()[:1])
  assert 'backbone' not in ex.state.batch_stats
  state = pretrained.load_into(ex.state, config.model.pretrained)
  backbone = jax.device_get(state.params['backbone'])
  sd = reference.state_dict()
  np.testing.assert_array_equal(backbone['class_token'], sd['class_token'].numpy())
  np.testing.assert_array_equal(
    backbone['encoder']['layers']['encoder_layer_11']['mlp']['3']['kernel'],
    sd['encoder.layers.encoder_layer_11.mlp.3.weight'].numpy().T,
  )


# --- The tools on a ViT run and a CLIP run ------------------------------------------------


@pytest.fixture(scope='module', params=['vit', 'clip'])
def vit_run(request, tmp_path_factory, data_dir):
  """One `python -m jaxattr.main` run of configs/test.py with the tiny ViT or CLIP tower."""
  workdir = tmp_path_factory.mktemp(f'{request.param}_tools') / 'run'
  backbone, width, depth = FAMILIES[request.param]
  proc = run_tool(
    'jaxattr.main',
    '--config=configs/test.py',
    f'--workdir={workdir}',
    f'--config.data.data_dir={data_dir}',
    f'--config.model.backbone={backbone}',
    f'--config.model.width={width}',
    f'--config.model.depth={depth}',
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_evaluate_export_and_predict_a_vit_run(vit_run, images, tmp_path):  # noqa: F811
  workdir = vit_run
  config = json.loads((workdir / 'config.json').read_text())
  assert config['model']['backbone'] in ('vit_b_16', 'clip_vit_b_16')

  proc = run_tool('jaxattr.evaluate', f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((workdir / 'eval_test_best.json').read_text())
  results = json.loads((workdir / 'results.json').read_text())
  assert report['step'] == results['best_step']
  assert_close_metrics(report['metrics'], results['test'])

  model_file = tmp_path / 'vit.bin'
  proc = run_tool('jaxattr.export', f'--workdir={workdir}', f'--output={model_file}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  header, exported, leaves = export.read(model_file)
  assert header['image_size'] == 64

  paths = list(map(str, images['small']))
  from_workdir = run_tool(
    'jaxattr.predict', f'--workdir={workdir}', '--json', '--notuned_thresholds', *paths
  )
  from_export = run_tool('jaxattr.predict', f'--exported={model_file}', '--json', *paths)
  for proc in (from_workdir, from_export):
    assert proc.returncode == 0, proc.stderr[-3000:]

  def probs(stdout):
    records = [json.loads(line) for line in stdout.splitlines()]
    return np.array([[r['probabilities'][n] for n in synthetic.ATTRIBUTES] for r in records])

  expected = probs(from_workdir.stdout)
  assert expected.shape == (3, len(synthetic.ATTRIBUTES))
  np.testing.assert_allclose(probs(from_export.stdout), expected, atol=1e-5)
  outputs = exported.call(leaves, images['arrays'])
  np.testing.assert_allclose(outputs['probs'], expected, atol=1e-5)
  assert [m.shape[1:3] for m in outputs['masks']] == [(4, 4), (4, 4)]
