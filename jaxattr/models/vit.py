"""ViT-B/16 (torchvision `vit_b_16` layout) in Flax linen, exposing two token grids.

Parameter paths are torchvision's state-dict names by the rule of `resnet.py` (split
the key on '.', `weight` -> `kernel` for conv / linear and `scale` for LayerNorm;
conv kernels HWIO, linear kernels (in, out)). torchvision's tree:

  conv_proj                              Conv2d(3, D, 16, stride 16), with bias
  class_token                            [1, 1, D]
  encoder.pos_embedding                  [1, 1 + 14 * 14, D]
  encoder.layers.encoder_layer_{i}.ln_1  LayerNorm(D, eps 1e-6)
    .self_attention.in_proj_weight       [3D, D] (q, k, v stacked), here (D, 3D)
    .self_attention.in_proj_bias         [3D]
    .self_attention.out_proj             Linear(D, D)
    .ln_2, .mlp.0 (Linear D -> 4D), .mlp.3 (Linear 4D -> D)
  encoder.ln                             the final LayerNorm
  heads.head                             Linear(D, 1000) (only when `num_classes` is set)

`in_proj_weight` is a 2-D tensor that is not called `weight`: the generic rule keeps
its name and transposes it like any linear weight, so the Flax parameter is the
(in, out) matrix `x @ in_proj_weight` multiplies by.

The maths is torchvision's in eval mode (dropout 0): pre-norm blocks
`x + MHA(ln_1(x))`, then `+ mlp(ln_2(.))` with exact (erf) GELU; multi-head attention
as `torch.nn.MultiheadAttention` (queries scaled by 1/sqrt(head dim), softmax over
keys, heads concatenated, `out_proj`). LayerNorms (two-pass variance) and the softmax
run in float32 (or float64) whatever `dtype` is, so bfloat16 compute keeps them exact
enough; matmuls run in `dtype`.

Input sizes. torchvision trains at 224x224 (a 14x14 grid). For another size (a
multiple of 16, e.g. 256x128 -> 16x8) the 14x14 patch part of the position embedding
is resized in the forward pass, bicubically with the weights of torchvision's own
`interpolate_embeddings` (`F.interpolate(mode='bicubic', align_corners=True)`: cubic
convolution with a = -0.75, indices clamped at the edges, no antialiasing);
`jax.image.resize` uses a = -0.5 and antialiases, so `bicubic_matrix` writes torch's
1-D weights out and the resize is two small matrix products. The parameter stays
14x14, so converted weights load at any input size, and fine-tuning at 256x128
trains the original embedding through the (linear) resize.

Taps: `k1` = the patch tokens after `encoder_layer_7` (8 of the 12 blocks done, the
last third of the depth left, as ResNet's layer3 leaves layer4), `k2` = the patch
tokens after `encoder.ln`, both reshaped to [B, H/16, W/16, D]; `pooled` = the class
token after `encoder.ln`, which `heads.head` (and the attribute model's primary
classifier) reads.

`width` scales the head dimension (64) and the MLP width (3072), keeping 12 heads, so
`width=1/16` is a 48-wide ViT with the same code path for CPU tests; `depth` scales
the 12 blocks (`resnet.scale_blocks`: 1/4 keeps `encoder_layer_0..2`, `k1` after the
second).
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxattr.models.backbone import creator, linear, remat_block
from jaxattr.models.resnet import scale_blocks, scale_channels, torch_linear_init

Array = jax.Array
Dtype = Any

LN_EPSILON = 1e-6  # torchvision's `partial(nn.LayerNorm, eps=1e-6)`.
CUBIC_A = -0.75  # torch's bicubic kernel (aten UpSample.h); PIL and jax use -0.5.


def _cubic_weights(t: float) -> tuple[float, float, float, float]:
  """torch's cubic convolution weights of the 4 neighbours at fraction `t` in [0, 1)."""

  def near(x):  # |x| <= 1
    return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A

  return far(t + 1), near(t), near(1 - t), far(2 - t)


