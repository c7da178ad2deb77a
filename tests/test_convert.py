"""Tests of jaxattr.convert (torchvision weights -> Flax) and tests/torch_reference.py.

The second implementation is PyTorch: `torch_reference` holds plain `torch.nn`
models with torchvision's module names (parameter counts checked against
torchvision's published ones). Random weights, with BatchNorm affine parameters and
running statistics randomised so that a swapped or forgotten tensor shows, go
through the converter into the Flax backbone and must reproduce the torch outputs:
exactly (float64 on both sides) at 224x224 and at a non-square 256x128, and in
float32 as closely as torch float32 itself is to the exact result. Layout and
naming are also checked element by element by hand, and the training loop is
checked to start from the converted weights.
"""

import copy
import hashlib
import json
import subprocess
import sys
import types
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from jaxattr import convert, pretrained, schema, train
from jaxattr.models import create_backbone
from jaxattr.models import densenet as densenet_lib
from jaxattr.models import model as model_lib
from tests import torch_reference

REPO = Path(__file__).resolve().parents[1]
TINY_WIDTH = 0.0625  # configs/test.py

torch.set_num_threads(2)


def randomise(model: torch.nn.Module, seed: int, calibration_shape=(2, 3, 96, 96)) -> None:
  """Random BN affine params and realistic, perturbed running statistics; eval mode.

  Running statistics are set from one train-mode pass (momentum 1 copies the batch
  statistics), so activations keep a sane scale through deep nets, then perturbed so
  that they differ from any batch's.
  """
  g = torch.Generator().manual_seed(seed)
  norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for m in norms:
      m.weight.uniform_(0.5, 1.5, generator=g)
      m.bias.normal_(0.0, 0.2, generator=g)
      m.momentum = 1.0
    for m in model.modules():
      if isinstance(m, torch.nn.Linear | torch.nn.Conv2d) and m.bias is not None:
        m.bias.normal_(0.0, 0.1, generator=g)
    model.train()
    model(torch.randn(*calibration_shape, generator=g))
    for m in norms:
      m.momentum = 0.1
      m.running_mean.add_(
        0.1 * m.running_var.sqrt() * torch.randn(m.running_mean.shape, generator=g)
      )
      m.running_var.mul_(torch.empty(m.running_var.shape).uniform_(0.8, 1.25, generator=g))
  model.eval()


def nhwc(t: torch.Tensor) -> np.ndarray:
  a = t.detach().numpy()
  return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def numpy_state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope='module')
def tiny_resnet() -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
  """resnet18 at width 1/16 (configs/test.py), random weights, with the ImageNet fc."""
  torch.manual_seed(1)
  model = torch_reference.create_backbone('resnet18', TINY_WIDTH)
  randomise(model, 1, (2, 3, 64, 48))
  return model, numpy_state_dict(model)


# --- Parity with the torch reference at full size ------------------------------------


@pytest.fixture(scope='module', params=['resnet50', 'densenet121'])
def full_size(request):
  """A full-size reference with random weights and its conversion (with the head)."""
  arch = request.param
  torch.manual_seed(0)
  model = torch_reference.create_backbone(arch)
  randomise(model, 0)
  variables = convert.convert_state_dict(arch, model.state_dict(), include_head=True)
  return arch, model, variables


def test_torch_reference_matches_torchvision_counts():
  # torchvision's published parameter counts (weights docs, `num_params`).
  for arch, count in [('resnet50', 25_557_032), ('densenet121', 7_978_856)]:
    model = torch_reference.create_backbone(arch)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize('size', [(224, 224), (256, 128)], ids=['224x224', '256x128'])
def test_parity_float64_exact(full_size, size):
  """Same weights, float64 in both frameworks: exact; the non-square size checks padding."""
  arch, model, variables = full_size
  x = np.random.default_rng(5).normal(size=(1, 3, *size))
  with torch.no_grad():
    ref = copy.deepcopy(model).double()(torch.from_numpy(x))
  with jax.enable_x64(True):
    flax_model = create_backbone(arch, num_classes=1000, dtype=jnp.float64, param_dtype=jnp.float64)
    v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    out = jax.jit(lambda v, x: flax_model.apply(v, x, train=False))(
      v64, jnp.asarray(x.transpose(0, 2, 3, 1))
    )
    for key in ('k1', 'k2'):
      assert out[key].shape == nhwc(ref[key]).shape, key
      assert out[key].dtype == jnp.float64
      assert max_diff(out[key], nhwc(ref[key])) < 1e-9, (arch, key)
    # The Flax backbone returns float32 logits: float32 rounding of O(1) values.
    assert max_diff(out['logits'], ref['logits'].numpy()) < 1e-5, arch


