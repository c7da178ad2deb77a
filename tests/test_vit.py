"""Tests of jaxattr.models.vit: ViT-B/16 against the torch reference, through the converter.

The second implementation is `tests/torch_reference.VisionTransformerTorch`, written
from torchvision's `vision_transformer.py` on `torch.nn.MultiheadAttention`, its
position-embedding resize being torch's own `F.interpolate(mode='bicubic',
align_corners=True)` (torchvision's `interpolate_embeddings`). Random weights in
torchvision's layout (LayerNorm affine parameters, biases, class token and the
zero-initialised ImageNet head randomised so that a swapped or forgotten tensor
shows) go through `jaxattr.convert` into the Flax ViT.

Cost: the full-size vit_b_16 in float64 takes ~7 s per input size on 2 cores in each
framework, so the full-size model is checked once, at 224x224 (float64 and float32);
the non-square 256x128 input (a 16x8 grid, the position embedding resized) runs on a
3-block model of full width, the same code path (`create_vit(depth=1/4)`).
"""

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxattr import convert
from jaxattr.models import model as model_lib
from jaxattr.models import registry, vit
from tests import torch_reference

torch.set_num_threads(2)


def randomise(model: torch.nn.Module, seed: int) -> None:
  """Randomises what torchvision initialises to constants; eval mode."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if '.ln' in name and name.endswith('weight'):
        p.uniform_(0.5, 1.5, generator=g)
      elif name.endswith('bias'):
        p.normal_(0.0, 0.1, generator=g)
      elif name == 'class_token':
        p.normal_(0.0, 0.5, generator=g)
      elif name == 'heads.head.weight':
        p.normal_(0.0, 1 / math.sqrt(p.shape[1]), generator=g)
  model.eval()


def nhwc(t: torch.Tensor) -> np.ndarray:
  a = t.detach().numpy()
  return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope='module')
def full_size():
  """vit_b_16 with random weights, and its conversion with the ImageNet head."""
  torch.manual_seed(0)
  model = torch_reference.create_backbone('vit_b_16')
  randomise(model, 0)
  return model, convert.convert_state_dict('vit_b_16', model.state_dict(), include_head=True)


@pytest.fixture(scope='module')
def shallow():
  """The same architecture with 3 blocks (k1 after 2): the 256x128 checks run on it."""
  torch.manual_seed(1)
  model = torch_reference.VisionTransformerTorch(num_layers=3, tap_after=2)
  randomise(model, 1)
  flax_model = vit.create_vit('vit_b_16', num_classes=1000, depth=1 / 4)
  shapes = jax.eval_shape(
    lambda: flax_model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  )
  return model, convert.torch_to_flax(state_dict(model), shapes), 1 / 4


def _run_flax(variables, x, dtype, depth=1.0):
  model = vit.create_vit('vit_b_16', num_classes=1000, dtype=dtype, param_dtype=dtype, depth=depth)
  variables = jax.tree.map(lambda a: jnp.asarray(a, dtype), variables)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))(
    variables, jnp.asarray(x.transpose(0, 2, 3, 1))
  )


def _check_float64(model, variables, size, depth=1.0):
  x = np.random.default_rng(5).normal(size=(1, 3, *size))
  with torch.no_grad():
    ref = copy.deepcopy(model).double()(torch.from_numpy(x))
  with jax.enable_x64(True):
    out = _run_flax(variables, x, jnp.float64, depth)
    for key in ('k1', 'k2', 'pooled', 'logits'):
      assert out[key].dtype == jnp.float64, key
      assert out[key].shape == nhwc(ref[key]).shape, key
      assert max_diff(out[key], nhwc(ref[key])) < 1e-9, key


def _check_float32(model, variables, size, depth=1.0):
  """Flax float32 is as close to the exact (float64) result as torch float32 is."""
  x = np.random.default_rng(7).normal(size=(1, 3, *size)).astype(np.float32)
  with torch.no_grad():
    ref32 = model(torch.from_numpy(x))
    ref64 = copy.deepcopy(model).double()(torch.from_numpy(x).double())
  out = _run_flax(variables, x, jnp.float32, depth)
  for key in ('k1', 'k2', 'pooled', 'logits'):
    exact = nhwc(ref64[key])
    torch_error = max_diff(nhwc(ref32[key]), exact)
    flax_error = max_diff(out[key], exact)
    # A mapping error would put Flax off by errors of order one.
    assert flax_error <= 3 * torch_error + 1e-6, (key, flax_error, torch_error)


def test_full_size_parity_224(full_size):
  model, variables = full_size
  _check_float64(model, variables, (224, 224))
  _check_float32(model, variables, (224, 224))


@pytest.mark.parametrize('size', [(256, 128), (224, 224), (96, 160)])
def test_shallow_parity_with_resized_position_embedding(shallow, size):
  model, variables, depth = shallow
  _check_float64(model, variables, size, depth)
  if size == (256, 128):
    _check_float32(model, variables, size, depth)


# --- The pieces, each against torch or a hand computation ---------------------------


@pytest.mark.parametrize('align_corners', [True, False])
@pytest.mark.parametrize('n_in, n_out', [(14, 16), (14, 8), (14, 14), (5, 3), (3, 7), (14, 1)])
def test_bicubic_matrix_is_torch_interpolate(n_in, n_out, align_corners):
  grid = np.random.default_rng(0).normal(size=(n_in, n_in))
  rows = vit.bicubic_matrix(n_in, n_out, align_corners)
  cols = vit.bicubic_matrix(n_in, 5, align_corners)
  expected = F.interpolate(
    torch.from_numpy(grid)[None, None],
    size=(n_out, 5),
    mode='bicubic',
    align_corners=align_corners,
  )[0, 0].numpy()
  np.testing.assert_allclose(rows @ grid @ cols.T, expected, rtol=0, atol=1e-12)


def test_bicubic_kernel_is_torchs_not_jax_image_resize():
  """Hand values of the a = -0.75 kernel: 14 -> 8 with aligned corners samples 13/7 * j."""
  m = vit.bicubic_matrix(14, 8)
  t = 13 / 7 - 1  # dst 1 -> src 13/7: neighbours 0..3 at distances 1+t, t, 1-t, 2-t.
  a = -0.75
  near = lambda x: (a + 2) * x**3 - (a + 3) * x**2 + 1  # noqa: E731
  far = lambda x: a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a  # noqa: E731
  np.testing.assert_allclose(m[1, :4], [far(1 + t), near(t), near(1 - t), far(2 - t)], atol=1e-15)
  np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-14)
  np.testing.assert_array_equal(m[0], np.eye(14)[0])  # Corners map onto corners.
  np.testing.assert_array_equal(m[-1], np.eye(14)[-1])
  # jax.image.resize's cubic (a = -0.5, area-aligned) is a different filter.
  jax_resized = jax.image.resize(jnp.eye(14), (8, 14), method='cubic')
  assert max_diff(jax_resized, m) > 1e-2


def test_torchvision_names_map_to_flax_paths(full_size):
  """torchvision's names (from its vision_transformer.py) and the layouts of each."""
  _, variables = full_size
  params = variables['params']
  layer = params['encoder']['layers']['encoder_layer_11']
  expected = {
    ('class_token',): (1, 1, 768),
    ('conv_proj', 'kernel'): (16, 16, 3, 768),  # torch [768, 3, 16, 16]
    ('encoder', 'pos_embedding'): (1, 197, 768),
    ('heads', 'head', 'kernel'): (768, 1000),
  }
  for path, shape in expected.items():
    leaf = params
    for name in path:
      leaf = leaf[name]
    assert leaf.shape == shape, path
  assert layer['self_attention']['in_proj_weight'].shape == (768, 2304)  # torch [2304, 768]
  assert layer['self_attention']['out_proj']['kernel'].shape == (768, 768)
  assert layer['mlp']['0']['kernel'].shape == (768, 3072)
  assert layer['mlp']['3']['kernel'].shape == (3072, 768)
  assert set(layer) == {'ln_1', 'self_attention', 'ln_2', 'mlp'}
  assert set(layer['ln_1']) == {'scale', 'bias'}
  assert set(params['encoder']['layers']) == {f'encoder_layer_{i}' for i in range(12)}
  assert variables['batch_stats'] == {}


