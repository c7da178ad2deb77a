"""ResNet-18/34/50/101/152 (v1.5, torchvision layout) in Flax linen, NHWC.

The module tree mirrors torchvision's `torchvision.models.resnet` so that weights
convert by name alone. The rule (shared with `densenet.py`), which
`jaxattr/convert.py` relies on:

  Flax path = torchvision state-dict key split on '.', with the leaf renamed:
    conv / linear  `weight` -> params `kernel`, `bias` -> params `bias`
    BatchNorm      `weight` -> params `scale`,  `bias` -> params `bias`,
                   `running_mean` -> batch_stats `mean`,
                   `running_var` -> batch_stats `var`
    `num_batches_tracked` has no Flax counterpart and is dropped.
  Layouts: conv kernels are OIHW in torch and HWIO here (transpose (2, 3, 1, 0));
  linear weights are (out, in) in torch and (in, out) here (transpose).

Examples: `layer1.0.conv1.weight` -> params `layer1/0/conv1/kernel`;
`layer2.0.downsample.1.running_var` -> batch_stats `layer2/0/downsample/1/var`;
`fc.weight` -> params `fc/kernel` (only when `num_classes` is set).

Semantics follow torchvision exactly at `width=1`: explicit symmetric padding
(never 'SAME', which pads asymmetrically for stride 2), convolutions without bias,
BatchNorm epsilon 1e-5 and momentum 0.9 (torch momentum 0.1), the stride of a
bottleneck on its 3x3 conv (v1.5), kaiming-normal fan-out conv init, BN scale 1 and
bias 0. `width` scales every channel count and `depth` the blocks of every stage
(`scale_blocks`), so tiny CPU variants of the same architecture exist.

`__call__(x, train)` returns `{'k1': layer3 output, 'k2': layer4 output, 'pooled':
the global average of k2}` and, when `num_classes` is set, `'logits'` (`fc` on the
average pool). The architectures are registered in `registry.py`.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattr.models.backbone import creator, float32_avg_pool, linear, remat_block

Array = jax.Array
Dtype = Any

# torchvision's BatchNorm2d defaults (momentum 0.1 there is 1 - 0.9 here).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def batch_norm(train: bool, dtype: Any, param_dtype: Any, name: str) -> nn.BatchNorm:
  """torchvision's BatchNorm2d (eps 1e-5, momentum 0.1) in Flax.

  The variance is computed in two passes, E[(x - E[x])^2], not as E[x^2] - E[x]^2
  (Flax's default): the fast form cancels catastrophically for channels with a
  small variance, and its error then depends on how the sum is split across
  devices, so data-parallel runs would drift apart from single-device ones.
  """
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=BN_MOMENTUM,
    epsilon=BN_EPSILON,
    use_fast_variance=False,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
  )


# kaiming_normal_(mode='fan_out', nonlinearity='relu') of torchvision's ResNet.
resnet_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def scale_channels(channels: int, width: float) -> int:
  """A channel count multiplied by `width`, rounded, at least 1.

  Args:
    channels: the channel count of the full-size (width 1) architecture.
    width: the channel multiplier.

  Returns:
    `max(1, int(round(channels * width)))`.
  """
  return max(1, int(round(channels * width)))


def scale_blocks(blocks: int, depth: float) -> int:
  """A stage's block count multiplied by `depth`, rounded half up, at least 1.

  `depth` < 1 gives the shallower test-size variants of an architecture (every
  family's `create_*` takes it, as it takes `width`); the blocks kept are the first
  ones of each stage, so their parameter names stay torchvision's.

  Args:
    blocks: the stage's blocks in the full-depth (depth 1) architecture.
    depth: the block multiplier.

  Returns:
    `max(1, int(blocks * depth + 0.5))`.
  """
  return max(1, int(blocks * depth + 0.5))


def torch_linear_init(fan_in: int) -> tuple[Callable[..., Array], Callable[..., Array]]:
  """The kernel and bias initialisers of torch's `nn.Linear` default.

  Both are U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5) for
  the weight works out to the same bound).

  Args:
    fan_in: the number of input features.

  Returns:
    `(kernel_init, bias_init)`.
  """
  bound = 1.0 / math.sqrt(fan_in)

  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform'), bias_init


def max_pool_3x3_s2(x: Array) -> Array:
  """torchvision's stem `MaxPool2d(3, stride=2, padding=1)`: padding acts as -inf."""
  # flax pools through lax.reduce_window, whose padding takes the init value (-inf).
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def global_avg_pool(x: Array) -> Array:
  """Mean over the spatial axes of an NHWC tensor ([B, H, W, C] -> [B, C])."""
  return jnp.mean(x, axis=(1, 2))