def test_parity_float32_224(full_size):
  """float32 as used, 224x224: logits within 1e-4; taps as close to exact as torch's own.

  The taps of these random deep nets reach ~10-20, and torch float32 itself is up to
  ~1e-3 away from its float64 result there; the bar for Flax float32 is that same
  rounding error (the float64 test shows the mapping itself is exact).
  """
  arch, model, variables = full_size
  flax_model = create_backbone(arch, num_classes=1000)
  x = np.random.default_rng(7).normal(size=(1, 3, 224, 224)).astype(np.float32)
  with torch.no_grad():
    ref32 = model(torch.from_numpy(x))
    ref64 = copy.deepcopy(model).double()(torch.from_numpy(x).double())
  out = jax.jit(lambda v, x: flax_model.apply(v, x, train=False))(
    variables, jnp.asarray(x.transpose(0, 2, 3, 1))
  )
  assert out['k2'].shape == nhwc(ref32['k2']).shape == (1, 7, 7, model.num_features)
  assert max_diff(out['logits'], ref32['logits'].numpy()) < 1e-4
  for key in ('k1', 'k2', 'logits'):
    exact = nhwc(ref64[key])
    torch_error = max_diff(nhwc(ref32[key]), exact)
    flax_error = max_diff(out[key], exact)
    # A mapping error would put Flax off by errors of order one.
    assert flax_error <= 3 * torch_error + 1e-6, (arch, key, flax_error, torch_error)


# --- Layout, naming and refusals ---------------------------------------------------


def test_layouts_and_names_by_hand(tiny_resnet):
  _, sd = tiny_resnet
  v = convert.convert_state_dict('resnet18', sd, include_head=True, width=TINY_WIDTH)
  params, stats = v['params'], v['batch_stats']
  w = sd['layer2.0.conv1.weight']  # OIHW [8, 4, 3, 3]
  kernel = params['layer2']['0']['conv1']['kernel']  # HWIO
  assert kernel.shape == (3, 3, 4, 8)
  for o, i, h, x in [(0, 0, 0, 0), (7, 3, 2, 1), (5, 1, 0, 2)]:
    assert kernel[h, x, i, o] == w[o, i, h, x]
  down = params['layer2']['0']['downsample']['0']['kernel']
  assert down[0, 0, 3, 6] == sd['layer2.0.downsample.0.weight'][6, 3, 0, 0]
  assert params['fc']['kernel'].shape == (32, 1000)
  assert params['fc']['kernel'][5, 999] == sd['fc.weight'][999, 5]
  np.testing.assert_array_equal(params['fc']['bias'], sd['fc.bias'])
  bn = 'layer2.0.downsample.1'
  np.testing.assert_array_equal(
    params['layer2']['0']['downsample']['1']['scale'], sd[bn + '.weight']
  )
  np.testing.assert_array_equal(params['layer2']['0']['downsample']['1']['bias'], sd[bn + '.bias'])
  np.testing.assert_array_equal(
    stats['layer2']['0']['downsample']['1']['mean'], sd[bn + '.running_mean']
  )
  np.testing.assert_array_equal(
    stats['layer2']['0']['downsample']['1']['var'], sd[bn + '.running_var']
  )
  # Every torch tensor except the counters lands somewhere, and nothing else exists.
  flat = traverse_util.flatten_dict(params) | traverse_util.flatten_dict(stats)
  assert len(flat) == sum(not k.endswith('num_batches_tracked') for k in sd)
  assert all(a.dtype == np.float32 for a in flat.values())
  # Without the head, the fc is left out even though the file has it.
  assert 'fc' not in convert.convert_state_dict('resnet18', sd, width=TINY_WIDTH)['params']


def _refusal(sd, arch='resnet18', **kwargs) -> str:
  with pytest.raises(ValueError) as info:
    convert.convert_state_dict(arch, sd, width=TINY_WIDTH, **kwargs)
  return str(info.value)


def test_missing_tensor_is_named(tiny_resnet):
  sd = dict(tiny_resnet[1])
  del sd['layer2.0.downsample.1.running_var']
  message = _refusal(sd)
  assert '1 missing tensors' in message and 'layer2.0.downsample.1.running_var' in message