def test_torch_reference_has_torchvision_keys():
  """One block's keys as torchvision names them (its EncoderBlock / MLPBlock)."""
  model = torch_reference.VisionTransformerTorch(num_layers=1, width=1 / 16)
  keys = set(model.state_dict())
  block = 'encoder.layers.encoder_layer_0.'
  assert keys == {
    'class_token',
    'conv_proj.weight',
    'conv_proj.bias',
    'encoder.pos_embedding',
    'encoder.ln.weight',
    'encoder.ln.bias',
    'heads.head.weight',
    'heads.head.bias',
    *(
      block + name
      for name in (
        'ln_1.weight',
        'ln_1.bias',
        'self_attention.in_proj_weight',
        'self_attention.in_proj_bias',
        'self_attention.out_proj.weight',
        'self_attention.out_proj.bias',
        'ln_2.weight',
        'ln_2.bias',
        'mlp.0.weight',
        'mlp.0.bias',
        'mlp.3.weight',
        'mlp.3.bias',
      )
    ),
  }


def test_width_scales_the_head_dimension():
  assert registry.backbone_tap_channels('vit_b_16') == (768, 768)
  assert registry.backbone_tap_channels('vit_b_16', 1 / 16) == (48, 48)
  backbone = registry.create_backbone('vit_b_16', 1 / 16)
  out = jax.eval_shape(
    lambda: backbone.init_with_output(jax.random.key(0), jnp.zeros((2, 64, 32, 3)), train=False)
  )[0]
  assert {k: v.shape for k, v in out.items()} == {
    'k1': (2, 4, 2, 48),
    'k2': (2, 4, 2, 48),
    'pooled': (2, 48),
  }