class _Layers:
  """Factories for the conv / BN layers of one module, sharing dtype and init."""

  def __init__(self, dtype: Dtype, param_dtype: Dtype, conv_init: Callable[..., Array]):
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.conv_init = conv_init

  def conv(self, features: int, kernel: int, stride: int = 1, *, name: str) -> nn.Conv:
    pad = (kernel - 1) // 2
    return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      use_bias=False,
      kernel_init=self.conv_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
    )

  def norm(self, train: bool, *, name: str) -> nn.BatchNorm:
    return batch_norm(train, self.dtype, self.param_dtype, name)


class Downsample(nn.Module):
  """torchvision's `downsample = Sequential(conv1x1(stride), BatchNorm2d)`: '0', '1'."""

  features: int
  stride: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    layers = _Layers(self.dtype, self.param_dtype, resnet_conv_init)
    x = layers.conv(self.features, 1, self.stride, name='0')(x)
    return layers.norm(train, name='1')(x)


class ResidualBlock(nn.Module):
  """`relu(shortcut(x) + branch(x))`, the branch a chain of conv-BN(-ReLU) (`convs`).

  The shortcut is the identity, or torchvision's `downsample` when the block
  changes the stride or the width. `planes` is the (scaled) inner width.
  """

  planes: int
  out_features: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def convs(self) -> tuple[tuple[int, int, int], ...]:
    """(features, kernel, stride) of `conv1`, `conv2`, ...; each is followed by `bn<i>`."""
    raise NotImplementedError(f'{type(self).__name__} does not say its convolutions.')

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    layers = _Layers(self.dtype, self.param_dtype, resnet_conv_init)
    convs = self.convs()
    y = x
    for i, (features, kernel, stride) in enumerate(convs, start=1):
      y = layers.conv(features, kernel, stride, name=f'conv{i}')(y)
      y = layers.norm(train, name=f'bn{i}')(y)
      if i < len(convs):
        y = nn.relu(y)
    if self.stride != 1 or x.shape[-1] != self.out_features:
      x = Downsample(
        self.out_features, self.stride, self.dtype, self.param_dtype, name='downsample'
      )(x, train)
    return nn.relu(x + y)


class BasicBlock(ResidualBlock):
  """Two 3x3 convs (ResNet-18/34)."""

  def convs(self) -> tuple[tuple[int, int, int], ...]:
    return (self.planes, 3, self.stride), (self.out_features, 3, 1)


class Bottleneck(ResidualBlock):
  """1x1 - 3x3 (strided, v1.5) - 1x1 bottleneck (ResNet-50/101/152)."""

  def convs(self) -> tuple[tuple[int, int, int], ...]:
    return (self.planes, 1, 1), (self.planes, 3, self.stride), (self.out_features, 1, 1)


class ResNetStage(nn.Module):
  """torchvision's `layerN`: blocks named '0', '1', ...; the first one strides."""

  block: type[BasicBlock] | type[Bottleneck]
  num_blocks: int
  planes: int
  out_features: int
  stride: int
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    block = remat_block(self.block, self.remat)
    for i in range(self.num_blocks):
      x = block(
        self.planes,
        self.out_features,
        self.stride if i == 0 else 1,
        self.dtype,
        self.param_dtype,
        name=str(i),
      )(x, train)
    return x


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
  """The architecture of one torchvision ResNet."""

  block: type[BasicBlock] | type[Bottleneck]
  stage_sizes: tuple[int, int, int, int]

  @property
  def expansion(self) -> int:
    return 4 if self.block is Bottleneck else 1