def test_unexpected_tensor_is_named(tiny_resnet):
  sd = dict(tiny_resnet[1])
  sd['layer1.0.conv9.weight'] = sd.pop('layer1.0.conv1.weight')
  message = _refusal(sd)
  assert 'unexpected' in message and 'layer1.0.conv9.weight' in message
  assert 'missing' in message and 'layer1.0.conv1.weight' in message
  # A BatchNorm counter of a BatchNorm that does not exist is unexpected too.
  sd = dict(tiny_resnet[1], **{'layer1.0.bn7.num_batches_tracked': np.array(3)})
  assert 'layer1.0.bn7.num_batches_tracked' in _refusal(sd)


def test_misshaped_tensor_is_named(tiny_resnet):
  sd = dict(tiny_resnet[1])
  sd['layer3.1.bn2.weight'] = np.ones(7, np.float32)
  message = _refusal(sd)
  assert 'layer3.1.bn2.weight' in message and 'wrong shape' in message
  assert 'missing' not in message  # Reported once, as mis-shaped.
  # A kernel given in Flax layout (HWIO) instead of torch's is refused, not transposed.
  sd = dict(tiny_resnet[1])
  sd['conv1.weight'] = sd['conv1.weight'].transpose(2, 3, 1, 0)
  assert 'conv1.weight: (7, 7, 3, 4) in the file, (4, 3, 7, 7) expected' in _refusal(sd)


def test_wrong_arch_and_head_refused(tiny_resnet):
  _, sd = tiny_resnet
  message = _refusal(sd, arch='resnet34')  # resnet34 has more blocks per stage.
  assert 'layer1.2.conv1.weight' in message
  without_fc = {k: v for k, v in sd.items() if not k.startswith('fc.')}
  assert 'fc.weight' in _refusal(without_fc, include_head=True)
  with pytest.raises(ValueError, match='Unknown arch'):
    convert.convert_state_dict('vgg16', sd)


def test_legacy_densenet_keys():
  renamed = densenet_lib.rename_legacy_keys(
    {
      'features.denseblock1.denselayer1.norm.1.weight': 1,
      'features.denseblock4.denselayer16.conv.2.weight': 2,
      'features.denseblock2.denselayer3.norm.2.running_var': 3,
      'features.transition1.norm.weight': 4,  # Not in a dense layer: unchanged.
    }
  )
  assert renamed == {
    'features.denseblock1.denselayer1.norm1.weight': 1,
    'features.denseblock4.denselayer16.conv2.weight': 2,
    'features.denseblock2.denselayer3.norm2.running_var': 3,
    'features.transition1.norm.weight': 4,
  }
  torch.manual_seed(2)
  model = torch_reference.create_backbone('densenet121', TINY_WIDTH)
  sd = numpy_state_dict(model)
  # The old files' names, written out independently of the converter's regex.
  legacy = {}
  for key, value in sd.items():
    if '.denselayer' in key:
      for name in ('norm1', 'conv1', 'norm2', 'conv2'):
        key = key.replace(f'.{name}.', f'.{name[:-1]}.{name[-1]}.')
    legacy[key] = value
  assert 'features.denseblock1.denselayer1.norm.1.weight' in legacy
  assert 'features.denseblock1.denselayer1.conv.2.weight' in legacy
  expected = convert.convert_state_dict('densenet121', sd, width=TINY_WIDTH)
  got = convert.convert_state_dict('densenet121', legacy, width=TINY_WIDTH)
  jax.tree.map(np.testing.assert_array_equal, got, expected)


# --- Files and the command line -------------------------------------------------


@pytest.mark.slow
def test_npz_command_line_without_torch(tiny_resnet, tmp_path):
  """`python -m jaxattr.convert` on an .npz, in a process where torch cannot import."""
  _, sd = tiny_resnet
  source = tmp_path / 'resnet18-tiny.npz'
  np.savez(source, **sd)
  out = tmp_path / 'converted'
  argv = [
    'jaxattr.convert',
    '--arch=resnet18',
    f'--input={source}',
    f'--output={out}',
    f'--width={TINY_WIDTH}',
    '--include_head',
  ]
  script = (
    'import runpy, sys\n'
    "sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"
    f'sys.argv = {argv!r}\n'
    "runpy.run_module('jaxattr.convert', run_name='__main__', alter_sys=True)\n"
  )
  proc = subprocess.run(
    [sys.executable, '-c', script], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-3000:]

  meta = json.loads((out / 'meta.json').read_text())
  assert meta['arch'] == 'resnet18' and meta['width'] == TINY_WIDTH
  assert meta['source'] == 'resnet18-tiny.npz' and meta['include_head'] is True
  assert meta['sha256'] == hashlib.sha256(source.read_bytes()).hexdigest()
  assert 'sha256_matches_name' not in meta  # 'tiny' is no hash.
  # The file keeps the head on request; load_backbone never returns it.
  raw = flax.serialization.msgpack_restore((out / 'backbone.msgpack').read_bytes())
  assert 'fc' in raw['params']
  loaded = convert.load_backbone(out)
  assert set(loaded) == {'params', 'batch_stats'} and 'fc' not in loaded['params']
  expected = convert.convert_state_dict('resnet18', sd, width=TINY_WIDTH)
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)