def test_input_must_be_a_multiple_of_the_patch():
  backbone = registry.create_backbone('vit_b_16', 1 / 16)
  with pytest.raises(ValueError, match='multiple of the patch size 16'):
    backbone.init(jax.random.key(0), jnp.zeros((1, 40, 32, 3)), train=False)


def test_bfloat16_compute_keeps_norms_and_softmax_in_float32():
  # Two blocks keep the compile short; every block runs the same code.
  backbone32 = vit.create_vit('vit_b_16', 1 / 16, depth=1 / 6)
  backbone16 = vit.create_vit('vit_b_16', 1 / 16, dtype=jnp.bfloat16, depth=1 / 6)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 32, 3)), jnp.float32)
  variables = jax.jit(lambda x: backbone32.init(jax.random.key(0), x, train=False))(x)
  out32 = jax.jit(lambda v, x: backbone32.apply(v, x, train=False))(variables, x)
  out16 = jax.jit(lambda v, x: backbone16.apply(v, x, train=False))(variables, x)
  assert out16['k2'].dtype == out16['pooled'].dtype == jnp.float32  # LayerNorm output.
  assert out16['k1'].dtype == jnp.bfloat16  # The residual stream.
  scale = float(jnp.max(jnp.abs(out32['k2'])))
  assert max_diff(out16['k2'], out32['k2']) < 0.05 * scale