RESNET_SPECS = {
  'resnet18': ResNetSpec(BasicBlock, (2, 2, 2, 2)),
  'resnet34': ResNetSpec(BasicBlock, (3, 4, 6, 3)),
  'resnet50': ResNetSpec(Bottleneck, (3, 4, 6, 3)),
  'resnet101': ResNetSpec(Bottleneck, (3, 4, 23, 3)),
  'resnet152': ResNetSpec(Bottleneck, (3, 8, 36, 3)),
}

_STAGE_PLANES = (64, 128, 256, 512)


def resnet_tap_channels(spec: ResNetSpec, width: float = 1.0) -> tuple[int, int]:
  """Channels of the `k1` (layer3) and `k2` (layer4) taps.

  Args:
    spec: the architecture.
    width: the channel multiplier.

  Returns:
    `(k1_channels, k2_channels)`.
  """
  return (
    scale_channels(_STAGE_PLANES[2] * spec.expansion, width),
    scale_channels(_STAGE_PLANES[3] * spec.expansion, width),
  )


class ResNet(nn.Module):
  """A torchvision ResNet without its head, exposing the layer3 / layer4 taps.

  Attributes:
    block: `BasicBlock` or `Bottleneck`.
    stage_sizes: blocks per stage (layer1..layer4).
    width: channel multiplier (1.0 = torchvision).
    num_classes: if set, adds torchvision's `fc` and returns `'logits'`.
    remat: rematerialise each block in the backward pass (`backbone.remat_block`).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  block: type[BasicBlock] | type[Bottleneck]
  stage_sizes: Sequence[int]
  width: float = 1.0
  num_classes: int | None = None
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> dict[str, Array]:
    """The backbone contract (`registry.py`): k1 and k2 at H/16 and H/32 (rounded up),
    `pooled` in float32; with `train` BatchNorm uses (and updates) batch statistics."""
    layers = _Layers(self.dtype, self.param_dtype, resnet_conv_init)
    expansion = 4 if self.block is Bottleneck else 1
    x = layers.conv(scale_channels(64, self.width), 7, 2, name='conv1')(x)
    x = nn.relu(layers.norm(train, name='bn1')(x))
    x = max_pool_3x3_s2(x)
    taps = {}
    for i, (num_blocks, planes) in enumerate(zip(self.stage_sizes, _STAGE_PLANES, strict=True)):
      x = ResNetStage(
        self.block,
        num_blocks,
        scale_channels(planes, self.width),
        scale_channels(planes * expansion, self.width),
        stride=1 if i == 0 else 2,
        remat=self.remat,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f'layer{i + 1}',
      )(x, train)
      if i == 2:
        taps['k1'] = x
    taps['k2'] = x
    # What the ImageNet `fc` reads, in float32 (or wider) for the attribute model's
    # primary classifier (the backbone contract of `registry.py`).
    taps['pooled'] = float32_avg_pool(x)
    if self.num_classes is not None:
      kernel_init, bias_init = torch_linear_init(x.shape[-1])
      fc = linear(self.num_classes, self.dtype, self.param_dtype, 'fc', kernel_init, bias_init)
      taps['logits'] = fc(global_avg_pool(x)).astype(jnp.float32)
    return taps


def resnet_fields(name: str, width: float, depth: float) -> dict[str, Any]:
  """`ResNet`'s fields for torchvision's 'resnet18', ..., 'resnet152' (`backbone.creator`).

  `width` multiplies every channel count, `depth` the blocks of every stage
  (`scale_blocks`; 1.0 = torchvision).
  """
  spec = RESNET_SPECS[name]
  stage_sizes = tuple(scale_blocks(n, depth) for n in spec.stage_sizes)
  return {'block': spec.block, 'stage_sizes': stage_sizes, 'width': width}


create_resnet = creator(ResNet, resnet_fields)