def test_command_line_refusal_names_the_tensor(tiny_resnet, tmp_path):
  sd = dict(tiny_resnet[1])
  del sd['layer4.1.conv2.weight']
  source = tmp_path / 'broken.npz'
  np.savez(source, **sd)
  values = {
    'arch': 'resnet18',
    'input': str(source),
    'output': str(tmp_path / 'out'),
    'include_head': False,
    'width': TINY_WIDTH,
  }
  holders = {name: types.SimpleNamespace(value=value) for name, value in values.items()}
  with pytest.raises(SystemExit, match=r'missing tensors:\n  layer4\.1\.conv2\.weight'):
    convert.main(['jaxattr.convert'], holders)
  assert not (tmp_path / 'out' / 'backbone.msgpack').exists()


def test_pth_via_torch(tiny_resnet, tmp_path):
  model, sd = tiny_resnet
  plain, wrapped = tmp_path / 'plain.pth', tmp_path / 'wrapped.pt'
  torch.save(model.state_dict(), plain)
  torch.save({'state_dict': model.state_dict(), 'epoch': 3}, wrapped)
  for path in (plain, wrapped):
    loaded = convert.load_state_dict(path)
    assert list(loaded) == list(sd)
    for key, value in sd.items():
      np.testing.assert_array_equal(loaded[key], value)
      assert loaded[key].dtype == value.dtype, key
  # A hash in the name, as torch.hub's files have, is checked against the content.
  digest = hashlib.sha256(plain.read_bytes()).hexdigest()
  good, bad = tmp_path / f'resnet18-{digest[:8]}.pth', tmp_path / 'resnet18-00000000.pth'
  good.write_bytes(plain.read_bytes())
  bad.write_bytes(plain.read_bytes())
  assert convert.convert_file('resnet18', good, tmp_path / 'g', width=TINY_WIDTH)[
    'sha256_matches_name'
  ]
  assert not convert.convert_file('resnet18', bad, tmp_path / 'b', width=TINY_WIDTH)[
    'sha256_matches_name'
  ]


def test_safetensors_written_by_torch(tiny_resnet, tmp_path):
  from safetensors.torch import save_file

  model, sd = tiny_resnet
  path = tmp_path / 'resnet18-tiny.safetensors'
  save_file(model.state_dict(), path)  # The writer torch users have, not ours.
  loaded = convert.load_state_dict(path)
  assert set(loaded) == set(sd)
  for key, value in sd.items():
    np.testing.assert_array_equal(loaded[key], value)
    assert loaded[key].dtype == value.dtype, key
  meta = convert.convert_file('resnet18', path, tmp_path / 'out', width=TINY_WIDTH)
  assert meta['sha256'] == hashlib.sha256(path.read_bytes()).hexdigest()
  expected = convert.convert_state_dict('resnet18', sd, width=TINY_WIDTH)
  jax.tree.map(np.testing.assert_array_equal, convert.load_backbone(tmp_path / 'out'), expected)


def test_bad_inputs(tmp_path):
  with pytest.raises(ValueError, match='unknown format'):
    convert.load_state_dict(tmp_path / 'weights.h5')
  torch.save([torch.zeros(2)], tmp_path / 'list.pth')
  with pytest.raises(ValueError, match='not a state dict'):
    convert.load_state_dict(tmp_path / 'list.pth')
  with pytest.raises(FileNotFoundError, match='jaxattr.convert'):
    convert.load_backbone(tmp_path)


# --- The torch attribute model (benchmark reference) equals the Flax one ------------------


