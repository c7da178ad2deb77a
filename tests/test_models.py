"""Tests of jaxattr.models: backbones, attention heads and the attribute model.

Full-size architectures are only traced (`jax.eval_shape`); everything that really
runs uses resnet18 at width 0.125 (or a tiny DenseNet) on non-square 64x32 images.
Expected values come from torchvision's published parameter counts, torchvision's
layer names and output-size formula written out here, hand counts, and numpy.
"""

import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from jaxattr import schema
from jaxattr.models import attention as attention_lib
from jaxattr.models import densenet as densenet_lib
from jaxattr.models import model as model_lib
from jaxattr.models import resnet as resnet_lib

TINY = 'resnet18'
TINY_WIDTH = 0.125
NUM_CLASSES = 5


def _shapes(module, *args, **kwargs):
  """Variable shapes of `module.init(...)`, without allocating anything."""
  return jax.eval_shape(lambda: module.init(_key(0), *args, **kwargs))


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _flat(tree) -> dict[str, object]:
  return {'/'.join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def _key(seed: int) -> jax.Array:
  # 'rbg' keys compile one cheap op per parameter shape where threefry compiles a
  # whole program, which dominated the run time of the eager inits here.
  return jax.random.key(seed, impl='rbg')


def _images(h=64, w=32, batch=2, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, h, w, 3)), jnp.float32)


def _tiny_model(**kwargs):
  kwargs = {'backbone_name': TINY, 'width': TINY_WIDTH, **kwargs}
  return model_lib.AttributeModel(NUM_CLASSES, **kwargs)


@pytest.fixture(scope='module')
def tiny():
  """A default (levels (3, 4), score) tiny model, its variables and a 64x32 batch.

  k1 is [2, 4, 2, 32] and k2 [2, 2, 1, 64]; tests that reuse these shapes reuse the
  compiled kernels, which is most of the run time of this file.
  """
  model = _tiny_model()
  x = _images()
  variables = model.init(_key(1), x, train=False)
  return model, variables, x


# --- Backbones ----------------------------------------------------------------

# torchvision's total parameter counts minus the ImageNet fc / classifier
# (weight + bias): e.g. resnet50 25,557,032 - (2048 * 1000 + 1000).
TORCHVISION_PARAMS_WITHOUT_HEAD = {
  'resnet18': 11_689_512 - 513_000,
  'resnet34': 21_797_672 - 513_000,
  'resnet50': 25_557_032 - 2_049_000,
  'resnet101': 44_549_160 - 2_049_000,
  'resnet152': 60_192_808 - 2_049_000,
  'densenet121': 7_978_856 - 1_025_000,
  'densenet161': 28_681_000 - 2_209_000,
  'densenet169': 14_149_480 - 1_665_000,
  'densenet201': 20_013_928 - 1_921_000,
}


# torchvision's published `num_params` of every registered architecture, with the
# 1000-class head (the `*_Weights.IMAGENET1K_V1.meta` of torchvision's model files).
TORCHVISION_PARAMS = {
  'resnet18': 11_689_512,
  'resnet34': 21_797_672,
  'resnet50': 25_557_032,
  'resnet101': 44_549_160,
  'resnet152': 60_192_808,
  'densenet121': 7_978_856,
  'densenet161': 28_681_000,
  'densenet169': 14_149_480,
  'densenet201': 20_013_928,
  'vit_b_16': 86_567_656,
  'swin_t': 28_288_354,
  'swin_s': 49_606_258,
  'swin_b': 87_768_224,
  'convnext_tiny': 28_589_128,
  'convnext_small': 50_223_688,
  'convnext_base': 88_591_464,
}


def test_param_counts_stated_in_the_brief():
  assert TORCHVISION_PARAMS_WITHOUT_HEAD == {
    'resnet18': 11_176_512,
    'resnet34': 21_284_672,
    'resnet50': 23_508_032,
    'resnet101': 42_500_160,
    'resnet152': 58_143_808,
    'densenet121': 6_953_856,
    'densenet161': 26_472_000,
    'densenet169': 12_484_480,
    'densenet201': 18_092_928,
  }
  assert set(TORCHVISION_PARAMS_WITHOUT_HEAD) <= set(model_lib.BACKBONES)
  torchvision_archs = {n for n, b in model_lib.BACKBONES.items() if b.publisher == 'torchvision'}
  assert torchvision_archs == set(TORCHVISION_PARAMS)


@pytest.mark.parametrize('name', sorted(TORCHVISION_PARAMS))
def test_every_registered_backbone_has_torchvisions_param_count(name):
  """Traced at 64x64 (no allocation): the head is the registry's, its input `pooled`."""
  entry = model_lib.BACKBONES[name]
  backbone = entry.create(num_classes=1000)
  out, variables = jax.eval_shape(
    lambda: backbone.init_with_output(_key(0), _images(64, 64, 1), train=False)
  )
  assert _count(variables['params']) == TORCHVISION_PARAMS[name] == entry.num_params
  head = traverse_util.flatten_dict(variables['params'])
  head_path = tuple(entry.head.split('.'))
  assert head[(*head_path, 'kernel')].shape == (out['pooled'].shape[1], 1000)
  assert out['logits'].shape == (1, 1000)
  assert entry.tap_channels(1.0) == (out['k1'].shape[-1], out['k2'].shape[-1])
  assert entry.url == f'https://download.pytorch.org/models/{entry.file_name}'
  assert entry.file_name.startswith(name + '-')


@pytest.fixture(scope='module')
def full_size_variables():
  """Shapes of the full-size backbones with the ImageNet head, flattened, by name."""
  cache = {}

  def get(name):
    if name not in cache:
      backbone = model_lib.create_backbone(name, num_classes=1000)
      variables = _shapes(backbone, _images(32, 32, 1), train=False)
      cache[name] = {col: _flat(tree) for col, tree in variables.items()}
    return cache[name]

  return get