def bicubic_matrix(in_size: int, out_size: int, align_corners: bool = True) -> np.ndarray:
  """The [out, in] matrix of torch's 1-D bicubic resize (`F.interpolate`, no antialias).

  Args:
    in_size: source length.
    out_size: target length.
    align_corners: torch's flag: True maps the end samples onto each other
      (src = dst * (in - 1) / (out - 1)); False maps pixel areas
      (src = (dst + 0.5) * in / out - 0.5).

  Returns:
    float64 [out_size, in_size]; `m @ v` resizes v along its first axis.
  """
  m = np.zeros((out_size, in_size), np.float64)
  if align_corners:
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
  else:
    scale = in_size / out_size
  for dst in range(out_size):
    src = scale * dst if align_corners else scale * (dst + 0.5) - 0.5
    base = math.floor(src)
    for offset, w in zip(range(-1, 3), _cubic_weights(src - base), strict=True):
      # torch reads out-of-range neighbours at the clamped edge index.
      m[dst, min(max(base + offset, 0), in_size - 1)] += w
  return m


def resize_grid(grid: Array, size: tuple[int, int]) -> Array:
  """Bicubic resize of [H, W, D] to [*size, D] with torch's weights (`bicubic_matrix`)."""
  h, w, _ = grid.shape
  if (h, w) == tuple(size):
    return grid
  rows = jnp.asarray(bicubic_matrix(h, size[0]), grid.dtype)
  cols = jnp.asarray(bicubic_matrix(w, size[1]), grid.dtype)
  return jnp.einsum('ah,bw,hwd->abd', rows, cols, grid, precision=jax.lax.Precision.HIGHEST)


def patch_grid(kind: str, shape: tuple[int, ...], patch_size: int) -> tuple[int, int]:
  """(H/P, W/P) of an image batch [B, H, W, C]; a clear error when it is not whole patches."""
  _, h, w, _ = shape
  if h % patch_size or w % patch_size:
    raise ValueError(f'{kind} input {h}x{w} is not a multiple of the patch size {patch_size}.')
  return h // patch_size, w // patch_size


def with_class_token(cls: Array, patches: Array) -> Array:
  """[B, 1 + N, D] tokens: the class token, then the patch grid [B, gh, gw, D] row-major."""
  b, gh, gw, d = patches.shape
  cls = jnp.broadcast_to(cls.astype(patches.dtype).reshape(1, 1, d), (b, 1, d))
  return jnp.concatenate([cls, patches.reshape(b, gh * gw, d)], axis=1)


def token_grids(tap: Array, final: Array, grid: tuple[int, int]) -> dict[str, Array]:
  """The taps `k1` / `k2` as NHWC grids (the class token dropped) and `pooled` (it)."""
  b, _, d = final.shape
  return {
    'k1': tap[:, 1:].reshape(b, *grid, d),
    'k2': final[:, 1:].reshape(b, *grid, d),
    'pooled': final[:, 0],
  }


def _norm_dtype(dtype: Dtype) -> Dtype:
  """float32 for reduced-precision compute, else the compute dtype (float64 in tests)."""
  return jnp.promote_types(dtype, jnp.float32)


def layer_norm(
  dtype: Dtype, param_dtype: Dtype, name: str, epsilon: float = LN_EPSILON
) -> nn.LayerNorm:
  """torchvision's LayerNorm(eps 1e-6), computed in float32 or wider, two-pass variance."""
  return nn.LayerNorm(
    epsilon=epsilon,
    use_fast_variance=False,
    dtype=_norm_dtype(dtype),
    param_dtype=param_dtype,
    name=name,
  )