@pytest.mark.parametrize(
  'backbone, levels, confidence, size',
  [('resnet18', (3, 4), True, (64, 32)), ('resnet18', (4,), False, (32, 64))],
)
def test_attribute_model_torch_matches_flax(backbone, levels, confidence, size):
  num_classes, width = 5, 0.125
  torch.manual_seed(3)
  ref = torch_reference.AttributeModelTorch(
    num_classes, backbone, size, width, levels, confidence_weighting=confidence
  )
  randomise(ref, 3, (4, 3, *size))
  flax_model = model_lib.AttributeModel(
    num_classes, backbone, width, levels=levels, confidence_weighting=confidence
  )
  x = np.random.default_rng(3).normal(size=(2, 3, *size)).astype(np.float32)
  images = jnp.asarray(x.transpose(0, 2, 3, 1))
  shapes = jax.eval_shape(lambda: flax_model.init(jax.random.key(0), images, train=False))
  variables = convert.torch_to_flax(numpy_state_dict(ref), shapes)
  out = jax.jit(lambda v, x: flax_model.apply(v, x, train=False))(variables, images)
  with torch.no_grad():
    expected = ref(torch.from_numpy(x))
  for key in ('logits', 'primary_logits', 'attention_logits'):
    np.testing.assert_allclose(out[key], expected[key].numpy(), rtol=1e-5, atol=5e-5, err_msg=key)
  assert len(out['masks']) == len(expected['masks']) == len(levels)
  for key in ('masks', 'confidences'):
    for got, want in zip(out[key], expected[key], strict=True):
      np.testing.assert_allclose(got, nhwc(want), rtol=1e-5, atol=1e-5, err_msg=key)


def test_torch_tap_sizes_and_channels():
  """The torch heads' tap sizes and channels agree with the torch backbones' outputs.

  All nine architectures, at odd input sizes, and with the Flax models' channel counts.
  """
  for arch in torch_reference.ARCHS:
    width = 1 / 32
    model = torch_reference.create_backbone(arch, width, num_classes=None).eval()
    for h, w in [(70, 45), (64, 33)]:
      with torch.no_grad():
        out = model(torch.zeros(1, 3, h, w))
      assert torch_reference.tap_sizes(arch, h, w) == (
        tuple(out['k1'].shape[2:]),
        tuple(out['k2'].shape[2:]),
      ), (arch, h, w)
    channels = (out['k1'].shape[1], out['k2'].shape[1])
    assert torch_reference.tap_channels(arch, width) == channels, arch
    assert channels == model_lib.backbone_tap_channels(arch, width), arch


# --- Training starts from the converted weights ----------------------------------


def test_training_starts_from_converted_weights(tiny_resnet, tmp_path):
  model, sd = tiny_resnet
  source = tmp_path / 'resnet18-tiny.pth'
  torch.save(model.state_dict(), source)
  convert.convert_file('resnet18', source, tmp_path / 'pretrained', width=TINY_WIDTH)

  config = schema.load_recipe('test').get_config()
  config.data.data_dir = str(tmp_path / 'tfds')
  config.model.pretrained = str(tmp_path / 'pretrained')
  ex = train.create_experiment(config, devices=jax.devices()[:1])
  before = jax.tree.map(np.asarray, (ex.state.params, ex.state.batch_stats))
  state = pretrained.load_into(ex.state, config.model.pretrained)
  params, stats = jax.tree.map(np.asarray, (state.params, state.batch_stats))

  backbone = params['backbone']
  # Straight from the torch tensors, not through the converter.
  np.testing.assert_array_equal(
    backbone['conv1']['kernel'], sd['conv1.weight'].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(backbone['layer4']['1']['bn2']['scale'], sd['layer4.1.bn2.weight'])
  np.testing.assert_array_equal(stats['backbone']['bn1']['var'], sd['bn1.running_var'])
  file = convert.load_backbone(config.model.pretrained)
  jax.tree.map(np.testing.assert_array_equal, backbone, file['params'])
  jax.tree.map(np.testing.assert_array_equal, stats['backbone'], file['batch_stats'])
  assert not np.array_equal(before[0]['backbone']['conv1']['kernel'], backbone['conv1']['kernel'])
  for name in params:
    if name != 'backbone':
      jax.tree.map(np.testing.assert_array_equal, params[name], before[0][name])
  for name in stats:
    if name != 'backbone':
      jax.tree.map(np.testing.assert_array_equal, stats[name], before[1][name])

  # A file of another architecture or width is refused, not half-loaded.
  other = tmp_path / 'other'
  wide = torch_reference.create_backbone('resnet18', 2 * TINY_WIDTH)
  convert.save_backbone(
    convert.convert_state_dict('resnet18', wide.state_dict(), width=2 * TINY_WIDTH),
    other,
    {'arch': 'resnet18'},
  )
  with pytest.raises(ValueError, match='shape'):
    pretrained.load_into(ex.state, str(other))