# Input features of the ImageNet fc / classifier, from the torchvision definitions.
HEAD_FEATURES = {
  'resnet18': 512,
  'resnet34': 512,
  'resnet50': 2048,
  'resnet101': 2048,
  'resnet152': 2048,
  'densenet121': 1024,
  'densenet161': 2208,
  'densenet169': 1664,
  'densenet201': 1920,
}


@pytest.mark.parametrize('name', sorted(TORCHVISION_PARAMS_WITHOUT_HEAD))
def test_backbone_param_count_matches_torchvision(full_size_variables, name):
  params = full_size_variables(name)['params']
  head = 'fc' if name.startswith('resnet') else 'classifier'
  head_paths = {f'{head}/kernel', f'{head}/bias'}
  assert head_paths <= set(params)
  body = sum(int(np.prod(v.shape)) for k, v in params.items() if k not in head_paths)
  assert body == TORCHVISION_PARAMS_WITHOUT_HEAD[name]
  assert params[f'{head}/kernel'].shape == (HEAD_FEATURES[name], 1000)
  assert params[f'{head}/bias'].shape == (1000,)


def test_backbone_without_num_classes_has_no_head():
  for name in ('resnet18', 'densenet121'):
    params = _shapes(model_lib.create_backbone(name), _images(32, 32, 1), train=False)['params']
    assert _count(params) == TORCHVISION_PARAMS_WITHOUT_HEAD[name]
    assert not {'fc', 'classifier'} & set(params)


def _torch_out(n: int, kernel: int, stride: int, pad: int) -> int:
  """torch's Conv2d / MaxPool2d / AvgPool2d output size (floor mode)."""
  return (n + 2 * pad - kernel) // stride + 1


def _torch_taps(name: str, n: int) -> tuple[int, int]:
  """The k1, k2 sizes of torchvision's ResNet / DenseNet `name` along a side of n pixels."""
  # Where each later stage halves the map: ResNet's layer2-4 in their first 3x3 conv,
  # DenseNet's transition1-3 in their 2x2 average pool.
  stage = (3, 2, 1) if name.startswith('resnet') else (2, 2, 0)
  n = _torch_out(n, 7, 2, 3)  # conv1 / conv0
  n = _torch_out(n, 3, 2, 1)  # maxpool / pool0
  n = _torch_out(n, *stage)  # layer2 / transition1
  k1 = _torch_out(n, *stage)  # layer3 / transition2
  return k1, _torch_out(k1, *stage)  # layer4 / transition3


@pytest.mark.parametrize(
  'name, size, k1, k2',
  [
    ('resnet101', (224, 224), (14, 14, 1024), (7, 7, 2048)),
    ('densenet121', (224, 224), (14, 14, 1024), (7, 7, 1024)),
    ('resnet18', (224, 224), (14, 14, 256), (7, 7, 512)),
    ('densenet161', (224, 224), (14, 14, 2112), (7, 7, 2208)),
  ],
)
def test_tap_shapes_at_224(name, size, k1, k2):
  backbone = model_lib.create_backbone(name)
  out = jax.eval_shape(
    lambda: backbone.init_with_output(_key(0), _images(*size, 1), train=False)[0]
  )
  assert out['k1'].shape == (1, *k1)
  assert out['k2'].shape == (1, *k2)
  assert model_lib.backbone_tap_channels(name) == (k1[-1], k2[-1])


# Channels at width 0.25, by hand: resnet50 round(1024 / 4), round(2048 / 4);
# densenet121 growth 8, stem 16: 16 + 6*8 = 64 -> 32 + 12*8 = 128 -> 64 + 24*8 = 256 (k1)
# -> 128 + 16*8 = 256 (k2).
QUARTER_WIDTH_CHANNELS = {'resnet50': (256, 512), 'densenet121': (256, 256)}


@pytest.mark.parametrize('name', ['resnet50', 'densenet121'])
@pytest.mark.parametrize('size', [(225, 225), (97, 130), (64, 32)])
def test_tap_sizes_follow_torch_output_formula(name, size):
  (h1, h2), (w1, w2) = _torch_taps(name, size[0]), _torch_taps(name, size[1])
  backbone = model_lib.create_backbone(name, width=0.25)
  out = jax.eval_shape(
    lambda: backbone.init_with_output(_key(0), _images(*size, 1), train=False)[0]
  )
  c1, c2 = QUARTER_WIDTH_CHANNELS[name]
  assert out['k1'].shape[1:] == (h1, w1, c1)
  assert out['k2'].shape[1:] == (h2, w2, c2)
  assert model_lib.backbone_tap_channels(name, 0.25) == (c1, c2)


def test_width_scales_resnet_channels_by_rounding():
  # resnet50 at width 0.1: stem round(6.4) = 6; layer3 planes round(25.6) = 26,
  # outputs round(102.4) = 102; layer4 outputs round(204.8) = 205.
  variables = _shapes(
    model_lib.create_backbone('resnet50', width=0.1), _images(32, 32, 1), train=False
  )
  params = _flat(variables['params'])
  assert params['conv1/kernel'].shape == (7, 7, 3, 6)
  assert params['layer3/0/conv2/kernel'].shape == (3, 3, 26, 26)
  assert params['layer3/0/conv3/kernel'].shape == (1, 1, 26, 102)
  assert params['layer4/2/conv3/kernel'].shape == (1, 1, 51, 205)
  assert model_lib.backbone_tap_channels('resnet50', 0.1) == (102, 205)


