"""Tests of jaxattr.models.swin and jaxattr.models.convnext against plain-torch references.

The second implementation is `tests/torch_swin_convnext.py`: torch.nn modules with
torchvision's module names and maths (their parameter counts equal torchvision's
published ones, asserted here). Random weights, with every tensor torchvision
initialises to a constant randomised (LayerNorms, biases, Swin's bias tables,
ConvNeXt's layer scales), go from the torch state dict through the generic converter
(`jaxattr.convert.torch_to_flax`, after `swin.adapt_state_dict`) into the Flax
backbone, which must reproduce the torch outputs: exactly in float64 (taps and the
pooled vector within 1e-9; the logits, which the backbone returns in float32, to
float32 rounding) and, in float32, as closely as torch float32 itself is to the exact
result.

Sizes and depths: swin_t and convnext_tiny run in full (every block) at 224x224 in
float64. The other parity checks (float64 at 256x128, float32 at 224x224 and 256x128,
bf16) run the same code at full width with fewer blocks per stage (`REDUCED_DEPTHS`:
both Swin block kinds where the maps are smallest, a CNBlock in every stage):
each full-depth compile and float64 torch pass costs seconds, and the blocks left
out repeat ones that are kept. 256x128 (the pedestrian crops) is where Swin pads
windows: stage 4 is 8x4, padded to 14x7 and shifted along the height only. Odd sizes
(odd maps into patch merging, maps one window covers) run on narrow models.
"""

import copy

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn

from jaxattr.convert import torch_to_flax
from jaxattr.models import convnext, swin
from tests import test_models
from tests import torch_swin_convnext as reference

torch.set_num_threads(2)

# torchvision's published `num_params` of the IMAGENET1K_V1 weights (model docs), the
# table of tests/test_models.py restricted to Swin and ConvNeXt.
TORCHVISION_PARAMS = {
  arch: count
  for arch, count in test_models.TORCHVISION_PARAMS.items()
  if arch.startswith(('swin', 'convnext'))
}
# Blocks per stage of the reduced-depth parity runs (full width): shifted and unshifted
# Swin blocks in stages 3 and 4 (the full-size run covers stages 1 and 2), a CNBlock
# in every stage.
REDUCED_DEPTHS = {'swin_t': (1, 1, 2, 2), 'convnext_tiny': (1, 1, 2, 1)}
SIZE_256 = (256, 128)
TEST_WIDTH = 0.0625  # The CPU-scale variant (as configs/test.py's ResNet).


def numpy_state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def torch_model(arch: str, depths=None) -> torch.nn.Module:
  if arch.startswith('swin'):
    return reference.swin(arch, depths)
  return reference.convnext(arch, depths)


def flax_model(arch: str, depths=None, dtype=jnp.float32, param_dtype=None) -> nn.Module:
  """The Flax twin of `torch_model(arch, depths)` at width 1, with the 1000-class head."""
  param_dtype = param_dtype or dtype
  if arch.startswith('swin'):
    spec = swin.SWIN_SPECS[arch]
    return swin.Swin(
      spec.embed_dim, depths or spec.depths, spec.num_heads, 1000, dtype=dtype,
      param_dtype=param_dtype,
    )  # fmt: skip
  spec = convnext.CONVNEXT_SPECS[arch]
  return convnext.ConvNeXt(
    spec.channels, depths or spec.depths, 1000, dtype=dtype, param_dtype=param_dtype
  )


def convert(module: nn.Module, state_dict: dict, size=(64, 64)) -> dict:
  """The torch state dict mapped onto `module`'s variables (Swin: after the adapt hook)."""
  dtype = jnp.float64 if module.dtype == jnp.float64 else jnp.float32
  expected = jax.eval_shape(
    lambda: module.init(jax.random.key(0), jnp.zeros((1, *size, 3), dtype), train=False)
  )
  if isinstance(module, swin.Swin):
    state_dict = swin.adapt_state_dict(state_dict)
  return torch_to_flax(state_dict, expected)


def apply(module: nn.Module, variables: dict, x_nchw: np.ndarray) -> dict:
  x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))
  return jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)


