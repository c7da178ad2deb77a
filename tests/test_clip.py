"""Tests for jaxattr/models/clip.py against open_clip's own `VisionTransformer`, and `model.remat`.

open_clip (QuickGELU, OpenAI's settings) with every parameter drawn at random is the
reference: its state dict, under `visual.` beside text-tower tensors, goes through the
converter into the Flax tower, and the taps and the embedding are compared, in float64
to 1e-9 and in float32 against the reference's own float32 error. Test-size towers
(1/16 width, a quarter of the blocks) keep it fast; the full-size parameter counts come
from shapes alone (torch's `meta` device, `jax.eval_shape`).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxattr import convert
from jaxattr.models import clip, registry
from tests import open_clip_reference

WIDTH, DEPTH = 1 / 16, 0.25
TEXT_TOWER = {  # Whole CLIP files hold these too; the converter drops them by name.
  'positional_embedding': np.zeros((77, 8), np.float32),
  'text_projection': np.zeros((8, 4), np.float32),
  'token_embedding.weight': np.zeros((10, 8), np.float32),
  'transformer.resblocks.0.ln_1.weight': np.ones(8, np.float32),
  'logit_scale': np.ones((), np.float32),
}


def _reference(name: str, dtype: torch.dtype = torch.float64):
  """(open_clip tower at test size, randomised, eval mode; the converted Flax variables)."""
  torch.manual_seed(0)
  layers = clip.clip_fields(name, WIDTH, DEPTH)['num_layers']
  tower = open_clip_reference.vision_transformer(name, WIDTH, layers, output_tokens=True)
  open_clip_reference.randomize_(tower)
  tower = tower.to(dtype).eval()
  state_dict = {f'visual.{k}': v.double().numpy() for k, v in tower.state_dict().items()}
  variables = convert.convert_state_dict(
    name, {**state_dict, **TEXT_TOWER}, width=WIDTH, depth=DEPTH
  )
  return tower, variables


def _run_reference(tower, images: np.ndarray, tap_block: int):
  """open_clip's (embedding, ln_post tokens) and the tokens after block `tap_block` (1-based)."""
  seen = {}
  hook = tower.transformer.resblocks[tap_block - 1].register_forward_hook(
    lambda module, args, out: seen.__setitem__('k1', out)
  )
  dtype = next(tower.parameters()).dtype
  with torch.no_grad():
    embedding, tokens = tower(torch.from_numpy(images).permute(0, 3, 1, 2).to(dtype))
  hook.remove()
  return embedding.double().numpy(), tokens.double().numpy(), seen['k1'][:, 1:].double().numpy()


def _flax(name: str, dtype, variables, images):
  module = registry.create_backbone(name, WIDTH, depth=DEPTH, dtype=dtype, param_dtype=dtype)
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), variables['params'])
  return jax.jit(lambda p, x: module.apply({'params': p}, x))(params, jnp.asarray(images, dtype))


def _images(n: int = 2, size: int = 224, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((n, size, size, 3))


@pytest.mark.parametrize('name', ['clip_vit_b_16', 'clip_vit_l_14'])
def test_taps_and_embedding_equal_open_clip_in_float64(name, float64):
  tower, variables = _reference(name)
  fields = clip.clip_fields(name, WIDTH, DEPTH)
  images = _images()
  embedding, tokens, k1 = _run_reference(tower, images, fields['tap_after'])
  out = _flax(name, jnp.float64, variables, images)
  grid = 224 // fields['patch_size']  # 14 for B/16, 16 for L/14
  d = clip.clip_tap_channels(name, WIDTH)[0]
  assert out['k1'].shape == out['k2'].shape == (2, grid, grid, d)
  np.testing.assert_allclose(out['k1'], k1.reshape(2, grid, grid, d), rtol=0, atol=1e-9)
  np.testing.assert_allclose(out['k2'], tokens.reshape(2, grid, grid, d), rtol=0, atol=1e-9)
  np.testing.assert_allclose(out['embedding'], embedding, rtol=0, atol=1e-9)
  # `pooled` is the class token before `proj`: the embedding is pooled @ proj.
  proj = variables['params']['proj']
  np.testing.assert_allclose(np.asarray(out['pooled']) @ proj, embedding, rtol=0, atol=1e-9)


def test_float32_embedding_is_within_the_references_own_float32_error(float64):
  """Both towers compute the same function in float32, summing in different orders, so
  their rounding errors are of the same size: open_clip's own float32 error against its
  float64 result (at 224x224) bounds ours, with a factor 4 for the order of summation."""
  name = 'clip_vit_b_16'
  tower64, variables = _reference(name)
  tower32, _ = _reference(name, torch.float32)
  images = _images(seed=1)
  tap = clip.clip_fields(name, WIDTH, DEPTH)['tap_after']
  exact = _run_reference(tower64, images, tap)[0]
  reference_error = np.abs(_run_reference(tower32, images, tap)[0] - exact).max()
  ours = np.asarray(_flax(name, jnp.float32, variables, images)['embedding'], np.float64)
  assert 0 < reference_error < 1e-4
  assert np.abs(ours - exact).max() <= 4 * reference_error


@pytest.mark.parametrize('name', ['clip_vit_b_16', 'clip_vit_l_14'])
def test_full_size_parameter_count_equals_open_clips(name):
  with torch.device('meta'):  # Shapes only: nothing is allocated.
    tower = open_clip_reference.vision_transformer(name)
  open_clip_count = sum(p.numel() for p in tower.parameters())
  shapes = jax.eval_shape(
    lambda: registry.create_backbone(name).init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), False
    )
  )
  flax_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))
  assert flax_count == open_clip_count == registry.get(name).num_params
  expected = {'clip_vit_b_16': 86_192_640, 'clip_vit_l_14': 303_966_208}  # open_clip 3.3
  assert open_clip_count == expected[name]


