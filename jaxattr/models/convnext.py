"""ConvNeXt tiny / small / base (torchvision layout) in Flax linen, NHWC.

The module tree mirrors torchvision's `torchvision.models.convnext`, so weights
convert by the naming rule of `resnet.py` alone (Flax path = torch key split on '.';
`weight` -> `kernel` (conv, linear) or `scale` (LayerNorm); conv kernels OIHW ->
HWIO, linear weights transposed; other tensors keep name and shape):

  features.0.0 (stem conv 4x4/4), features.0.1 (LayerNorm2d);
  features.{1,3,5,7}.{i} CNBlocks: block.0 (depthwise conv 7x7), block.2 (LayerNorm),
    block.3 (Linear C -> 4C), block.5 (Linear 4C -> C), layer_scale;
  features.{2,4,6} downsampling: .0 (LayerNorm2d), .1 (conv 2x2/2);
  classifier.0 (LayerNorm2d on the pooled vector: part of the backbone here),
  classifier.2 (the ImageNet Linear, only with `num_classes`).

`layer_scale` keeps torch's shape (C, 1, 1) so the generic rule maps it unchanged;
it is read as a per-channel vector. The depthwise conv kernel is (7, 7, 1, C), the
HWIO form of torch's (C, 1, 7, 7).

Semantics follow torchvision (eval mode) exactly: stem conv 4x4 stride 4 with bias
+ LayerNorm2d; CNBlock = depthwise conv 7x7 (padding 3, bias) -> LayerNorm (eps
1e-6) -> Linear 4x -> exact (erf) GELU -> Linear -> times layer_scale -> stochastic
depth -> + input; downsampling LayerNorm2d + conv 2x2 stride 2; every LayerNorm has
eps 1e-6 (LayerNorm2d is a LayerNorm over the channels, which in NHWC is the plain
one). Stochastic depth (torchvision's 'row' mode, rate growing linearly to
`stochastic_depth_prob`) runs only in training with a positive rate, on the
'dropout' RNG stream; it is off (0.0) by default (torchvision's ImageNet rates are in
`CONVNEXT_SPECS`). Init: trunc_normal(0.02) for conv and linear weights, zero
biases, layer_scale 1e-6, as torchvision.

Precision: convs and matmuls in `dtype`; LayerNorm statistics and normalisation in
at least float32 (Flax's LayerNorm), output in `dtype`.

`width` scales every channel count (rounded, at least 1).

`__call__(x, train)` returns `{'k1': end of stage 3 [B, H/16, W/16, C3], 'k2': end
of stage 4 [B, H/32, W/32, C4], 'pooled': classifier.0(mean of k2) [B, C4], at
least float32 (what the ImageNet Linear reads)}` plus `'logits'` (float32) with `num_classes` (sizes
floored, as torchvision's strided convs).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattr.models.backbone import creator, float32_avg_pool, linear, remat_block
from jaxattr.models.resnet import scale_blocks, scale_channels
from jaxattr.models.swin import block_drop_rates, stochastic_depth

Array = jax.Array
Dtype = Any

LN_EPSILON = 1e-6
LAYER_SCALE = 1e-6
MLP_RATIO = 4

# torchvision's ConvNeXt init for every Conv2d and Linear; biases are zeroed.
weight_init = nn.initializers.truncated_normal(0.02)


@dataclasses.dataclass(frozen=True)
class ConvNeXtSpec:
  """The architecture of one torchvision ConvNeXt (width 1)."""

  channels: tuple[int, int, int, int]
  depths: tuple[int, int, int, int]
  # torchvision's ImageNet training rate, for reference (`stochastic_depth_prob`).
  stochastic_depth_prob: float


CONVNEXT_SPECS = {
  'convnext_tiny': ConvNeXtSpec((96, 192, 384, 768), (3, 3, 9, 3), 0.1),
  'convnext_small': ConvNeXtSpec((96, 192, 384, 768), (3, 3, 27, 3), 0.4),
  'convnext_base': ConvNeXtSpec((128, 256, 512, 1024), (3, 3, 27, 3), 0.5),
}


def convnext_tap_channels(name: str, width: float = 1.0) -> tuple[int, int]:
  """Channels of the `k1` (stage 3) and `k2` (stage 4) taps.

  Args:
    name: 'convnext_tiny', 'convnext_small' or 'convnext_base'.
    width: the channel multiplier.

  Returns:
    `(k1_channels, k2_channels)`, (384, 768) for convnext_tiny.
  """
  channels = CONVNEXT_SPECS[name].channels
  return scale_channels(channels[2], width), scale_channels(channels[3], width)


def _layer_norm(dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
  # Two-pass variance (as torch), statistics in at least float32 (Flax's default).
  return nn.LayerNorm(
    epsilon=LN_EPSILON, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name
  )


def _conv(
  features: int,
  kernel: int,
  stride: int,
  padding: int,
  dtype: Dtype,
  param_dtype: Dtype,
  name: str,
  groups: int = 1,
) -> nn.Conv:
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((padding, padding), (padding, padding)),
    feature_group_count=groups,
    kernel_init=weight_init,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
  )


def _dense(features: int, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Dense:
  return linear(features, dtype, param_dtype, name, weight_init)


class CNBlockBranch(nn.Module):
  """torchvision's `CNBlock.block` Sequential: dwconv '0', LayerNorm '2', Linear '3', '5'."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dt, pdt = self.dtype, self.param_dtype
    c = x.shape[-1]
    x = _conv(c, 7, 1, 3, dt, pdt, '0', groups=c)(x)
    x = _layer_norm(dt, pdt, '2')(x)
    x = _dense(MLP_RATIO * c, dt, pdt, '3')(x)
    x = nn.gelu(x, approximate=False)
    return _dense(c, dt, pdt, '5')(x)