def test_attribute_model_reads_the_class_token():
  """The primary classifier sits where `heads.head` sat: on the class token."""
  # Three blocks (depth 1/4) keep the compile short; the head reads the same token.
  model = model_lib.AttributeModel(5, 'vit_b_16', width=1 / 16, depth=1 / 4)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 32, 3)), jnp.float32)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)
  out, captured = jax.jit(
    lambda v, x: model.apply(v, x, train=False, capture_intermediates=True, mutable=True)
  )(variables, x)
  taps = captured['intermediates']['backbone']['__call__'][0]
  dense = variables['params']['classifier']
  np.testing.assert_allclose(
    out['primary_logits'], taps['pooled'] @ dense['kernel'] + dense['bias'], rtol=1e-5, atol=1e-6
  )
  assert [a.shape for a in out['masks']] == [(2, 4, 2, 5), (2, 4, 2, 5)]


@pytest.mark.parametrize('aggregation', ['feature_upsample', 'feature_maxpool'])
def test_feature_aggregation_works_on_one_grid(aggregation):
  """ViT's taps share a grid: the resizes are identities; a stride-2 conv cannot fit."""
  model = model_lib.AttributeModel(3, 'vit_b_16', width=1 / 16, aggregation=aggregation)
  x = jnp.zeros((1, 32, 48, 3))
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False))[0]
  assert out['attention_logits'].shape == (1, 1, 3)
  assert [a.shape for a in out['masks']] == [(1, 2, 3, 3), (1, 2, 3, 3)]
  strided = model_lib.AttributeModel(
    3, 'vit_b_16', width=1 / 16, aggregation='feature_strided_conv'
  )
  with pytest.raises(ValueError, match='half the level-3 tap'):
    jax.eval_shape(lambda: strided.init(jax.random.key(0), x, train=False))


# --- The converter on ViT files -----------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_state_dict():
  """vit_b_16 at width 1/16 (D = 48, 12 blocks), random, as torch tensors."""
  torch.manual_seed(2)
  model = torch_reference.create_backbone('vit_b_16', 1 / 16)
  randomise(model, 2)
  return model.state_dict()


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors', '.npz'])
def test_convert_file_every_format(tiny_state_dict, tmp_path, suffix):
  from safetensors.torch import save_file

  path = tmp_path / f'vit_b_16-tiny{suffix}'
  if suffix == '.pth':
    torch.save(tiny_state_dict, path)
  elif suffix == '.safetensors':
    save_file({k: v.contiguous() for k, v in tiny_state_dict.items()}, path)
  else:
    np.savez(path, **{k: v.numpy() for k, v in tiny_state_dict.items()})
  meta = convert.convert_file('vit_b_16', path, tmp_path / 'out', include_head=True, width=1 / 16)
  assert meta['arch'] == 'vit_b_16' and meta['include_head']
  loaded = convert.load_backbone(tmp_path / 'out')
  assert 'heads' not in loaded['params']  # The ImageNet head never reaches training.
  np.testing.assert_array_equal(
    loaded['params']['encoder']['layers']['encoder_layer_3']['self_attention']['in_proj_weight'],
    tiny_state_dict['encoder.layers.encoder_layer_3.self_attention.in_proj_weight'].numpy().T,
  )
  expected = convert.convert_state_dict('vit_b_16', tiny_state_dict, width=1 / 16)
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)


def test_convert_refuses_by_name(tiny_state_dict):
  sd = {k: v.numpy() for k, v in tiny_state_dict.items()}
  del sd['encoder.layers.encoder_layer_5.ln_2.bias']
  sd['encoder.pos_embedding'] = sd['encoder.pos_embedding'][:, :50]
  sd['encoder.layers.encoder_layer_12.ln_1.weight'] = np.ones(48, np.float32)
  with pytest.raises(ValueError) as info:
    convert.convert_state_dict('vit_b_16', sd, width=1 / 16)
  message = str(info.value)
  assert 'encoder.layers.encoder_layer_5.ln_2.bias (48,)' in message
  assert 'encoder.pos_embedding: (1, 50, 48) in the file, (1, 197, 48) expected' in message
  assert 'encoder.layers.encoder_layer_12.ln_1.weight (48,)' in message
