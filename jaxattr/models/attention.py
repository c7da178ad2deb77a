"""The attention heads (docs/method.md, "Model"): masks, confidences, attention classifier.

One attention module per level i works on the backbone tap `k_i` [B, H, W, D]:

  mask branch        Conv1x1(256)-BN-ReLU -> Conv1x1(256)-BN-ReLU -> Conv1x1(C) = z
  spatial softmax    a[:, h, w, c] = softmax of z[:, :, :, c] over all H*W positions
  confidence branch  s = sigmoid(Conv1x1(C)(k_i))
  weighted masks     u = a * s (or a alone with confidence weighting off)
  classifier on u    Conv1x1(256)-BN-ReLU -> Conv1x1(512)-BN-ReLU ->
                     Conv(512, kernel = H x W of its input, VALID)-BN-ReLU -> Dense(C)

Masks, confidences and the weighted masks are float32 whatever the compute dtype
(the softmax is computed in float32), or float64 with float64 compute. Channel counts
arrive already multiplied by the model's width. Convolutions followed by BatchNorm have
no bias (BN's own bias replaces it); the logit convs and Dense layers have one. Head
layers use the Flax default initialisers (the paper does not fix them).

The feature-level aggregations of paper §4.4 need the level-3 and level-4 weighted
masks on one grid: `upsample_to` (nearest), `max_pool_to` (2x2, stride 2) and
`StridedConvDown` (3x3 conv, stride 2). Their padding is picked so that the output
is the size of the other tap, whichever of floor(n/2) or ceil(n/2) the backbone
produced (ResNet rounds up, DenseNet down).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattr.models.resnet import batch_norm

Array = jax.Array
Dtype = Any


def at_least_float32(x: Array) -> Array:
  """`x` in float32, or in its own dtype if wider (float64 compute, which the tests use)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def spatial_softmax(z: Array) -> Array:
  """Softmax over all spatial positions, separately per channel, in float32.

  Args:
    z: logits [B, H, W, C].

  Returns:
    a [B, H, W, C] float32 with `a[b, :, :, c].sum() == 1`.
  """
  b, h, w, c = z.shape
  flat = at_least_float32(z).reshape(b, h * w, c)
  return jax.nn.softmax(flat, axis=1).reshape(b, h, w, c)


def _conv1x1(features: int, use_bias: bool, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Conv:
  return nn.Conv(
    features,
    (1, 1),
    padding='VALID',
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
  )


class AttentionMask(nn.Module):
  """Mask branch, spatial softmax and confidence branch on one backbone tap.

  Attributes:
    num_classes: number of attributes C.
    channels: width of the two hidden 1x1 convs of the mask branch.
    confidence_weighting: if False there is no confidence branch and s = 1.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  channels: int
  confidence_weighting: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array, Array]:
    """Computes the masks.

    Args:
      x: the tap k_i [B, H, W, D].
      train: BatchNorm uses (and updates) batch statistics if True.

    Returns:
      `(a, s, u)`, each float32 [B, H, W, C]: spatial-softmax masks, confidences,
      weighted masks.
    """
    dt, pdt = self.dtype, self.param_dtype
    y = _conv1x1(self.channels, False, dt, pdt, 'conv1')(x)
    y = nn.relu(batch_norm(train, dt, pdt, 'bn1')(y))
    y = _conv1x1(self.channels, False, dt, pdt, 'conv2')(y)
    y = nn.relu(batch_norm(train, dt, pdt, 'bn2')(y))
    z = _conv1x1(self.num_classes, True, dt, pdt, 'logits')(y)
    a = spatial_softmax(z)
    if not self.confidence_weighting:
      return a, jnp.ones_like(a), a
    s = _conv1x1(self.num_classes, True, dt, pdt, 'confidence')(x)
    s = jax.nn.sigmoid(at_least_float32(s))
    return a, s, a * s


class FullSpatialConv(nn.Module):
  """A VALID convolution whose kernel covers the whole input map, computed as one matmul.

  Same parameter as `nn.Conv(features, (H, W), padding='VALID', use_bias=False)`:
  `kernel` [H, W, Cin, features], LeCun-normal initialised, so checkpoints and the
  torchvision-style converter see no difference. With the window equal to the map
  there is exactly one output position, and the convolution is the contraction
  `x.reshape(B, H*W*Cin) @ kernel.reshape(H*W*Cin, features)`, which XLA:CPU runs
  as a GEMM instead of a generic conv (8x faster at 14x14x512 -> 512, `bench_train --pieces`).

  Attributes:
    features: output channels.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies the convolution.

    Args:
      x: [B, H, W, Cin]; H and W fix the kernel's size at initialisation.

    Returns:
      [B, 1, 1, features] in `dtype`.
    """
    b, h, w, c = x.shape
    kernel = self.param(
      'kernel', nn.initializers.lecun_normal(), (h, w, c, self.features), self.param_dtype
    )
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    y = x.reshape(b, h * w * c) @ kernel.reshape(h * w * c, self.features)
    return y.reshape(b, 1, 1, self.features)


class AttentionClassifier(nn.Module):
  """C256-C512-C512(kernel = input H x W)-D_C on the weighted masks u.

  Attributes:
    num_classes: number of attributes C.
    channels: output channels of the three convs (already width-scaled).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  channels: Sequence[int] = (256, 512, 512)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, u: Array, train: bool) -> Array:
    """Classifies the weighted masks.

    Args:
      u: weighted masks [B, H, W, C'] (C' = C, the number of attributes).
      train: BatchNorm uses (and updates) batch statistics if True.

    Returns:
      Logits [B, num_classes], float32.
    """
    if len(self.channels) != 3:
      raise ValueError(f'classifier_channels must have 3 entries, got {tuple(self.channels)}.')
    dt, pdt = self.dtype, self.param_dtype
    c1, c2, c3 = self.channels
    y = _conv1x1(c1, False, dt, pdt, 'conv1')(u)
    y = nn.relu(batch_norm(train, dt, pdt, 'bn1')(y))
    y = _conv1x1(c2, False, dt, pdt, 'conv2')(y)
    y = nn.relu(batch_norm(train, dt, pdt, 'bn2')(y))
    # The kernel covers the whole map, so the output is 1x1 at any input size.
    y = FullSpatialConv(c3, dt, pdt, name='conv3')(y)
    y = nn.relu(batch_norm(train, dt, pdt, 'bn3')(y))
    y = y.reshape(y.shape[0], c3)
    return at_least_float32(nn.Dense(self.num_classes, dtype=dt, param_dtype=pdt, name='fc')(y))