# Blocks per stage at depth 1/4, by hand: each stage's torchvision count times 1/4,
# rounded half up, at least 1 (Swin counts pairs: a stage alternates plain and shifted
# windows). resnet50 (3, 4, 6, 3) -> 0.75, 1, 1.5, 0.75; densenet121 (6, 12, 24, 16) ->
# 1.5, 3, 6, 4; vit_b_16 12 -> 3; swin_t pairs (1, 1, 3, 1) -> 0.25, 0.25, 0.75, 0.25,
# swin_b pairs (1, 1, 9, 1) -> 2.25 at stage 3; convnext_tiny (3, 3, 9, 3) -> 0.75, 2.25.
QUARTER_DEPTH_BLOCKS = {
  'resnet50': (r'(layer\d)/(\d+)/', (1, 1, 2, 1)),
  'densenet121': (r'features/(denseblock\d)/(denselayer\d+)/', (2, 3, 6, 4)),
  'vit_b_16': (r'encoder/(layers)/(encoder_layer_\d+)/', (3,)),
  'swin_t': (r'features/([1357])/(\d+)/', (2, 2, 2, 2)),
  'swin_b': (r'features/([1357])/(\d+)/', (2, 2, 4, 2)),
  'convnext_tiny': (r'features/([1357])/(\d+)/', (1, 1, 2, 1)),
}


@pytest.mark.parametrize('name', sorted(QUARTER_DEPTH_BLOCKS))
def test_depth_keeps_the_first_blocks_of_every_stage_under_torchvision_names(name):
  pattern, counts = QUARTER_DEPTH_BLOCKS[name]

  def blocks(depth):
    module = model_lib.create_backbone(name, width=1 / 16, depth=depth)
    out, variables = jax.eval_shape(
      lambda: module.init_with_output(_key(0), _images(64, 64, 1), train=False)
    )
    found = {}
    for path in _flat(variables['params']):
      if m := re.match(pattern, path):
        found.setdefault(m[1], set()).add(m[2])
    return found, set(_flat(variables['params'])), out

  shallow, shallow_paths, out = blocks(0.25)
  full, full_paths, _ = blocks(1.0)
  assert tuple(len(shallow[stage]) for stage in sorted(shallow)) == counts
  for stage, kept in shallow.items():  # The first blocks of the stage, by torchvision's index.
    assert kept == set(sorted(full[stage], key=lambda b: int(re.sub(r'\D', '', b)))[: len(kept)])
  assert shallow_paths <= full_paths
  channels = (out['k1'].shape[-1], out['k2'].shape[-1])
  assert model_lib.backbone_tap_channels(name, 1 / 16, 0.25) == channels


def _torch_to_flax(key: str) -> tuple[str, str]:
  """The documented rule: (collection, flax path) of a torchvision state-dict key."""
  *path, leaf = key.split('.')
  is_norm = path[-1].startswith(('bn', 'norm')) or path[-2:] == ['downsample', '1']
  if leaf == 'running_mean':
    return 'batch_stats', '/'.join([*path, 'mean'])
  if leaf == 'running_var':
    return 'batch_stats', '/'.join([*path, 'var'])
  if leaf == 'weight':
    return 'params', '/'.join([*path, 'scale' if is_norm else 'kernel'])
  assert leaf == 'bias', key
  return 'params', '/'.join([*path, 'bias'])


