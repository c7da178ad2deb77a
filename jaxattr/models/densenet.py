"""DenseNet-121/161/169/201 (torchvision layout) in Flax linen, NHWC.

Parameter paths follow torchvision's (new-style) state-dict names by the rule of
`resnet.py`: split the key on '.', rename the leaf (conv / linear `weight` ->
`kernel`; BatchNorm `weight` -> `scale`, `bias` -> `bias` in params, and
`running_mean` / `running_var` -> `mean` / `var` in batch_stats; drop
`num_batches_tracked`); conv kernels are HWIO here (OIHW in torch), the linear
kernel is (in, out) here ((out, in) in torch). Examples:
`features.conv0.weight` -> params `features/conv0/kernel`;
`features.denseblock1.denselayer1.norm1.weight` ->
params `features/denseblock1/denselayer1/norm1/scale`;
`features.transition3.norm.running_mean` -> batch_stats `features/transition3/norm/mean`;
`classifier.weight` -> params `classifier/kernel` (only when `num_classes` is set).
Old torchvision checkpoints named `norm.1` / `conv.2` inside dense layers (the files
torchvision downloads still do); `rename_legacy_keys`, the registry's
`adapt_state_dict` hook for this family, maps those to `norm1` / `conv2` first, as
torchvision does on load.

Semantics follow torchvision at `width=1`: explicit symmetric padding, convs without
bias, BatchNorm epsilon 1e-5 / momentum 0.9, transitions as BN-ReLU-conv1x1-AvgPool
2/2 (floor), compression 0.5 (`num_features // 2`), kaiming-normal (fan-in) conv
init, and the final `relu(norm5)`. `width` scales the growth rate, the initial
features and the bottleneck width (`bn_size * growth_rate`); `depth` the layers of
every dense block (`resnet.scale_blocks`).

`__call__(x, train)` returns `{'k1': after denseblock3 (before transition3),
'k2': relu(norm5), 'pooled': the global average of k2}` and, when `num_classes` is
set, `'logits'`. The architectures are registered in `registry.py`.
"""

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattr.models.backbone import creator, float32_avg_pool, linear, remat_block
from jaxattr.models.resnet import (
  batch_norm,
  global_avg_pool,
  max_pool_3x3_s2,
  scale_blocks,
  scale_channels,
  torch_linear_init,
)

Array = jax.Array
Dtype = Any

# torchvision's `_load_state_dict` for DenseNet: `...denselayerN.norm.1.weight` ->
# `...denselayerN.norm1.weight` (likewise relu / conv and 2). The counter is renamed
# too (torchvision's pattern omits it: the old files predate it), for re-saved files.
_LEGACY_KEY = re.compile(
  r'^(.*denselayer\d+\.(?:norm|relu|conv))\.'
  r'([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$'
)


def rename_legacy_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Renames old torchvision DenseNet keys (`norm.1` -> `norm1`, `conv.2` -> `conv2`).

  The DenseNet files torchvision downloads still use the old names.

  Args:
    state_dict: torch key -> tensor.

  Returns:
    A new dict with the same tensors under current names; other keys unchanged.

  Raises:
    ValueError: if a legacy and a current key name the same tensor.
  """
  out = {}
  for key, value in state_dict.items():
    match = _LEGACY_KEY.match(key)
    new = match.group(1) + match.group(2) if match else key
    if new in out:
      raise ValueError(f'Tensor {new!r} appears twice (legacy and current DenseNet names).')
    out[new] = value
  return out


# torchvision's DenseNet: nn.init.kaiming_normal_(weight) (fan_in, relu gain).
densenet_conv_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def _conv(features: int, kernel: int, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Conv:
  pad = (kernel - 1) // 2
  return nn.Conv(
    features,
    (kernel, kernel),
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    kernel_init=densenet_conv_init,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
  )


class DenseLayer(nn.Module):
  """BN-ReLU-conv1x1(bottleneck)-BN-ReLU-conv3x3(growth); returns the new features."""

  growth_rate: int
  bottleneck: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    dt, pdt = self.dtype, self.param_dtype
    y = nn.relu(batch_norm(train, dt, pdt, 'norm1')(x))
    y = _conv(self.bottleneck, 1, dt, pdt, 'conv1')(y)
    y = nn.relu(batch_norm(train, dt, pdt, 'norm2')(y))
    return _conv(self.growth_rate, 3, dt, pdt, 'conv2')(y)


class DenseBlock(nn.Module):
  """`denselayer1..N`, each concatenating its output to the running features."""

  num_layers: int
  growth_rate: int
  bottleneck: int
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    layer = remat_block(DenseLayer, self.remat)
    for i in range(self.num_layers):
      y = layer(
        self.growth_rate, self.bottleneck, self.dtype, self.param_dtype, name=f'denselayer{i + 1}'
      )(x, train)
      x = jnp.concatenate([x, y], axis=-1)
    return x


class Transition(nn.Module):
  """BN-ReLU-conv1x1 then AvgPool 2/2 (floor mode, as torchvision)."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = nn.relu(batch_norm(train, self.dtype, self.param_dtype, 'norm')(x))
    x = _conv(self.features, 1, self.dtype, self.param_dtype, 'conv')(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding='VALID')