class AttentionHead(nn.Module):
  """One level of score-level attention: `mask` (AttentionMask) + `classifier`.

  Attributes:
    num_classes: number of attributes C.
    mask_channels: hidden width of the mask branch (already width-scaled).
    classifier_channels: the three conv widths of the classifier (width-scaled).
    confidence_weighting: use the confidence branch.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  mask_channels: int = 256
  classifier_channels: Sequence[int] = (256, 512, 512)
  confidence_weighting: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array, Array]:
    """Runs the head.

    Args:
      x: the tap k_i [B, H, W, D].
      train: BatchNorm uses (and updates) batch statistics if True.

    Returns:
      `(logits [B, C], a [B, H, W, C], s [B, H, W, C])`, all float32.
    """
    a, s, u = AttentionMask(
      self.num_classes,
      self.mask_channels,
      self.confidence_weighting,
      self.dtype,
      self.param_dtype,
      name='mask',
    )(x, train)
    logits = AttentionClassifier(
      self.num_classes,
      tuple(self.classifier_channels),
      self.dtype,
      self.param_dtype,
      name='classifier',
    )(u, train)
    return logits, a, s


def _end_padding(size: int, target: int) -> int:
  """Padding after the last row so that a stride-2 window yields `target` rows."""
  if target not in (size // 2, (size + 1) // 2):
    raise ValueError(
      f'Cannot halve a feature map of size {size} to {target}: the level-4 tap must '
      'be half the level-3 tap (rounded either way).'
    )
  return max(0, 2 * target - size)


def _halving_padding(
  shape: tuple[int, int], target: tuple[int, int], start: int
) -> tuple[tuple[int, int], tuple[int, int]]:
  return tuple((start, _end_padding(n, t)) for n, t in zip(shape, target, strict=True))


def upsample_to(u: Array, target: tuple[int, int]) -> Array:
  """Nearest-neighbour resize of [B, H, W, C] to [B, *target, C] (7x7 -> 14x14 repeats)."""
  return jax.image.resize(u, (u.shape[0], *target, u.shape[-1]), method='nearest')


def max_pool_to(u: Array, target: tuple[int, int]) -> Array:
  """2x2 stride-2 max pool of [B, H, W, C] to [B, *target, C] (14x14 -> 7x7).

  Args:
    u: the larger weighted masks.
    target: the (H, W) of the smaller map; floor or ceil of half of u's.

  Returns:
    The pooled masks; an odd edge is padded with -inf when rounding up.
  """
  padding = _halving_padding(u.shape[1:3], target, start=0)
  return nn.max_pool(u, (2, 2), strides=(2, 2), padding=padding)


class StridedConvDown(nn.Module):
  """A 3x3 stride-2 conv C -> C mapping the level-3 masks onto the level-4 grid.

  Attributes:
    features: output channels (C, the number of attributes).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, u: Array, target: tuple[int, int]) -> Array:
    """Downsamples.

    Args:
      u: the larger weighted masks [B, H, W, C].
      target: the (H, W) of the smaller map; floor or ceil of half of u's.

    Returns:
      [B, *target, features], float32.
    """
    padding = _halving_padding(u.shape[1:3], target, start=1)
    y = nn.Conv(
      self.features,
      (3, 3),
      strides=(2, 2),
      padding=padding,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='conv',
    )(u)
    return at_least_float32(y)