def _torch_shape_to_flax(shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(shape) == 4:  # OIHW -> HWIO
    o, i, h, w = shape
    return (h, w, i, o)
  if len(shape) == 2:  # (out, in) -> (in, out)
    return (shape[1], shape[0])
  return shape


# Keys and shapes as printed by torchvision's `model.state_dict()`.
TORCHVISION_KEYS = [
  ('resnet101', 'conv1.weight', (64, 3, 7, 7)),
  ('resnet101', 'bn1.running_mean', (64,)),
  ('resnet101', 'layer1.0.conv1.weight', (64, 64, 1, 1)),
  ('resnet101', 'layer2.0.conv2.weight', (128, 128, 3, 3)),
  ('resnet101', 'layer2.0.downsample.0.weight', (512, 256, 1, 1)),
  ('resnet101', 'layer2.0.downsample.1.running_var', (512,)),
  ('resnet101', 'layer3.5.bn2.running_var', (256,)),
  ('resnet101', 'layer3.22.conv3.weight', (1024, 256, 1, 1)),
  ('resnet101', 'layer4.2.bn3.weight', (2048,)),
  ('resnet101', 'layer4.2.bn3.bias', (2048,)),
  ('resnet101', 'fc.weight', (1000, 2048)),
  ('resnet101', 'fc.bias', (1000,)),
  ('resnet18', 'layer1.1.conv2.weight', (64, 64, 3, 3)),
  ('resnet18', 'layer4.0.downsample.0.weight', (512, 256, 1, 1)),
  ('resnet152', 'layer2.7.bn1.running_mean', (128,)),
  ('densenet121', 'features.conv0.weight', (64, 3, 7, 7)),
  ('densenet121', 'features.norm0.running_var', (64,)),
  ('densenet121', 'features.denseblock1.denselayer1.norm1.weight', (64,)),
  ('densenet121', 'features.denseblock1.denselayer1.conv1.weight', (128, 64, 1, 1)),
  ('densenet121', 'features.denseblock4.denselayer16.conv2.weight', (32, 128, 3, 3)),
  ('densenet121', 'features.denseblock4.denselayer16.norm1.running_mean', (992,)),
  ('densenet121', 'features.transition3.norm.weight', (1024,)),
  ('densenet121', 'features.transition3.conv.weight', (512, 1024, 1, 1)),
  ('densenet121', 'features.norm5.bias', (1024,)),
  ('densenet121', 'classifier.weight', (1000, 1024)),
  ('densenet161', 'features.denseblock3.denselayer36.conv1.weight', (192, 2064, 1, 1)),
  ('densenet201', 'features.transition2.conv.weight', (256, 512, 1, 1)),
]


@pytest.mark.parametrize('name, key, torch_shape', TORCHVISION_KEYS)
def test_torchvision_key_maps_to_flax_path(full_size_variables, name, key, torch_shape):
  collection, path = _torch_to_flax(key)
  variables = full_size_variables(name)
  assert path in variables[collection], (key, collection, path)
  assert variables[collection][path].shape == _torch_shape_to_flax(torch_shape)


def _resnet18_torchvision_keys() -> set[str]:
  """Every key of torchvision's resnet18 state dict (num_batches_tracked excluded)."""

  def bn(prefix):
    return {f'{prefix}.{leaf}' for leaf in ('weight', 'bias', 'running_mean', 'running_var')}

  keys = {'conv1.weight', 'fc.weight', 'fc.bias'} | bn('bn1')
  for stage in range(1, 5):
    for block in range(2):
      prefix = f'layer{stage}.{block}'
      keys |= {f'{prefix}.conv1.weight', f'{prefix}.conv2.weight'}
      keys |= bn(f'{prefix}.bn1') | bn(f'{prefix}.bn2')
      if stage > 1 and block == 0:
        keys |= {f'{prefix}.downsample.0.weight'} | bn(f'{prefix}.downsample.1')
  return keys


def _densenet121_torchvision_keys() -> set[str]:
  def bn(prefix):
    return {f'{prefix}.{leaf}' for leaf in ('weight', 'bias', 'running_mean', 'running_var')}

  keys = {'features.conv0.weight', 'classifier.weight', 'classifier.bias'}
  keys |= bn('features.norm0') | bn('features.norm5')
  for b, num_layers in enumerate((6, 12, 24, 16), start=1):
    for i in range(1, num_layers + 1):
      prefix = f'features.denseblock{b}.denselayer{i}'
      keys |= bn(f'{prefix}.norm1') | bn(f'{prefix}.norm2')
      keys |= {f'{prefix}.conv1.weight', f'{prefix}.conv2.weight'}
    if b < 4:
      keys |= bn(f'features.transition{b}.norm') | {f'features.transition{b}.conv.weight'}
  return keys


@pytest.mark.parametrize(
  'name, keys',
  [('resnet18', _resnet18_torchvision_keys), ('densenet121', _densenet121_torchvision_keys)],
)
def test_torchvision_names_are_one_to_one(full_size_variables, name, keys):
  variables = full_size_variables(name)
  flax_paths = {(col, path) for col, tree in variables.items() for path in tree}
  assert {_torch_to_flax(k) for k in keys()} == flax_paths


def _numpy_conv(x, w, stride, pad):
  """Cross-correlation of NHWC x with an HWIO kernel, torch-style symmetric zero padding."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw, _, o = w.shape
  oh = (x.shape[1] - kh) // stride + 1
  ow = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], oh, ow, o))
  for i in range(oh):
    for j in range(ow):
      patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
      out[:, i, j, :] = np.einsum('bhwi,hwio->bo', patch, w)
  return out


def test_stem_conv_pads_symmetrically_like_torch(tiny):
  # On an even input 'SAME' would pad (2, 3) for this 7x7 stride-2 conv; torch pads (3, 3).
  model, variables, x = tiny
  _, state = model.apply(variables, x, train=False, capture_intermediates=True)
  got = state['intermediates']['backbone']['conv1']['__call__'][0]
  kernel = np.asarray(variables['params']['backbone']['conv1']['kernel'], np.float64)
  expected = _numpy_conv(np.asarray(x, np.float64), kernel, stride=2, pad=3)
  assert got.shape == expected.shape == (2, 32, 16, 8)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_stem_max_pool_pads_with_minus_infinity():
  # Negative values everywhere: zero padding would leak 0 into the border windows.
  x = -1.0 - np.arange(2 * 6 * 8, dtype=np.float32).reshape(1, 6, 8, 2)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  expected = np.zeros((1, 3, 4, 2), np.float32)
  for i in range(3):
    for j in range(4):
      expected[:, i, j] = padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2))
  np.testing.assert_array_equal(resnet_lib.max_pool_3x3_s2(jnp.asarray(x)), expected)


def test_densenet_transition_average_pools_in_floor_mode():
  transition = densenet_lib.Transition(3)
  x = _images(5, 7, 1)
  y, variables = transition.init_with_output(_key(0), x, train=False)
  assert y.shape == (1, 2, 3, 3)
  # Eval BN at init is x / sqrt(1 + eps); then ReLU, 1x1 conv, 2x2 mean of the first window.
  h = np.maximum(np.asarray(x, np.float64) / np.sqrt(1 + 1e-5), 0)
  conv = np.einsum('bhwi,io->bhwo', h, np.asarray(variables['params']['conv']['kernel'][0, 0]))
  np.testing.assert_allclose(y[0, 1, 2], conv[0, 2:4, 4:6].mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)


def test_tiny_densenet_runs_and_keeps_torchvision_structure():
  net = densenet_lib.DenseNet(
    growth_rate=4, block_config=(2, 1, 1, 1), num_init_features=8, bn_size=2, num_classes=3
  )
  x = _images(64, 32, 2)
  out, variables = net.init_with_output(_key(0), x, train=False)
  # Channels: 8 + 2*4 = 16 -> 8; 8 + 4 = 12 -> 6; 6 + 4 = 10 (k1) -> 5; 5 + 4 = 9 (k2).
  assert out['k1'].shape == (2, 4, 2, 10)
  assert out['k2'].shape == (2, 2, 1, 9)
  assert out['logits'].shape == (2, 3)
  assert float(jnp.min(out['k2'])) >= 0.0  # relu(norm5)
  assert np.isfinite(np.asarray(out['logits'])).all()
  params = variables['params']
  assert params['features']['denseblock1']['denselayer2']['conv1']['kernel'].shape == (1, 1, 12, 8)
  assert params['features']['transition3']['conv']['kernel'].shape == (1, 1, 10, 5)
  assert params['features']['norm5']['scale'].shape == (9,)
  np.testing.assert_array_equal(params['classifier']['bias'], np.zeros(3))
  assert set(variables['batch_stats']) == {'features'}


def test_backbone_default_initialisation_matches_torchvision():
  backbone = model_lib.create_backbone(TINY, width=TINY_WIDTH, num_classes=10)
  variables = backbone.init(_key(0), _images(), train=False)
  params, stats = variables['params'], variables['batch_stats']
  np.testing.assert_array_equal(params['layer1']['1']['bn2']['scale'], 1.0)  # no zero-init gamma
  np.testing.assert_array_equal(params['bn1']['bias'], 0.0)
  np.testing.assert_array_equal(stats['bn1']['var'], 1.0)
  # kaiming_normal fan_out: std = sqrt(2 / (3 * 3 * out)) for layer3's 3x3 convs (32 wide).
  layer3 = params['layer3']
  kernels = np.concatenate(
    [
      np.ravel(layer3[block][conv]['kernel'])
      for block, conv in [('0', 'conv2'), ('1', 'conv1'), ('1', 'conv2')]
    ]
  )
  assert kernels.size == 3 * 9 * 32 * 32
  np.testing.assert_allclose(kernels.std(), np.sqrt(2 / (9 * 32)), rtol=0.05)
  # torch's Linear default: weight and bias in U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  bound = 1 / np.sqrt(params['fc']['kernel'].shape[0])
  kernel, bias = np.asarray(params['fc']['kernel']), np.asarray(params['fc']['bias'])
  assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
  assert np.abs(kernel).max() > 0.9 * bound  # 640 draws: uniform, not a narrower law
  assert np.abs(bias).min() > 0.0  # torchvision's ResNet fc bias is not zeroed


# --- Attention heads -------------------------------------------------------------


def test_spatial_softmax_matches_numpy_and_is_stable():
  z = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32) * 50.0
  z[0, 0, 0, 0] = 1e4  # exp overflows unless the max is subtracted
  flat = z.reshape(2, 12, 5).astype(np.float64)
  e = np.exp(flat - flat.max(axis=1, keepdims=True))
  expected = (e / e.sum(axis=1, keepdims=True)).reshape(z.shape)
  got = attention_lib.spatial_softmax(jnp.asarray(z))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, atol=1e-6)
  # bfloat16 logits are promoted before the softmax: float32 masks that sum to 1.
  got16 = attention_lib.spatial_softmax(jnp.asarray(z, jnp.bfloat16))
  assert got16.dtype == jnp.float32
  np.testing.assert_allclose(np.sum(np.asarray(got16), axis=(1, 2)), 1.0, rtol=1e-6)


# The head unit tests use the shapes of the tiny model's level-3 head (k1 is
# [2, 4, 2, 32]), so they reuse its compiled kernels.


@pytest.mark.parametrize('confidence_weighting', [True, False])
def test_attention_mask_weights_masks_by_confidence(confidence_weighting):
  mask = attention_lib.AttentionMask(NUM_CLASSES, 32, confidence_weighting)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 2, 32)), jnp.float32)
  (a, s, u), variables = mask.init_with_output(_key(0), x, train=False)
  assert a.shape == s.shape == u.shape == (2, 4, 2, NUM_CLASSES)
  np.testing.assert_allclose(np.sum(np.asarray(a), axis=(1, 2)), 1.0, rtol=1e-5)
  np.testing.assert_allclose(u, np.asarray(a) * np.asarray(s), rtol=1e-6)
  params = variables['params']
  if confidence_weighting:
    kernel = np.asarray(params['confidence']['kernel'][0, 0], np.float64)
    bias = np.asarray(params['confidence']['bias'], np.float64)
    logits = np.einsum('bhwi,io->bhwo', np.asarray(x, np.float64), kernel) + bias
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-logits)), rtol=1e-5)
  else:
    assert 'confidence' not in params
    np.testing.assert_array_equal(s, 1.0)
  assert set(params) >= {'conv1', 'bn1', 'conv2', 'bn2', 'logits'}
  assert params['logits']['kernel'].shape == (1, 1, 32, NUM_CLASSES)


def test_attention_classifier_kernel_covers_its_input():
  classifier = attention_lib.AttentionClassifier(NUM_CLASSES, (32, 64, 64))
  u = jnp.asarray(np.random.default_rng(3).uniform(size=(2, 4, 2, NUM_CLASSES)), jnp.float32)
  logits, variables = classifier.init_with_output(_key(0), u, train=False)
  assert logits.shape == (2, NUM_CLASSES)
  params = variables['params']
  assert params['conv1']['kernel'].shape == (1, 1, NUM_CLASSES, 32)
  assert params['conv2']['kernel'].shape == (1, 1, 32, 64)
  assert params['conv3']['kernel'].shape == (4, 2, 64, 64)
  assert params['fc']['kernel'].shape == (64, NUM_CLASSES)
  assert set(variables['batch_stats']) == {'bn1', 'bn2', 'bn3'}
  with pytest.raises(ValueError, match='3 entries'):
    attention_lib.AttentionClassifier(NUM_CLASSES, (32, 64)).init(_key(0), u, train=False)


@pytest.mark.parametrize('hw', [(4, 2), (1, 1), (3, 5)])
def test_full_spatial_conv_equals_a_valid_convolution(hw):
  rng = np.random.default_rng(4)
  x = rng.normal(size=(3, *hw, 6)).astype(np.float32)
  conv = attention_lib.FullSpatialConv(5)
  y, variables = conv.init_with_output(_key(1), jnp.asarray(x))
  kernel = np.asarray(variables['params']['kernel'])
  assert kernel.shape == (*hw, 6, 5)
  assert set(variables['params']) == {'kernel'}  # No bias: BatchNorm follows.
  assert y.shape == (3, 1, 1, 5)
  # Independent references: XLA's convolution and a numpy sum over the window.
  reference = jax.lax.conv_general_dilated(
    x,
    kernel,
    (1, 1),
    'VALID',
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    precision=jax.lax.Precision.HIGHEST,
  )
  np.testing.assert_allclose(y, reference, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    y[:, 0, 0], np.einsum('bhwi,hwio->bo', x, kernel), rtol=1e-5, atol=1e-5
  )
  # The compute dtype is honoured, as nn.Conv does.
  y16 = attention_lib.FullSpatialConv(5, dtype=jnp.bfloat16).apply(variables, jnp.asarray(x))
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y16, np.float32), reference, rtol=0.05, atol=0.05)
  # A map of another size than the kernel's is refused, not silently reshaped.
  with pytest.raises(flax.errors.ScopeParamShapeError):
    conv.apply(variables, jnp.zeros((3, hw[0] + 1, hw[1], 6)))


def test_full_size_head_parameter_counts():
  # ResNet-101 at 224 with 14 attributes, counted by hand from docs/method.md, "Model".
  c = 14

  def mask(d):  # conv1, bn1, conv2, bn2, logits, confidence
    return d * 256 + 512 + 256 * 256 + 512 + 256 * c + c + d * c + c

  def classifier(hw):  # conv1, bn1, conv2, bn2, conv3 (kernel hw x hw), bn3, fc
    return c * 256 + 512 + 256 * 512 + 1024 + hw * hw * 512 * 512 + 1024 + 512 * c + c

  model = model_lib.AttributeModel(c, 'resnet101')
  params = _shapes(model, _images(224, 224, 1), train=False)['params']
  assert set(params) == {'backbone', 'classifier', 'attention3', 'attention4'}
  assert _count(params['backbone']) == TORCHVISION_PARAMS_WITHOUT_HEAD['resnet101']
  assert _count(params['classifier']) == 2048 * c + c
  assert _count(params['attention3']) == mask(1024) + classifier(14)
  assert _count(params['attention4']) == mask(2048) + classifier(7)
  assert params['attention4']['classifier']['conv3']['kernel'].shape == (7, 7, 512, 512)


def test_max_pool_to_and_upsample_to_match_numpy():
  u = np.random.default_rng(1).normal(size=(1, 4, 6, 2)).astype(np.float32)
  pooled = u.reshape(1, 2, 2, 3, 2, 2).max(axis=(2, 4))
  np.testing.assert_array_equal(attention_lib.max_pool_to(jnp.asarray(u), (2, 3)), pooled)
  np.testing.assert_array_equal(
    attention_lib.upsample_to(jnp.asarray(pooled), (4, 6)), pooled.repeat(2, 1).repeat(2, 2)
  )
  # Odd sizes: ceil keeps the last row alone, floor drops it.
  odd = np.random.default_rng(2).normal(size=(1, 7, 7, 1)).astype(np.float32)
  ceil = attention_lib.max_pool_to(jnp.asarray(odd), (4, 4))
  floor = attention_lib.max_pool_to(jnp.asarray(odd), (3, 3))
  np.testing.assert_array_equal(ceil[0, 3, 3, 0], odd[0, 6, 6, 0])
  np.testing.assert_array_equal(floor[0, 2, 2, 0], odd[0, 4:6, 4:6, 0].max())
  with pytest.raises(ValueError, match='Cannot halve'):
    attention_lib.max_pool_to(jnp.asarray(odd), (2, 2))


@pytest.mark.parametrize('size, target', [(7, 4), (7, 3)])
def test_strided_conv_down_reaches_either_rounding(size, target):
  down = attention_lib.StridedConvDown(3)
  u = _images(size, size, 1)[..., :3]
  y, variables = down.init_with_output(_key(0), u, target=(target, target))
  assert y.shape == (1, target, target, 3)
  kernel = np.asarray(variables['params']['conv']['kernel'], np.float64)
  # The first window is torch's 3x3 / stride 2 / pad 1: rows -1..1 with zero padding.
  expected = _numpy_conv(np.asarray(u, np.float64), kernel, 2, 1)[0, 0, 0]
  expected = expected + np.asarray(variables['params']['conv']['bias'])
  np.testing.assert_allclose(y[0, 0, 0], expected, rtol=1e-5, atol=1e-5)


# --- The attribute model ------------------------------------------------------------


def test_default_model_outputs(tiny):
  model, variables, x = tiny
  out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert set(variables['params']) == {'backbone', 'classifier', 'attention3', 'attention4'}
  assert 'fc' not in variables['params']['backbone']
  assert out['logits'].shape == out['primary_logits'].shape == (2, NUM_CLASSES)
  assert out['attention_logits'].shape == (2, 2, NUM_CLASSES)
  assert [a.shape for a in out['masks']] == [(2, 4, 2, NUM_CLASSES), (2, 2, 1, NUM_CLASSES)]
  # Non-square input: each attention classifier's last kernel covers its own map.
  params = variables['params']
  assert params['attention3']['classifier']['conv3']['kernel'].shape[:2] == (4, 2)
  assert params['attention4']['classifier']['conv3']['kernel'].shape[:2] == (2, 1)
  for a, s in zip(out['masks'], out['confidences'], strict=True):
    assert a.dtype == s.dtype == jnp.float32
    np.testing.assert_allclose(np.sum(np.asarray(a), axis=(1, 2)), 1.0, rtol=1e-5)
    assert float(jnp.min(s)) > 0.0 and float(jnp.max(s)) < 1.0
  expected = (np.asarray(out['primary_logits']) + np.asarray(out['attention_logits']).sum(0)) / 3
  np.testing.assert_allclose(out['logits'], expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(out['logits'], out['primary_logits'])


def test_primary_classifier_is_glorot_with_zero_bias(tiny):
  _, variables, _ = tiny
  classifier = variables['params']['classifier']
  fan_in, fan_out = classifier['kernel'].shape
  assert (fan_in, fan_out) == (64, NUM_CLASSES)
  assert float(jnp.max(jnp.abs(classifier['kernel']))) <= np.sqrt(6 / (fan_in + fan_out))
  np.testing.assert_array_equal(classifier['bias'], 0.0)


VALID_ABLATIONS = [
  (levels, aggregation, confidence)
  for levels in [(), (3,), (4,), (3, 4)]
  for aggregation in ['score', 'feature_upsample', 'feature_maxpool', 'feature_strided_conv']
  for confidence in [True, False]
  if aggregation == 'score' or levels == (3, 4)
]

EXPECTED_TOP_LEVEL = {
  'score': lambda levels: {f'attention{level}' for level in levels},
  'feature_upsample': lambda _: {'mask3', 'mask4', 'attention_classifier'},
  'feature_maxpool': lambda _: {'mask3', 'mask4', 'attention_classifier'},
  'feature_strided_conv': lambda _: {'mask3', 'mask4', 'attention_classifier', 'downsample'},
}


@pytest.mark.parametrize('levels, aggregation, confidence', VALID_ABLATIONS)
def test_every_ablation_builds_and_runs(levels, aggregation, confidence):
  config = ml_collections.ConfigDict(
    {
      'backbone': TINY,
      'width': TINY_WIDTH,
      'dtype': 'float32',
      'param_dtype': 'float32',
      'attention': {
        'levels': levels,
        'aggregation': aggregation,
        'confidence_weighting': confidence,
        'mask_channels': 256,
        'classifier_channels': (256, 512, 512),
      },
    }
  )
  model = model_lib.create_model(config, NUM_CLASSES)
  x = _images()
  variables = model.init(_key(0), x, train=False)
  out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])

  num_attention = len(levels) if aggregation == 'score' else 1
  assert set(variables['params']) == {'backbone', 'classifier'} | EXPECTED_TOP_LEVEL[aggregation](
    levels
  )
  assert out['attention_logits'].shape == (num_attention, 2, NUM_CLASSES)
  assert len(out['masks']) == len(out['confidences']) == len(levels)
  for leaf in jax.tree_util.tree_leaves(out):
    assert leaf.dtype == jnp.float32
    assert np.isfinite(np.asarray(leaf)).all()
  expected = (out['primary_logits'] + out['attention_logits'].sum(0)) / (num_attention + 1)
  np.testing.assert_allclose(out['logits'], expected, rtol=1e-5, atol=1e-6)
  if not levels:
    np.testing.assert_array_equal(out['logits'], out['primary_logits'])
  for s in out['confidences']:
    if confidence:
      assert float(jnp.max(s)) < 1.0
    else:
      np.testing.assert_array_equal(s, 1.0)
  # mask_channels 256 * 0.125 = 32; classifier 256, 512, 512 -> 32, 64, 64.
  if aggregation != 'score':
    head = variables['params']['attention_classifier']
  elif levels:
    head = variables['params'][f'attention{levels[-1]}']['classifier']
  else:
    return
  assert head['conv1']['kernel'].shape == (1, 1, NUM_CLASSES, 32)
  assert head['conv3']['kernel'].shape[2:] == (64, 64)


def test_feature_aggregation_grids():
  # The summed masks sit on the level-3 grid for upsampling and on level 4 otherwise.
  x = _images()
  for aggregation, hw in [('feature_upsample', (4, 2)), ('feature_maxpool', (2, 1))]:
    model = _tiny_model(aggregation=aggregation)
    params = _shapes(model, x, train=False)['params']
    assert params['attention_classifier']['conv3']['kernel'].shape[:2] == hw
  model = _tiny_model(aggregation='feature_strided_conv')
  params = _shapes(model, x, train=False)['params']
  assert params['downsample']['conv']['kernel'].shape == (3, 3, NUM_CLASSES, NUM_CLASSES)


def test_create_model_from_the_default_config():
  config = schema.defaults()
  model = model_lib.create_model(config.model, 14)
  out, variables = jax.eval_shape(
    lambda: model.init_with_output(_key(0), _images(224, 224, 1), train=False)
  )
  assert set(variables['params']) == {'backbone', 'classifier', 'attention3', 'attention4'}
  assert out['attention_logits'].shape == (2, 1, 14)
  assert [a.shape for a in out['masks']] == [(1, 14, 14, 14), (1, 7, 7, 14)]
  bad = schema.defaults()
  bad.model.attention.levels = (4,)
  bad.model.attention.aggregation = 'feature_maxpool'
  with pytest.raises(ValueError, match='needs attention.levels=\\(3, 4\\)'):
    model_lib.create_model(bad.model, 14)


@pytest.mark.parametrize(
  'levels, aggregation',
  [
    ((4,), 'feature_upsample'),
    ((3,), 'feature_maxpool'),
    ((), 'feature_strided_conv'),
    ((4, 3), 'score'),
    ((5,), 'score'),
    ((3, 4), 'feature_average'),
  ],
)
def test_invalid_attention_configs_raise(levels, aggregation):
  with pytest.raises(ValueError, match='attention'):
    model_lib.validate_attention(levels, aggregation)
  model = _tiny_model(levels=levels, aggregation=aggregation)
  with pytest.raises(ValueError, match='attention'):
    _shapes(model, _images(), train=False)


def test_unknown_backbone_raises():
  with pytest.raises(ValueError, match='Unknown backbone'):
    model_lib.create_backbone('resnet99')
  with pytest.raises(ValueError, match='Unknown backbone'):
    model_lib.backbone_tap_channels('vgg16')


def test_freeze_backbone_keeps_backbone_statistics(tiny):
  model, variables, x = tiny
  _, frozen = model.apply(variables, x, train=True, freeze_backbone=True, mutable=['batch_stats'])
  _, unfrozen = model.apply(variables, x, train=True, mutable=['batch_stats'])
  before = variables['batch_stats']
  assert jax.tree_util.tree_all(
    jax.tree_util.tree_map(np.array_equal, before['backbone'], frozen['batch_stats']['backbone'])
  )
  for name in ('attention3', 'attention4'):
    old = before[name]['mask']['bn1']['mean']
    assert not np.allclose(old, frozen['batch_stats'][name]['mask']['bn1']['mean'])
  # Control: without freezing, the backbone statistics do move.
  assert not np.allclose(
    before['backbone']['bn1']['mean'], unfrozen['batch_stats']['backbone']['bn1']['mean']
  )


def test_freeze_backbone_stops_gradients(tiny):
  model, variables, x = tiny

  @jax.jit
  def grad(params):
    def loss(params):
      out, _ = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']},
        x,
        train=True,
        freeze_backbone=True,
        mutable=['batch_stats'],
      )
      return jnp.sum(out['logits'] ** 2)

    return jax.grad(loss)(params)

  grads = grad(variables['params'])
  backbone = jax.tree_util.tree_leaves(grads['backbone'])
  assert len(backbone) == len(jax.tree_util.tree_leaves(variables['params']['backbone']))
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in backbone)
  for name in ('classifier', 'attention3', 'attention4'):
    assert all(float(jnp.max(jnp.abs(g))) > 0.0 for g in jax.tree_util.tree_leaves(grads[name]))


def test_freeze_backbone_in_eval_equals_eval(tiny):
  model, variables, x = tiny
  frozen = model.apply(variables, x, train=False, freeze_backbone=True)
  plain = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(frozen['logits'], plain['logits'])


def test_bfloat16_compute_is_close_to_float32(tiny):
  # Eval mode: train-mode BN over 2 samples at 1x1 (the last head conv) would amplify
  # rounding noise into +-1 flips and test nothing about mixed precision.
  model, variables, x = tiny
  out32 = model.apply(variables, x, train=False)
  bf16 = _tiny_model(dtype=jnp.bfloat16)
  # Compiled as one program: cheaper here than dispatching every bf16 op on its own.
  out16 = jax.jit(lambda v, x: bf16.apply(v, x, train=False))(variables, x)
  for key in ('logits', 'primary_logits', 'attention_logits'):
    assert out16[key].dtype == jnp.float32
    ref = np.asarray(out32[key])
    error = np.linalg.norm(np.asarray(out16[key]) - ref) / np.linalg.norm(ref)
    assert error < 0.03, (key, error)
  for a16, a32 in zip(out16['masks'], out32['masks'], strict=True):
    assert a16.dtype == jnp.float32
    np.testing.assert_allclose(np.sum(np.asarray(a16), axis=(1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a16, a32, atol=0.03 * float(jnp.max(a32)))


@pytest.mark.parametrize(
  'aggregation', ['feature_upsample', 'feature_maxpool', 'feature_strided_conv']
)
@pytest.mark.parametrize(
  'backbone, size',
  [('resnet18', (112, 112)), ('densenet121', (112, 112))],
)
def test_feature_aggregation_at_other_sizes(backbone, aggregation, size):
  # At 112 ResNet's level-4 map is 4x4 (ceil of 7 / 2) and DenseNet's 3x3 (floor).
  model = model_lib.AttributeModel(NUM_CLASSES, backbone, width=0.0625, aggregation=aggregation)
  out, variables = jax.eval_shape(
    lambda: model.init_with_output(_key(0), _images(*size, 1), train=False)
  )
  (h3, h4), (w3, w4) = _torch_taps(backbone, size[0]), _torch_taps(backbone, size[1])
  assert [a.shape[1:3] for a in out['masks']] == [(h3, w3), (h4, w4)]
  assert out['logits'].shape == (1, NUM_CLASSES)
  grid = (h3, w3) if aggregation == 'feature_upsample' else (h4, w4)
  kernel = variables['params']['attention_classifier']['conv3']['kernel']
  assert kernel.shape[:2] == grid


def test_backbone_creator_and_linear_pass_every_field():
  """`backbone.creator` sets the family's fields, the options, dtypes, head and name."""
  from jaxattr.models import backbone

  class Toy(nn.Module):
    channels: int
    blocks: int
    num_classes: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    extra: float = 0.0

    @nn.compact
    def __call__(self, x):
      return backbone.linear(
        self.channels, self.dtype, self.param_dtype, 'fc', nn.initializers.ones
      )(x)

  create = backbone.creator(Toy, lambda name, w, d: {'channels': int(8 * w), 'blocks': int(4 * d)})
  assert create.__name__ == 'create_toy'
  toy = create('toy', 0.5, jnp.bfloat16, num_classes=3, module_name='t', depth=0.5, extra=0.1)
  assert (toy.channels, toy.blocks, toy.num_classes, toy.extra) == (4, 2, 3, 0.1)
  assert (toy.dtype, toy.param_dtype, toy.name) == (jnp.bfloat16, jnp.float32, 't')
  params = toy.init(jax.random.key(0), jnp.ones((1, 2)))['params']
  # torch's nn.Linear(2, 4) under Flax's name: ones kernel, zero bias, so 2 per output.
  np.testing.assert_array_equal(params['fc']['kernel'], np.ones((2, 4), np.float32))
  np.testing.assert_array_equal(params['fc']['bias'], np.zeros(4, np.float32))
  np.testing.assert_array_equal(
    toy.apply({'params': params}, jnp.ones((1, 2))), 2 * np.ones((1, 4))
  )