class SelfAttention(nn.Module):
  """`torch.nn.MultiheadAttention(D, heads, batch_first=True)` as self-attention.

  Attributes:
    num_heads: number of heads (D must be a multiple).
    dtype: compute dtype of the projections and products; the softmax is float32+.
    param_dtype: parameter dtype.
  """

  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, n, d = x.shape
    heads, head_dim = self.num_heads, d // self.num_heads
    # torch: xavier_uniform_ on the [3D, D] matrix, zero bias (same fans transposed).
    w = self.param('in_proj_weight', nn.initializers.xavier_uniform(), (d, 3 * d), self.param_dtype)
    bias = self.param('in_proj_bias', nn.initializers.zeros, (3 * d,), self.param_dtype)
    x, w, bias = nn.dtypes.promote_dtype(x, w, bias, dtype=self.dtype)
    qkv = (x @ w + bias).reshape(b, n, 3, heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum('bqhc,bkhc->bhqk', q / math.sqrt(head_dim), k)
    probs = jax.nn.softmax(logits.astype(_norm_dtype(self.dtype)), axis=-1).astype(v.dtype)
    y = jnp.einsum('bhqk,bkhc->bqhc', probs, v).reshape(b, n, d)
    # torch's out_proj keeps nn.Linear's default weight init and zeroes the bias.
    kernel_init, _ = torch_linear_init(d)
    return linear(d, self.dtype, self.param_dtype, 'out_proj', kernel_init)(y)


class MLPBlock(nn.Module):
  """torchvision's `MLPBlock`: `0` Linear(D, M), GELU (erf), `3` Linear(M, D)."""

  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    # torchvision: xavier_uniform_ weights, biases N(0, 1e-6).
    inits = (nn.initializers.xavier_uniform(), nn.initializers.normal(1e-6))
    x = linear(self.mlp_dim, self.dtype, self.param_dtype, '0', *inits)(x)
    x = nn.gelu(x, approximate=False)
    return linear(d, self.dtype, self.param_dtype, '3', *inits)(x)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: `x + MHA(ln_1(x))`, then `+ mlp(ln_2(.))`."""

  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dt, pdt = self.dtype, self.param_dtype
    y = SelfAttention(self.num_heads, dt, pdt, name='self_attention')(
      layer_norm(dt, pdt, 'ln_1')(x)
    )
    x = x + y.astype(x.dtype)
    y = MLPBlock(self.mlp_dim, dt, pdt, name='mlp')(layer_norm(dt, pdt, 'ln_2')(x))
    return x + y.astype(x.dtype)


class EncoderLayers(nn.Module):
  """torchvision's `encoder.layers` Sequential (`encoder_layer_0` ...); returns the tap too.

  `block` and `prefix` name another tower's blocks (CLIP's `resblocks.0`, ...).
  """

  num_layers: int
  num_heads: int
  mlp_dim: int
  tap_after: int
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  block: Any = (
    None  # The block module (num_heads, mlp_dim, dtype, param_dtype); None: EncoderBlock.
  )
  prefix: str = 'encoder_layer_'

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    """Returns `(tokens after `tap_after` blocks, tokens after the last block)`."""
    block = remat_block(self.block or EncoderBlock, self.remat, has_train=False)
    tap = x
    for i in range(self.num_layers):
      x = block(
        self.num_heads, self.mlp_dim, self.dtype, self.param_dtype, name=f'{self.prefix}{i}'
      )(x)
      if i + 1 == self.tap_after:
        tap = x
    return tap, x


class Encoder(nn.Module):
  """torchvision's `encoder`: position embedding, the blocks, the final LayerNorm `ln`."""

  grid: tuple[int, int]
  pos_grid: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  tap_after: int
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    """Runs the encoder on [B, 1 + h * w, D]; returns `(tap tokens, ln(final tokens))`."""
    d = x.shape[-1]
    pos = self.param(
      'pos_embedding',
      nn.initializers.normal(0.02),  # torchvision: normal_(std=0.02), "from BERT".
      (1, 1 + self.pos_grid**2, d),
      self.param_dtype,
    )
    pos = pos.astype(_norm_dtype(self.param_dtype))
    patches = resize_grid(pos[0, 1:].reshape(self.pos_grid, self.pos_grid, d), self.grid)
    pos = jnp.concatenate([pos[:, :1], patches.reshape(1, -1, d)], axis=1)
    x = x + pos.astype(x.dtype)
    tap, x = EncoderLayers(
      self.num_layers,
      self.num_heads,
      self.mlp_dim,
      self.tap_after,
      self.remat,
      self.dtype,
      self.param_dtype,
      name='layers',
    )(x)
    return tap, layer_norm(self.dtype, self.param_dtype, 'ln')(x)


