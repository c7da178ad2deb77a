"""OpenAI CLIP image towers (ViT-B/16, ViT-L/14) in Flax linen, exposing two token grids.

Parameter paths are the `visual.*` state-dict names of OpenAI's CLIP files and of
open_clip's `VisionTransformer` (QuickGELU variant), by the naming rule of
`resnet.py` (split the key on '.', `weight` -> `kernel` for conv / linear and
`scale` for LayerNorm; conv kernels HWIO, linear kernels (in, out)). The tree:

  conv1                                 Conv2d(3, D, P, stride P), no bias
  class_embedding                       [D]
  positional_embedding                  [1 + (224 / P)^2, D]
  ln_pre                                LayerNorm(D, eps 1e-5)
  transformer.resblocks.{i}.ln_1        LayerNorm(D)
    .attn.in_proj_weight / in_proj_bias / out_proj   torch.nn.MultiheadAttention
    .ln_2, .mlp.c_fc (Linear D -> 4D), .mlp.c_proj (Linear 4D -> D)
  ln_post                               LayerNorm(D)
  proj                                  [D, E], applied as `x @ proj`

The converter maps a whole CLIP file by keeping the keys under `visual.` and
dropping the text tower by that name (`adapt_state_dict`); `positional_embedding`
and `proj` are 2-D tensors that are not linear weights, so the hook hands them to
the generic rule (which transposes every 2-D tensor) pre-transposed, and the Flax
parameters keep torch's layout.

The maths is open_clip's `VisionTransformer` in eval mode with OpenAI's settings:
patches, class token prepended, position embedding added, `ln_pre`, pre-norm blocks
`x + attn(ln_1(x))`, `+ mlp(ln_2(.))` with QuickGELU (`x * sigmoid(1.702 x)`),
then `ln_post` on every token and the class token projected by `proj`. Attention is
`vit.SelfAttention` (the same `torch.nn.MultiheadAttention` layout); LayerNorms
(two-pass variance) and the softmax run in float32 (or float64) whatever `dtype`
is, matmuls in `dtype`.

Outputs: `k1` = the patch tokens after block `tap_after` (8 of 12 for B/16, 16 of 24
for L/14: two thirds of the way up, as ViT-B/16's block 8), `k2` = the patch tokens
after the last block and `ln_post` (what open_clip's `output_tokens=True` returns),
both as [B, H/P, W/P, D]; `pooled` = the class token after `ln_post`, before `proj`,
which the attribute model's primary classifier reads: CLIP's own linear-probe
evaluation of its ViTs reads this pre-projection feature, it is D wide (768 / 1024)
rather than E (512 / 768), and it leaves `proj` to the contrastive space.
`embedding` = `pooled @ proj`, what open_clip's `encode_image` returns (E wide).

Input sizes: the position embedding was trained for 224x224; at another size (a
multiple of P) its patch part is resized bicubically in the forward pass by
`vit.resize_grid`, as for ViT-B/16, and the parameter keeps its 224 shape.

`width` scales the head dimension (64), the MLP width (4D) and E, keeping the heads
(12 / 16), and `depth` the blocks (`resnet.scale_blocks`), so test-size towers run the
same code path. `remat` recomputes each block's activations in the backward pass
(`backbone.remat_block`), trading compute for memory.
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxattr.models.backbone import creator, linear
from jaxattr.models.resnet import scale_channels, torch_linear_init
from jaxattr.models.vit import (
  EncoderLayers,
  SelfAttention,
  VisionTransformer,
  ViTSpec,
  layer_norm,
  patch_grid,
  resize_grid,
  spec_fields,
  spec_tap_channels,
  token_grids,
  with_class_token,
)

Array = jax.Array
Dtype = Any

LN_EPSILON = 1e-5  # torch's nn.LayerNorm default, which CLIP uses.
PREFIX = 'visual.'  # The image tower's keys in OpenAI's and open_clip's CLIP files.
# 2-D parameters that are not linear weights (see the module docstring).
_UNTRANSPOSED = ('positional_embedding', 'proj')


def quick_gelu(x: Array) -> Array:
  """OpenAI's QuickGELU, `x * sigmoid(1.702 x)`."""
  return x * jax.nn.sigmoid(1.702 * x)


class Mlp(nn.Module):
  """CLIP's `mlp`: `c_fc` Linear(D, M), QuickGELU, `c_proj` Linear(M, D)."""

  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    x = linear(self.mlp_dim, self.dtype, self.param_dtype, 'c_fc', *torch_linear_init(d))(x)
    x = quick_gelu(x)
    return linear(d, self.dtype, self.param_dtype, 'c_proj', *torch_linear_init(self.mlp_dim))(x)


class ResidualAttentionBlock(nn.Module):
  """Pre-norm block: `x + attn(ln_1(x))`, then `+ mlp(ln_2(.))`."""

  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dt, pdt = self.dtype, self.param_dtype
    y = SelfAttention(self.num_heads, dt, pdt, name='attn')(
      layer_norm(dt, pdt, 'ln_1', LN_EPSILON)(x)
    )
    x = x + y.astype(x.dtype)
    y = Mlp(self.mlp_dim, dt, pdt, name='mlp')(layer_norm(dt, pdt, 'ln_2', LN_EPSILON)(x))
    return x + y.astype(x.dtype)


# CLIP's `transformer.resblocks` Sequential (`0`, `1`, ...), returning the tap too.
Resblocks = functools.partial(EncoderLayers, block=ResidualAttentionBlock, prefix='')


class Transformer(nn.Module):
  """CLIP's `transformer`, which holds only `resblocks` (the field's name is its Flax name)."""

  resblocks: EncoderLayers

  def __call__(self, x: Array) -> tuple[Array, Array]:
    return self.resblocks(x)