def test_bfloat16_tower_keeps_norms_and_grid_in_float32():
  module = registry.create_backbone('clip_vit_l_14', WIDTH, depth=DEPTH, dtype=jnp.bfloat16)
  out, _ = jax.eval_shape(
    lambda: module.init_with_output(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), False)
  )
  assert out['k2'].dtype == out['pooled'].dtype == out['embedding'].dtype == jnp.float32
  assert out['k1'].dtype == jnp.bfloat16
  assert out['k1'].shape[1:3] == (16, 16)  # L/14 at 224.


def test_converter_keeps_the_image_tower_and_refuses_a_file_without_one():
  tower, variables = _reference('clip_vit_b_16', torch.float32)
  state = {k: v.numpy() for k, v in tower.state_dict().items()}
  # torch's [1 + N, D] embedding and [D, E] projection arrive untransposed.
  np.testing.assert_array_equal(
    variables['params']['positional_embedding'], state['positional_embedding']
  )
  np.testing.assert_array_equal(variables['params']['proj'], state['proj'])
  np.testing.assert_array_equal(
    variables['params']['transformer']['resblocks']['0']['attn']['in_proj_weight'],
    state['transformer.resblocks.0.attn.in_proj_weight'].T,
  )
  with pytest.raises(ValueError, match='not a CLIP state dict'):
    convert.convert_state_dict('clip_vit_b_16', state, width=WIDTH, depth=DEPTH)


def _gradients(name: str, remat: bool, size: int, depth: float):
  module = registry.create_backbone(
    name, WIDTH, depth=depth, remat=remat, dtype=jnp.float64, param_dtype=jnp.float64
  )
  x = jnp.asarray(_images(2, size, seed=2), jnp.float64)
  variables = module.init(jax.random.key(0), x, False)

  def loss(params):
    out, _ = module.apply({**variables, 'params': params}, x, True, mutable=['batch_stats'])
    return jnp.sum(out['k1'] ** 2) + jnp.sum(out['k2'] ** 2)

  grad = jax.grad(loss)
  # The rematerialised blocks show as `remat` (jax.checkpoint) equations in the program.
  traced = str(jax.make_jaxpr(grad)(variables['params']))
  return jax.jit(grad)(variables['params']), re.search(r'= remat\w*\[', traced) is not None


@pytest.mark.parametrize('name, size, depth', [('resnet18', 64, 0.5), ('clip_vit_b_16', 32, DEPTH)])
def test_remat_gives_the_same_gradients(name, size, depth, float64):
  plain, plain_checkpoints = _gradients(name, False, size, depth)
  remat, remat_checkpoints = _gradients(name, True, size, depth)
  assert remat_checkpoints and not plain_checkpoints
  assert jax.tree.structure(plain) == jax.tree.structure(remat)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
  'recipe,arg',
  [('peta', 'clip_vit_l_14'), ('pa100k', 'frozen,clip_vit_b_16'), ('wider', 'clip_vit_b_16')],
)
def test_clip_recipe_is_a_valid_config(recipe, arg):
  from jaxattr import pretrained, schema

  config = schema.load_recipe(recipe).get_config(arg)
  config.data.manual_dir = '/'  # The datasets' sources are not needed to check the fields.
  assert schema.validate(config, num_devices=1) == []
  backbone = 'clip_vit_b_16' if 'clip_vit_b_16' in arg else 'clip_vit_l_14'
  assert config.model.backbone == backbone
  assert config.recipe == 'clip'
  # PromptPAR's numbers (Event-AHU/OpenPAR, PromptPAR/config.py): SGD at 8e-3, CLIP's mean.
  assert (config.optimizer.name, config.optimizer.learning_rate) == ('sgd', 8e-3)
  assert tuple(config.data.mean) == (0.48145466, 0.4578275, 0.40821073)
  assert pretrained.published_spec(backbone) == {'clip_vit_b_16': 'openai:ViT-B-16'}.get(
    backbone, 'openai:ViT-L-14'
  )
  frozen = config.train.freeze_backbone_epochs >= config.train.num_epochs
  assert frozen == ('frozen' in arg)


def test_schema_checks_openai_names_against_the_backbone():
  from jaxattr import schema

  config = schema.load_recipe('peta').get_config('clip_vit_b_16')
  config.data.manual_dir = '/'
  config.model.remat = True
  config.model.pretrained = 'openai:ViT-L-14'
  (problem,) = schema.validate(config, num_devices=1)
  assert 'openai:ViT-L-14 are weights of clip_vit_l_14' in problem
  config.model.pretrained = 'openai:ViT-B-32'
  (problem,) = schema.validate(config, num_devices=1)
  assert 'unknown CLIP model' in problem and 'openai:ViT-B-16' in problem