def torch_outputs(model: torch.nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
  with torch.no_grad():
    return {k: v.numpy() for k, v in model(torch.from_numpy(x)).items()}


# --- Parity with the torch reference -------------------------------------------------


@pytest.mark.parametrize('arch', ['swin_t', 'convnext_tiny'])
def test_parity_full_size_float64_224(arch):
  """The full architecture at 224x224, float64 on both sides: exact."""
  torch.manual_seed(0)
  model = torch_model(arch)
  reference.randomise(model, 0)
  x = np.random.default_rng(5).normal(size=(1, 3, 224, 224))
  with jax.enable_x64(True):
    module = flax_model(arch, dtype=jnp.float64)
    got = apply(module, convert(module, numpy_state_dict(model)), x)
  ref = torch_outputs(model.double(), x)
  for key in ('k1', 'k2', 'pooled'):
    assert got[key].shape == ref[key].shape, key
    assert got[key].dtype == jnp.float64, key
    assert max_diff(got[key], ref[key]) < 1e-9, (arch, key)
  assert got['k1'].shape[1:3] == (14, 14) and got['k2'].shape[1:3] == (7, 7)
  # The backbone returns float32 logits: float32 rounding of O(1) values.
  assert got['logits'].dtype == jnp.float32
  assert max_diff(got['logits'], ref['logits']) < 1e-5, arch


class Reduced:
  """One reduced-depth, full-width model in torch and Flax; outputs computed once."""

  def __init__(self, arch: str):
    self.arch = arch
    self.depths = REDUCED_DEPTHS[arch]
    torch.manual_seed(1)
    self.model = torch_model(arch, self.depths)
    reference.randomise(self.model, 1)
    self.state_dict = numpy_state_dict(self.model)
    self.variables = convert(flax_model(arch, self.depths), self.state_dict)
    self._cache = {}

  def outputs(self, kind: str, size: tuple[int, int]) -> dict:
    """kind: 'torch32', 'torch64', 'flax32', 'flax64' or 'flax_bf16'."""
    if (kind, size) not in self._cache:
      x = np.random.default_rng(size[0] + size[1]).normal(size=(1, 3, *size))
      if kind.startswith('torch'):
        model = copy.deepcopy(self.model)
        x = x if kind == 'torch64' else x.astype(np.float32)
        out = torch_outputs(model.double() if kind == 'torch64' else model, x)
      elif kind == 'flax64':
        with jax.enable_x64(True):
          module = flax_model(self.arch, self.depths, jnp.float64)
          variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), self.variables)
          out = apply(module, variables, x)
      else:
        dtype = jnp.bfloat16 if kind == 'flax_bf16' else jnp.float32
        module = flax_model(self.arch, self.depths, dtype, param_dtype=jnp.float32)
        out = apply(module, self.variables, x.astype(np.float32))
      self._cache[(kind, size)] = out
    return self._cache[(kind, size)]


@pytest.fixture(scope='module', params=['swin_t', 'convnext_tiny'])
def reduced(request) -> Reduced:
  return Reduced(request.param)


def test_parity_float64_256x128(reduced):
  """Exact at the pedestrian size, where Swin pads its windows (stage 4: 8x4 -> 14x7)."""
  ref, got = reduced.outputs('torch64', SIZE_256), reduced.outputs('flax64', SIZE_256)
  for key in ('k1', 'k2', 'pooled'):
    assert got[key].shape == ref[key].shape, key
    assert max_diff(got[key], ref[key]) < 1e-9, (reduced.arch, key)
  assert got['k1'].shape[1:3] == (16, 8) and got['k2'].shape[1:3] == (8, 4)
  assert max_diff(got['logits'], ref['logits']) < 1e-5


@pytest.mark.parametrize('size', [(224, 224), SIZE_256], ids=['224x224', '256x128'])
def test_parity_float32(reduced, size):
  """Flax float32 is as close to the exact result as torch float32 is.

  A mapping error would put Flax off by errors of order one; the float64 tests show
  the mapping is exact.
  """
  exact = reduced.outputs('torch64', size)
  torch32, flax32 = reduced.outputs('torch32', size), reduced.outputs('flax32', size)
  assert max_diff(flax32['logits'], torch32['logits']) < 1e-4
  for key in ('k1', 'k2', 'pooled', 'logits'):
    torch_error = max_diff(torch32[key], exact[key])
    flax_error = max_diff(flax32[key], exact[key])
    assert flax_error <= 3 * torch_error + 1e-6, (reduced.arch, size, key, flax_error, torch_error)


def test_bfloat16_close_to_float32(reduced):
  """bf16 compute (float32 parameters, norms and softmax) stays near the float32 result."""
  f32, bf16 = reduced.outputs('flax32', SIZE_256), reduced.outputs('flax_bf16', SIZE_256)
  assert bf16['k1'].dtype == bf16['k2'].dtype == jnp.bfloat16
  assert bf16['pooled'].dtype == bf16['logits'].dtype == jnp.float32
  for key in ('k1', 'k2', 'pooled', 'logits'):
    scale = float(np.max(np.abs(f32[key])))
    # bf16 keeps 8 significant bits (relative 0.4%); a few blocks compound it.
    assert max_diff(bf16[key], f32[key]) < 0.05 * scale, (reduced.arch, key)