class CNBlock(nn.Module):
  """input + stochastic_depth(layer_scale * block(input))."""

  drop_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    c = x.shape[-1]
    y = CNBlockBranch(self.dtype, self.param_dtype, name='block')(x)
    # torch's (C, 1, 1) shape, so the converter maps it as is.
    gamma = self.param(
      'layer_scale', nn.initializers.constant(LAYER_SCALE), (c, 1, 1), self.param_dtype
    )
    y = y * gamma.reshape(c).astype(y.dtype)
    return x + stochastic_depth(self, y, self.drop_rate, train)


class ConvNeXtStage(nn.Module):
  """CNBlocks '0', '1', ..."""

  drop_rates: Sequence[float]
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    block = remat_block(CNBlock, self.remat)
    for i, rate in enumerate(self.drop_rates):
      x = block(rate, self.dtype, self.param_dtype, name=str(i))(x, train)
    return x


class Stem(nn.Module):
  """`features.0`: conv 4x4 stride 4 ('0') + LayerNorm2d ('1')."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = _conv(self.features, 4, 4, 0, self.dtype, self.param_dtype, '0')(x)
    return _layer_norm(self.dtype, self.param_dtype, '1')(x)


class Downsample(nn.Module):
  """`features.{2,4,6}`: LayerNorm2d ('0') + conv 2x2 stride 2 ('1')."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = _layer_norm(self.dtype, self.param_dtype, '0')(x)
    return _conv(self.features, 2, 2, 0, self.dtype, self.param_dtype, '1')(x)


class ConvNeXtFeatures(nn.Module):
  """torchvision's `features` Sequential; returns (end of stage 3, end of stage 4)."""

  channels: Sequence[int]
  depths: Sequence[int]
  stochastic_depth_prob: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
    dt, pdt = self.dtype, self.param_dtype
    x = Stem(self.channels[0], dt, pdt, name='0')(x)
    rates = block_drop_rates(self.depths, self.stochastic_depth_prob)
    k1 = None
    last = len(self.depths) - 1
    for i in range(len(self.depths)):
      x = ConvNeXtStage(rates[i], self.remat, dt, pdt, name=str(2 * i + 1))(x, train)
      if i == last - 1:
        k1 = x
      if i < last:
        x = Downsample(self.channels[i + 1], dt, pdt, name=str(2 * i + 2))(x)
    return k1, x


class ClassifierNorm(nn.Module):
  """torchvision's `classifier` Sequential: LayerNorm2d '0' (+ Linear '2' with classes)."""

  num_classes: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: Array) -> tuple[Array, Array | None]:
    # The pooled vector leaves in at least float32, as the registry's contract asks.
    out_dtype = jnp.promote_types(self.dtype, jnp.float32)
    pooled = _layer_norm(out_dtype, self.param_dtype, '0')(pooled)
    if self.num_classes is None:
      return pooled, None
    return pooled, _dense(self.num_classes, self.dtype, self.param_dtype, '2')(pooled)


class ConvNeXt(nn.Module):
  """A torchvision ConvNeXt exposing the stage-3 / stage-4 taps.

  Attributes:
    channels: channels per stage (after width scaling).
    depths: blocks per stage.
    num_classes: if set, adds torchvision's `classifier.2` and returns `'logits'`.
    stochastic_depth_prob: the last block's drop rate in training (0 = off).
    remat: rematerialise each block in the backward pass (`backbone.remat_block`).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  channels: Sequence[int]
  depths: Sequence[int]
  num_classes: int | None = None
  stochastic_depth_prob: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> dict[str, Array]:
    """The backbone contract (`registry.py`): k1 and k2 at H/16 and H/32 in `dtype`, `pooled`
    at least float32; `train` turns on stochastic depth (when its rate is positive)."""
    k1, k2 = ConvNeXtFeatures(
      tuple(self.channels),
      tuple(self.depths),
      self.stochastic_depth_prob,
      self.remat,
      self.dtype,
      self.param_dtype,
      name='features',
    )(x, train)
    pooled, logits = ClassifierNorm(
      self.num_classes, self.dtype, self.param_dtype, name='classifier'
    )(float32_avg_pool(k2))
    out = {'k1': k1, 'k2': k2, 'pooled': pooled}
    if logits is not None:
      out['logits'] = logits.astype(jnp.float32)
    return out


def convnext_fields(name: str, width: float, depth: float) -> dict[str, Any]:
  """`ConvNeXt`'s fields for torchvision's 'convnext_tiny', '_small', '_base' (`backbone.creator`).

  `width` multiplies the channels (1.0 = torchvision), `depth` the blocks of every
  stage (`resnet.scale_blocks`). The option `stochastic_depth_prob` is the drop
  rate of the last block in training (0 = off; torchvision's ImageNet rates are in
  `CONVNEXT_SPECS`).
  """
  spec = CONVNEXT_SPECS[name]
  return {
    'channels': tuple(scale_channels(c, width) for c in spec.channels),
    'depths': tuple(scale_blocks(n, depth) for n in spec.depths),
  }


create_convnext = creator(ConvNeXt, convnext_fields)