class DenseNetFeatures(nn.Module):
  """torchvision's `features` Sequential; returns the k1 / k2 taps."""

  growth_rate: int
  block_config: Sequence[int]
  num_init_features: int
  bottleneck: int
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> dict[str, Array]:
    dt, pdt = self.dtype, self.param_dtype
    x = nn.Conv(
      self.num_init_features,
      (7, 7),
      strides=(2, 2),
      padding=((3, 3), (3, 3)),
      use_bias=False,
      kernel_init=densenet_conv_init,
      dtype=dt,
      param_dtype=pdt,
      name='conv0',
    )(x)
    x = nn.relu(batch_norm(train, dt, pdt, 'norm0')(x))
    x = max_pool_3x3_s2(x)
    taps = {}
    last = len(self.block_config) - 1
    for i, num_layers in enumerate(self.block_config):
      x = DenseBlock(
        num_layers,
        self.growth_rate,
        self.bottleneck,
        self.remat,
        dt,
        pdt,
        name=f'denseblock{i + 1}',
      )(x, train)
      if i == last - 1:
        taps['k1'] = x
      if i != last:
        x = Transition(x.shape[-1] // 2, dt, pdt, name=f'transition{i + 1}')(x, train)
    taps['k2'] = k2 = nn.relu(batch_norm(train, dt, pdt, 'norm5')(x))
    # What the ImageNet `classifier` reads, float32 or wider (`registry.py`'s contract).
    taps['pooled'] = float32_avg_pool(k2)
    return taps


@dataclasses.dataclass(frozen=True)
class DenseNetSpec:
  """The architecture of one torchvision DenseNet (width 1)."""

  growth_rate: int
  block_config: tuple[int, int, int, int]
  num_init_features: int
  bn_size: int = 4


DENSENET_SPECS = {
  'densenet121': DenseNetSpec(32, (6, 12, 24, 16), 64),
  'densenet161': DenseNetSpec(48, (6, 12, 36, 24), 96),
  'densenet169': DenseNetSpec(32, (6, 12, 32, 32), 64),
  'densenet201': DenseNetSpec(32, (6, 12, 48, 32), 64),
}


def densenet_tap_channels(
  spec: DenseNetSpec, width: float = 1.0, depth: float = 1.0
) -> tuple[int, int]:
  """Channels of the `k1` (after denseblock3) and `k2` (norm5) taps.

  Args:
    spec: the architecture.
    width: the channel multiplier.
    depth: the layer multiplier of every dense block.

  Returns:
    `(k1_channels, k2_channels)`.
  """
  growth = scale_channels(spec.growth_rate, width)
  channels = scale_channels(spec.num_init_features, width)
  taps = []
  for i, num_layers in enumerate(spec.block_config):
    channels += scale_blocks(num_layers, depth) * growth
    if i == len(spec.block_config) - 2:
      taps.append(channels)
    if i != len(spec.block_config) - 1:
      channels //= 2
  taps.append(channels)
  return taps[0], taps[1]


class DenseNet(nn.Module):
  """A torchvision DenseNet exposing the k1 / k2 taps.

  Attributes:
    growth_rate: new channels per dense layer (width 1).
    block_config: dense layers per block.
    num_init_features: channels of the stem conv (width 1).
    bn_size: bottleneck multiplier: the 1x1 conv has `bn_size * growth_rate` outputs.
    width: channel multiplier (1.0 = torchvision).
    num_classes: if set, adds torchvision's `classifier` and returns `'logits'`.
    remat: rematerialise each dense layer in the backward pass (`backbone.remat_block`).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  growth_rate: int
  block_config: Sequence[int]
  num_init_features: int
  bn_size: int = 4
  width: float = 1.0
  num_classes: int | None = None
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> dict[str, Array]:
    """The backbone contract (`registry.py`): k1 and k2 at H/16 and H/32 as torchvision
    sizes them, `pooled` in float32; with `train` BatchNorm uses batch statistics."""
    taps = DenseNetFeatures(
      growth_rate=scale_channels(self.growth_rate, self.width),
      block_config=tuple(self.block_config),
      num_init_features=scale_channels(self.num_init_features, self.width),
      bottleneck=scale_channels(self.bn_size * self.growth_rate, self.width),
      remat=self.remat,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='features',
    )(x, train)
    if self.num_classes is not None:
      features = taps['k2'].shape[-1]
      # torchvision zeroes the classifier bias; the weight keeps Linear's default.
      kernel_init, _ = torch_linear_init(features)
      classifier = linear(self.num_classes, self.dtype, self.param_dtype, 'classifier', kernel_init)
      taps = {**taps, 'logits': classifier(global_avg_pool(taps['k2'])).astype(jnp.float32)}
    return taps


def densenet_fields(name: str, width: float, depth: float) -> dict[str, Any]:
  """`DenseNet`'s fields for torchvision's 'densenet121', ..., 'densenet201' (`backbone.creator`).

  `width` multiplies every channel count, `depth` the layers of every dense block
  (`resnet.scale_blocks`; 1.0 = torchvision).
  """
  spec = DENSENET_SPECS[name]
  return {
    'growth_rate': spec.growth_rate,
    'block_config': tuple(scale_blocks(n, depth) for n in spec.block_config),
    'num_init_features': spec.num_init_features,
    'bn_size': spec.bn_size,
    'width': width,
  }


create_densenet = creator(DenseNet, densenet_fields)