@pytest.mark.parametrize('arch,size', [('swin_t', (100, 60)), ('convnext_tiny', (97, 75))])
def test_parity_odd_sizes(arch, size):
  """Odd maps: Swin's padded windows and patch merging; ConvNeXt's floored strides.

  Swin at 100x60: stage 1 is 25x15 (padded to 28x21), merging pads 25 -> 26 and
  15 -> 16; stage 2 (13x8, padded to 14x14) shifts; stage 3 is 7x4 and stage 4
  4x2, which one window covers: its odd block does not shift. A narrow, shallow
  model (width 1/4: 8 channels per head), exact in float64.
  """
  with jax.enable_x64(True):
    if arch == 'swin_t':
      embed, depths, heads = 24, (1, 2, 1, 2), swin.SWIN_SPECS[arch].num_heads
      model = reference.SwinTorch(embed, depths, heads, num_classes=10)
      module = swin.Swin(embed, depths, heads, 10, dtype=jnp.float64, param_dtype=jnp.float64)
    else:
      channels, depths = (24, 48, 96, 192), (1, 1, 2, 1)
      model = reference.ConvNeXtTorch(channels, depths, num_classes=10)
      module = convnext.ConvNeXt(channels, depths, 10, dtype=jnp.float64, param_dtype=jnp.float64)
    torch.manual_seed(3)
    reference.randomise(model, 3)
    variables = convert(module, numpy_state_dict(model))
    x = np.random.default_rng(3).normal(size=(2, 3, *size))
    ref = torch_outputs(model.double(), x)
    got = apply(module, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables), x)
  for key in ('k1', 'k2', 'pooled'):
    assert got[key].shape == ref[key].shape, key
    assert max_diff(got[key], ref[key]) < 1e-9, (arch, key)
  assert max_diff(got['logits'], ref['logits']) < 1e-5


def test_depthwise_conv_reference_is_torch_conv():
  """The float64 fast path of the torch reference equals torch's grouped convolution."""
  torch.manual_seed(0)
  conv = torch.nn.Conv2d(5, 5, 7, padding=3, groups=5).double()
  x = torch.randn(2, 5, 9, 12, dtype=torch.float64)
  with torch.no_grad():
    assert max_diff(reference.depthwise_conv(x, conv), conv(x)) < 1e-12


# --- Parameter counts, names and layouts ---------------------------------------------


@pytest.mark.parametrize('arch', sorted(TORCHVISION_PARAMS))
def test_parameter_counts_equal_torchvision(arch):
  create = swin.create_swin if arch.startswith('swin') else convnext.create_convnext
  module = create(arch, num_classes=1000)
  shapes = jax.eval_shape(
    lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  )
  assert set(shapes) == {'params'}
  assert sum(a.size for a in jax.tree.leaves(shapes)) == TORCHVISION_PARAMS[arch]
  with torch.device('meta'):
    model = torch_model(arch)
  assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[arch]


@pytest.fixture(scope='module')
def tiny_swin():
  """A narrow 2-2-2-2 Swin in torch (random) and its conversion."""
  torch.manual_seed(2)
  model = reference.SwinTorch(12, (2, 2, 2, 2), (3, 6, 12, 24), num_classes=10)
  reference.randomise(model, 2)
  module = swin.Swin(12, (2, 2, 2, 2), (3, 6, 12, 24), 10)
  sd = numpy_state_dict(model)
  return sd, convert(module, sd)['params']


def test_swin_layouts_by_hand(tiny_swin):
  sd, params = tiny_swin
  attn = params['features']['3']['1']['attn']
  table = sd['features.3.1.attn.relative_position_bias_table']  # [(2W-1)^2, heads]
  assert table.shape == (169, 6)
  assert attn['relative_position_bias_table'].shape == (6, 169)
  for r, h in [(0, 0), (168, 5), (84, 2)]:
    assert attn['relative_position_bias_table'][h, r] == table[r, h]
  qkv = sd['features.3.1.attn.qkv.weight']  # [3C, C]
  assert attn['qkv']['kernel'][5, 40] == qkv[40, 5]
  patch = sd['features.0.0.weight']  # OIHW [12, 3, 4, 4]
  assert params['features']['0']['0']['kernel'][3, 1, 2, 11] == patch[11, 2, 3, 1]
  np.testing.assert_array_equal(params['features']['0']['2']['scale'], sd['features.0.2.weight'])
  merge = sd['features.2.reduction.weight']  # [2C, 4C], no bias
  assert params['features']['2']['reduction'].keys() == {'kernel'}
  assert params['features']['2']['reduction']['kernel'][47, 23] == merge[23, 47]
  assert params['features']['1']['0']['mlp'].keys() == {'0', '3'}
  assert params['head']['kernel'].shape == (96, 10)