class ClipVisionTransformer(VisionTransformer):
  """The image tower of OpenAI's CLIP ViTs (open_clip's `VisionTransformer`, QuickGELU).

  The fields are `VisionTransformer`'s (L/14: patch 14, 24 blocks, 16 heads, `tap_after`
  16), plus the width of the projected embedding; `num_classes` must stay None (CLIP has
  no ImageNet head: the contract's `logits`).

  Attributes:
    output_dim: E, the width of `embedding` at `width=1` (512 / 768), times `width`.
  """

  output_dim: int = 512

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
    """Runs the tower.

    Args:
      x: images [B, H, W, 3], already normalised (CLIP's mean and std); H and W
        multiples of `patch_size`.
      train: unused (no dropout, no BatchNorm); kept for the backbone interface.

    Returns:
      `{'k1', 'k2'}` [B, H/P, W/P, D] (k2 in float32 or wider), `'pooled'` [B, D] (the
      class token after `ln_post`) and `'embedding'` [B, E] (`pooled @ proj`).

    Raises:
      ValueError: if H or W is not a multiple of the patch size, or `num_classes` is set.
    """
    del train
    if self.num_classes is not None:
      raise ValueError('CLIP image towers have no ImageNet head; num_classes must be None.')
    dt, pdt, p = self.dtype, self.param_dtype, self.patch_size
    gh, gw = patch_grid('CLIP', x.shape, p)
    d = self.num_heads * scale_channels(self.head_dim, self.width)
    e = scale_channels(self.output_dim, self.width)
    # open_clip: Conv2d's default init (bound 1/sqrt(fan_in)); embeddings and proj
    # normal with std D^-0.5.
    x = nn.Conv(
      d,
      (p, p),
      strides=(p, p),
      padding='VALID',
      use_bias=False,
      kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
      dtype=dt,
      param_dtype=pdt,
      name='conv1',
    )(x)
    std = nn.initializers.normal(d**-0.5)
    cls = self.param('class_embedding', std, (d,), pdt)
    pos_grid = self.image_size // p
    pos = self.param('positional_embedding', std, (1 + pos_grid**2, d), pdt)
    pos = pos.astype(jnp.promote_types(pdt, jnp.float32))
    patches = resize_grid(pos[1:].reshape(pos_grid, pos_grid, d), (gh, gw))
    pos = jnp.concatenate([pos[:1], patches.reshape(gh * gw, d)], axis=0)
    tokens = with_class_token(cls, x)
    tokens = tokens + pos.astype(tokens.dtype)
    tokens = layer_norm(dt, pdt, 'ln_pre', LN_EPSILON)(tokens).astype(x.dtype)
    resblocks = Resblocks(  # Unbound (parent=None): `Transformer` adopts it as `resblocks`.
      self.num_layers,
      self.num_heads,
      scale_channels(self.mlp_dim, self.width),
      self.tap_after,
      self.remat,
      dt,
      pdt,
      parent=None,
    )
    tap, final = Transformer(resblocks, name='transformer')(tokens)
    final = layer_norm(dt, pdt, 'ln_post', LN_EPSILON)(final)
    proj = self.param('proj', std, (d, e), pdt)
    out = token_grids(tap, final, (gh, gw))
    pooled = out['pooled']
    out['embedding'] = jnp.matmul(
      pooled, proj.astype(pooled.dtype), precision=jax.lax.Precision.HIGHEST
    )
    return out


@dataclasses.dataclass(frozen=True)
class ClipSpec(ViTSpec):
  """The architecture of one OpenAI CLIP image tower (width 1): a ViT's, plus E."""

  output_dim: int = 512


CLIP_SPECS = {
  'clip_vit_b_16': ClipSpec(16, 12, 12, 768, 4 * 768, output_dim=512),
  'clip_vit_l_14': ClipSpec(14, 24, 16, 1024, 4 * 1024, output_dim=768),
}


def clip_tap_channels(name: str, width: float = 1.0) -> tuple[int, int]:
  """Channels of `k1` and `k2` (both D, e.g. (768, 768) for clip_vit_b_16 at width 1)."""
  return spec_tap_channels(CLIP_SPECS[name], width)


def clip_fields(name: str, width: float, depth: float) -> dict[str, Any]:
  """`ClipVisionTransformer`'s fields for `name` (`backbone.creator`): `vit.spec_fields`
  and E (`width` multiplies it too)."""
  spec = CLIP_SPECS[name]
  return {**spec_fields(spec, width, depth), 'output_dim': spec.output_dim}


create_clip = creator(ClipVisionTransformer, clip_fields)


def adapt_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A whole CLIP state dict -> the image tower's, for the generic converter rule.

  Keeps the keys under `visual.` without the prefix (the text tower, `logit_scale`
  and OpenAI's `input_resolution` / `context_length` / `vocab_size` entries are
  dropped by that name) and transposes `positional_embedding` and `proj`, which the
  rule's 2-D transpose then restores (see the module docstring).

  Args:
    state_dict: OpenAI's or open_clip's CLIP keys -> arrays.

  Returns:
    The image tower's keys -> arrays.

  Raises:
    ValueError: if no key starts with `visual.` (not a CLIP file).
  """
  visual = {k[len(PREFIX) :]: v for k, v in state_dict.items() if k.startswith(PREFIX)}
  if not visual:
    some = ', '.join(list(state_dict)[:5])
    raise ValueError(f'No `{PREFIX}*` tensors: not a CLIP state dict (its keys start: {some}).')
  for key in _UNTRANSPOSED:
    if key in visual and np.ndim(visual[key]) == 2:
      visual[key] = np.asarray(visual[key]).T
  return visual