class VisionTransformer(nn.Module):
  """torchvision's `VisionTransformer` (no conv stem, no representation layer).

  Attributes:
    patch_size: side of the square patches (16).
    num_layers: encoder blocks (12).
    num_heads: attention heads (12).
    head_dim: channels per head at `width=1` (64; D = num_heads * head_dim * width).
    mlp_dim: hidden width of the MLP at `width=1` (3072).
    image_size: the side the position embedding was trained for (224: a 14x14 grid).
    tap_after: `k1` is read after this many blocks (8 of 12).
    width: multiplier of head_dim and mlp_dim (1.0 = torchvision).
    num_classes: if set, adds `heads.head` and returns `'logits'`.
    remat: rematerialise each block in the backward pass (`backbone.remat_block`).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  patch_size: int = 16
  num_layers: int = 12
  num_heads: int = 12
  head_dim: int = 64
  mlp_dim: int = 3072
  image_size: int = 224
  tap_after: int = 8
  width: float = 1.0
  num_classes: int | None = None
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
    """Runs the backbone.

    Args:
      x: images [B, H, W, 3], already normalised; H and W multiples of `patch_size`.
      train: unused (no dropout, no BatchNorm); kept for the backbone interface.

    Returns:
      `{'k1', 'k2'}` [B, H/16, W/16, D] (k2 in float32 or wider), `'pooled'` [B, D]
      (the class token after the final norm), plus `'logits'` [B, num_classes]
      (float32, or float64 with float64 compute) when `num_classes` is set.
    """
    del train
    dt, pdt, p = self.dtype, self.param_dtype, self.patch_size
    gh, gw = patch_grid('ViT', x.shape, p)
    d = self.num_heads * scale_channels(self.head_dim, self.width)
    # torchvision: trunc_normal_(std=sqrt(1/fan_in)) truncated at +-2 (absolute), which
    # at std ~0.036 cuts nothing: a plain normal with variance 1/fan_in.
    x = nn.Conv(
      d,
      (p, p),
      strides=(p, p),
      padding='VALID',
      kernel_init=nn.initializers.variance_scaling(1.0, 'fan_in', 'normal'),
      dtype=dt,
      param_dtype=pdt,
      name='conv_proj',
    )(x)
    cls = self.param('class_token', nn.initializers.zeros, (1, 1, d), pdt)
    tokens = with_class_token(cls, x)
    tap, final = Encoder(
      (gh, gw),
      self.image_size // p,
      self.num_layers,
      self.num_heads,
      scale_channels(self.mlp_dim, self.width),
      self.tap_after,
      self.remat,
      dt,
      pdt,
      name='encoder',
    )(tokens)
    out = token_grids(tap, final, (gh, gw))
    if self.num_classes is not None:
      logits = Heads(self.num_classes, dt, pdt, name='heads')(final[:, 0])
      out['logits'] = logits.astype(_norm_dtype(dt))
    return out


class Heads(nn.Module):
  """torchvision's `heads` Sequential holding the one Linear `head` (zero-initialised)."""

  num_classes: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return linear(self.num_classes, self.dtype, self.param_dtype, 'head', nn.initializers.zeros)(x)


@dataclasses.dataclass(frozen=True)
class ViTSpec:
  """The architecture of one torchvision ViT (width 1)."""

  patch_size: int
  num_layers: int
  num_heads: int
  hidden_dim: int
  mlp_dim: int
  image_size: int = 224

  @property
  def head_dim(self) -> int:
    return self.hidden_dim // self.num_heads


VIT_SPECS = {'vit_b_16': ViTSpec(16, 12, 12, 768, 3072)}


def spec_tap_channels(spec: ViTSpec, width: float = 1.0) -> tuple[int, int]:
  """Channels of `k1` and `k2` of a ViT-shaped tower: both D (e.g. 768 for ViT-B at width 1)."""
  d = spec.num_heads * scale_channels(spec.head_dim, width)
  return d, d


def spec_fields(spec: ViTSpec, width: float, depth: float) -> dict[str, Any]:
  """`VisionTransformer`'s fields for `spec`.

  `width` multiplies the head dimension and the MLP width, `depth` the blocks
  (`resnet.scale_blocks`); `k1` stays two thirds of the way through.
  """
  layers = scale_blocks(spec.num_layers, depth)
  return {
    'patch_size': spec.patch_size,
    'num_layers': layers,
    'num_heads': spec.num_heads,
    'head_dim': spec.head_dim,
    'mlp_dim': spec.mlp_dim,
    'image_size': spec.image_size,
    'tap_after': max(1, (2 * layers) // 3),
    'width': width,
  }


def vit_tap_channels(name: str, width: float = 1.0) -> tuple[int, int]:
  """Channels of `k1` and `k2` of a key of `VIT_SPECS` (both D, (768, 768) for vit_b_16)."""
  return spec_tap_channels(VIT_SPECS[name], width)


def vit_fields(name: str, width: float, depth: float) -> dict[str, Any]:
  """`VisionTransformer`'s fields for torchvision's 'vit_b_16' (`backbone.creator`)."""
  return spec_fields(VIT_SPECS[name], width, depth)


create_vit = creator(VisionTransformer, vit_fields)