def test_convnext_layouts_by_hand():
  torch.manual_seed(4)
  model = reference.ConvNeXtTorch((8, 16, 32, 64), (1, 1, 1, 1), num_classes=10)
  reference.randomise(model, 4)
  sd = numpy_state_dict(model)
  params = convert(convnext.ConvNeXt((8, 16, 32, 64), (1, 1, 1, 1), 10), sd)['params']
  block = params['features']['5']['0']
  dw = sd['features.5.0.block.0.weight']  # [C, 1, 7, 7]
  assert block['block']['0']['kernel'].shape == (7, 7, 1, 32)
  assert block['block']['0']['kernel'][6, 2, 0, 31] == dw[31, 0, 6, 2]
  np.testing.assert_array_equal(block['layer_scale'], sd['features.5.0.layer_scale'])
  assert block['layer_scale'].shape == (32, 1, 1)
  assert block['block'].keys() == {'0', '2', '3', '5'}
  down = sd['features.6.1.weight']  # [64, 32, 2, 2]
  assert params['features']['6']['1']['kernel'][1, 0, 30, 63] == down[63, 30, 1, 0]
  np.testing.assert_array_equal(params['classifier']['0']['bias'], sd['classifier.0.bias'])
  assert params['classifier']['2']['kernel'][3, 9] == sd['classifier.2.weight'][9, 3]
  # Without classes the backbone keeps classifier.0 (it makes `pooled`), not classifier.2.
  shapes = jax.eval_shape(
    lambda: convnext.ConvNeXt((8, 16, 32, 64), (1, 1, 1, 1)).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
    )
  )
  assert shapes['params']['classifier'].keys() == {'0'}


def test_adapt_state_dict_drops_checked_index(tiny_swin):
  sd, _ = tiny_swin
  index_keys = [k for k in sd if k.endswith('relative_position_index')]
  assert len(index_keys) == 8  # One per block, as torchvision saves them.
  adapted = swin.adapt_state_dict(sd)
  assert set(adapted) == set(sd) - set(index_keys)
  assert swin.adapt_state_dict(adapted) == adapted  # Files without the buffers pass.
  bad = dict(sd)
  bad['features.5.1.attn.relative_position_index'] = sd[index_keys[0]][::-1].copy()
  with pytest.raises(ValueError, match=r'features\.5\.1\.attn\.relative_position_index'):
    swin.adapt_state_dict(bad)


def test_relative_position_index_and_mask_by_hand():
  # W = 2: tokens (0,0) (0,1) (1,0) (1,1); index (dh + 1) * 3 + (dw + 1), d = i - j.
  index = swin.relative_position_index(2).reshape(4, 4)
  assert index[0, 0] == 4 and index[0, 1] == 3 and index[1, 0] == 5
  assert index[0, 3] == 0 and index[3, 0] == 8 and index[2, 1] == 6
  np.testing.assert_array_equal(
    swin.relative_position_index(7), reference.relative_position_index(7).numpy()
  )
  # 14x14 map, window 7, shift 3: rows/columns 0-6 | 7-10 | 11-13 are regions.
  mask = swin.shift_mask(14, 14, 7, 3, 3)
  assert mask.shape == (4, 49, 49)
  assert np.all(mask[0] == 0)  # The top-left window holds one region.
  assert mask[1, 0, 3] == 0 and mask[1, 0, 4] == -100  # Columns 10 | 11.
  assert mask[2, 0, 21] == 0 and mask[2, 0, 28] == -100  # Rows 10 | 11.
  # Bottom-right: token 0 is (7, 7), 24 is (10, 10), 32 is (11, 11), 48 is (13, 13).
  assert mask[3, 0, 24] == 0 and mask[3, 0, 32] == -100 and mask[3, 48, 32] == 0
  assert mask[3, 0, 4] == -100 and mask[3, 0, 28] == -100  # (7, 11), (11, 7).
  # No shift along the width: only the rows split windows.
  mask = swin.shift_mask(14, 7, 7, 3, 0)
  assert mask.shape == (2, 49, 49)
  assert np.all(mask[0] == 0) and mask[1, 0, 6] == 0 and mask[1, 0, 28] == -100


# --- Test-scale variants, bf16, stochastic depth ---------------------------------------


@pytest.mark.parametrize('arch', sorted(TORCHVISION_PARAMS))
def test_tap_channels(arch):
  is_swin = arch.startswith('swin')
  taps = swin.swin_tap_channels if is_swin else convnext.convnext_tap_channels
  full = (512, 1024) if arch in ('swin_b', 'convnext_base') else (384, 768)
  assert taps(arch) == full
  # Width 1/16: Swin keeps the heads with 2 channels each; ConvNeXt divides by 16.
  assert taps(arch, TEST_WIDTH) == (full[0] // 16, full[1] // 16)


@pytest.mark.parametrize('arch', ['swin_t', 'convnext_tiny'])
def test_test_variant_tap_shapes(arch):
  """The CPU-scale variant (width 1/16) at 224x224 and 256x128: the taps' grids."""
  is_swin = arch.startswith('swin')
  create = swin.create_swin if is_swin else convnext.create_convnext
  c1, c2 = (swin.swin_tap_channels if is_swin else convnext.convnext_tap_channels)(arch, TEST_WIDTH)
  module = create(arch, TEST_WIDTH)
  for (h, w), (g1, g2) in [((224, 224), ((14, 14), (7, 7))), ((256, 128), ((16, 8), (8, 4)))]:
    out = jax.eval_shape(
      lambda x: module.init_with_output(jax.random.key(0), x, train=False)[0],
      jnp.zeros((2, h, w, 3)),
    )
    assert out['k1'].shape == (2, *g1, c1)
    assert out['k2'].shape == (2, *g2, c2)
    assert out['pooled'].shape == (2, c2)
    assert 'logits' not in out


class _Branch(nn.Module):
  rate: float

  @nn.compact
  def __call__(self, x, train):
    return swin.stochastic_depth(self, x, self.rate, train)


def test_stochastic_depth_drops_whole_samples():
  x = jnp.ones((4000, 3))
  out = np.asarray(_Branch(0.25).apply({}, x, True, rngs={'dropout': jax.random.key(1)}))
  kept = out[:, 0] > 0
  np.testing.assert_array_equal(out[kept], np.float32(1 / 0.75))  # Survivors: / (1 - p).
  np.testing.assert_array_equal(out[~kept], 0.0)  # Whole rows dropped.
  assert abs(np.mean(~kept) - 0.25) < 0.03  # 4 standard deviations of 4000 draws.
  np.testing.assert_array_equal(_Branch(0.25).apply({}, x, False), x)  # Eval: identity.
  np.testing.assert_array_equal(
    _Branch(1.0).apply({}, x, True, rngs={'dropout': jax.random.key(1)}), 0.0
  )


def test_block_drop_rates_follow_torchvision():
  # torchvision: block k of n (counted over all stages) drops with prob * k / (n - 1).
  rates = swin.block_drop_rates((2, 2, 6, 2), 0.2)
  assert [len(r) for r in rates] == [2, 2, 6, 2]
  assert rates[0][0] == 0.0 and rates[3][1] == pytest.approx(0.2)
  assert rates[2][0] == pytest.approx(0.2 * 4 / 11)
  assert swin.block_drop_rates((1, 1, 1, 1), 0.0) == ((0.0,), (0.0,), (0.0,), (0.0,))


@pytest.mark.parametrize('arch', ['swin_t', 'convnext_tiny'])
def test_stochastic_depth_only_in_training(arch):
  """Off by default: training needs no RNG; with a rate it draws in training only."""
  is_swin = arch.startswith('swin')
  create = swin.create_swin if is_swin else convnext.create_convnext
  x = jnp.zeros((2, 32, 32, 3))
  off, on = create(arch, TEST_WIDTH), create(arch, TEST_WIDTH, stochastic_depth_prob=0.1)
  shapes = jax.eval_shape(lambda: off.init(jax.random.key(0), x, train=False))
  # Tracing is enough: a draw without a 'dropout' RNG fails while tracing.
  jax.eval_shape(lambda v: off.apply(v, x, train=True), shapes)
  jax.eval_shape(lambda v: on.apply(v, x, train=True, rngs={'dropout': jax.random.key(1)}), shapes)
  with pytest.raises(flax.errors.InvalidRngError):
    jax.eval_shape(lambda v: on.apply(v, x, train=True), shapes)
