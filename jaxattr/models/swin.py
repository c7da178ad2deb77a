"""Swin Transformer v1 (swin_t / swin_s / swin_b, torchvision layout) in Flax linen, NHWC.

The module tree mirrors torchvision's `torchvision.models.swin_transformer` so that
weights convert by the naming rule of `resnet.py` (Flax path = torch key split on
'.'; `weight` -> `kernel` (linear, conv) or `scale` (LayerNorm); 2-D tensors
transposed, 4-D OIHW -> HWIO):

  features.0.0 (patch conv 4x4/4), features.0.2 (LayerNorm);
  features.{1,3,5,7}.{i} blocks: norm1, attn.qkv, attn.proj,
    attn.relative_position_bias_table, norm2, mlp.0, mlp.3;
  features.{2,4,6} PatchMerging: norm, reduction (no bias);
  norm (final LayerNorm), head (ImageNet classifier, only with `num_classes`).

Two tensors need a word:
- `relative_position_bias_table` is [(2W-1)^2, heads] in torch and is stored here
  transposed, [heads, (2W-1)^2], so that the generic 2-D rule maps it (and the
  per-head bias is one gather, `table[:, index]`).
- `relative_position_index` is a constant buffer torchvision saves in its state
  dict; it has no Flax variable (it is recomputed). `adapt_state_dict` checks it
  against the recomputed index and removes it before conversion.

Semantics follow torchvision (eval mode) exactly: patch embedding conv + LayerNorm;
windows of 7x7 with the feature map zero-padded at the bottom/right to a multiple of
the window (padding after norm1, inside the attention, unmasked, as torchvision
does: 256x128 inputs give 8x4 maps in stage 4); odd blocks shift by 3 along each
axis whose padded size exceeds the window (no shift along an axis one window
covers); the shifted-window mask adds -100 between tokens from different regions;
relative position bias; q scaled by head_dim^-0.5 before q.k; LayerNorm eps 1e-5;
exact (erf) GELU; PatchMerging pads odd sizes, concatenates the four 2x2 phases in
torchvision's order (x0, x1, x2, x3 = (0,0), (1,0), (0,1), (1,1)), norm, reduction.
Stochastic depth (torchvision's 'row' mode: per-sample drop, survivors scaled by
1/(1-p), rate growing linearly from 0 to `stochastic_depth_prob` over the blocks)
is applied only when `train` is True and the rate is positive; it then needs the
'dropout' RNG stream. It is off (0.0) by default; torchvision trained with the
rates in `SWIN_SPECS`.

Precision: matmuls run in `dtype` (bf16 for speed); attention logits, bias, mask and
softmax in at least float32; LayerNorm statistics and normalisation in at least
float32 (Flax's LayerNorm), its output in `dtype`.

`width` scales the channels per attention head (32 at width 1, rounded, at least 1)
and keeps torchvision's head counts, so every stage stays divisible by its heads:
width 1/16 gives swin_t stage widths 6, 12, 24, 48. `depth` scales the blocks of
every stage in pairs (`resnet.scale_blocks` of the pair count), since a stage
alternates plain and shifted windows: swin_t at depth 1/4 has 2, 2, 2, 2 blocks.

`__call__(x, train)` returns `{'k1': end of stage 3 [B, H/16, W/16, 4C], 'k2': final
norm [B, H/32, W/32, 8C], 'pooled': mean of k2 over space [B, 8C], at least
float32 (what `head` reads)}` plus `'logits'` (float32) with `num_classes` (sizes rounded up).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxattr.models.backbone import creator, float32_avg_pool, linear, remat_block
from jaxattr.models.resnet import scale_blocks, torch_linear_init

Array = jax.Array
Dtype = Any

LN_EPSILON = 1e-5
WINDOW = 7
PATCH = 4
MLP_RATIO = 4
HEAD_DIM = 32  # embed_dim / num_heads[0] for all three torchvision models.
# The additive attention mask torchvision uses between regions of a shifted window.
MASK_VALUE = -100.0

# torchvision's SwinTransformer init: trunc_normal(std=0.02) for every Linear, zero bias.
linear_init = nn.initializers.truncated_normal(0.02)


@dataclasses.dataclass(frozen=True)
class SwinSpec:
  """The architecture of one torchvision Swin v1 (width 1)."""

  embed_dim: int
  depths: tuple[int, int, int, int]
  num_heads: tuple[int, int, int, int]
  # torchvision's ImageNet training rate, for reference (`stochastic_depth_prob`).
  stochastic_depth_prob: float


SWIN_SPECS = {
  'swin_t': SwinSpec(96, (2, 2, 6, 2), (3, 6, 12, 24), 0.2),
  'swin_s': SwinSpec(96, (2, 2, 18, 2), (3, 6, 12, 24), 0.3),
  'swin_b': SwinSpec(128, (2, 2, 18, 2), (4, 8, 16, 32), 0.5),
}


def swin_embed_dim(spec: SwinSpec, width: float = 1.0) -> int:
  """Stage-1 channels: torchvision's head count times the (scaled) head width.

  Args:
    spec: the architecture.
    width: multiplier of the channels per head.

  Returns:
    The embedding dimension (96 for swin_t at width 1).
  """
  head_dim = spec.embed_dim // spec.num_heads[0]
  return spec.num_heads[0] * max(1, int(round(head_dim * width)))


def swin_tap_channels(name: str, width: float = 1.0) -> tuple[int, int]:
  """Channels of the `k1` (stage 3) and `k2` (final norm) taps.

  Args:
    name: 'swin_t', 'swin_s' or 'swin_b'.
    width: multiplier of the channels per head.

  Returns:
    `(k1_channels, k2_channels)`, (384, 768) for swin_t.
  """
  embed = swin_embed_dim(SWIN_SPECS[name], width)
  return 4 * embed, 8 * embed


def relative_position_index(window: int) -> np.ndarray:
  """torchvision's `relative_position_index`: table row of each (query, key) pair.

  Args:
    window: the window side W.

  Returns:
    int64 [W^2 * W^2]: for tokens i = (hi, wi), j = (hj, wj) in row-major order,
    `(hi - hj + W - 1) * (2W - 1) + (wi - wj + W - 1)` at position `i * W^2 + j`.
  """
  h, w = np.meshgrid(np.arange(window), np.arange(window), indexing='ij')
  h, w = h.reshape(-1), w.reshape(-1)
  dh = h[:, None] - h[None, :] + window - 1
  dw = w[:, None] - w[None, :] + window - 1
  return (dh * (2 * window - 1) + dw).reshape(-1).astype(np.int64)


def _regions(size: int, window: int, shift: int) -> np.ndarray:
  """Region id along one axis of a shifted map (torchvision's three slices)."""
  if shift == 0:
    # torchvision's slices then are (0, -W), (-W, -0) = empty, (-0, None) = all:
    # the last one overwrites, so the whole axis is one region.
    return np.zeros(size, np.int64)
  ids = np.full(size, 2, np.int64)
  ids[: size - shift] = 1
  ids[: size - window] = 0
  return ids


def shift_mask(height: int, width: int, window: int, shift_h: int, shift_w: int) -> np.ndarray:
  """The additive mask of shifted windows on a padded (height, width) map.

  Args:
    height: padded map height (a multiple of `window`).
    width: padded map width (a multiple of `window`).
    window: window side W.
    shift_h: the shift along the height (0 = none).
    shift_w: the shift along the width (0 = none).

  Returns:
    float [num_windows, W^2, W^2]: 0 between tokens of one region, -100 otherwise;
    windows in row-major order, tokens row-major within a window.
  """
  label = 3 * _regions(height, window, shift_h)[:, None] + _regions(width, window, shift_w)[None]
  label = label.reshape(height // window, window, width // window, window)
  label = label.transpose(0, 2, 1, 3).reshape(-1, window * window)
  return np.where(label[:, None, :] != label[:, :, None], MASK_VALUE, 0.0)


def stochastic_depth(module: nn.Module, x: Array, rate: float, train: bool) -> Array:
  """torchvision's `StochasticDepth(rate, 'row')`: drops whole samples of a residual branch.

  Args:
    module: the module whose 'dropout' RNG stream draws the mask.
    x: the branch output [B, ...].
    rate: the drop probability.
    train: identity unless True.

  Returns:
    `x * keep / (1 - rate)` with `keep` ~ Bernoulli(1 - rate) per sample.
  """
  if not train or rate == 0.0:
    return x
  keep = jax.random.bernoulli(module.make_rng('dropout'), 1.0 - rate, (x.shape[0],))
  # torchvision scales survivors only when some survive (rate 1 drops everything).
  scale = jnp.where(keep, 1.0 / (1.0 - rate) if rate < 1.0 else 0.0, 0.0).astype(x.dtype)
  return x * scale.reshape((-1,) + (1,) * (x.ndim - 1))


def block_drop_rates(depths: Sequence[int], prob: float) -> tuple[tuple[float, ...], ...]:
  """torchvision's stochastic-depth rate of every block: `prob * k / (total - 1)`.

  Args:
    depths: blocks per stage.
    prob: the rate of the last block.

  Returns:
    Per stage, the rates of its blocks; block k counts over the whole network.
  """
  total = sum(depths)
  rates, k = [], 0
  for depth in depths:
    rates.append(tuple(prob * (k + j) / max(total - 1, 1) for j in range(depth)))
    k += depth
  return tuple(rates)


def _layer_norm(dtype: Dtype, param_dtype: Dtype, name: str, epsilon: float = LN_EPSILON):
  # Two-pass variance (as torch), statistics in at least float32 (Flax's default).
  return nn.LayerNorm(
    epsilon=epsilon, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name
  )


def _dense(features: int, dtype: Dtype, param_dtype: Dtype, name: str, use_bias: bool = True):
  return linear(features, dtype, param_dtype, name, linear_init, use_bias=use_bias)


class WindowAttention(nn.Module):
  """torchvision's `ShiftedWindowAttention` (v1): window MSA with relative position bias.

  Attributes:
    num_heads: attention heads.
    shift: the shift of this block (0 or W // 2), before torchvision's per-axis rule.
    window: window side W.
  """

  num_heads: int
  shift: int
  window: int = WINDOW
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[B, H, W, C] -> [B, H, W, C]."""
    b, h, w, c = x.shape
    ws, heads = self.window, self.num_heads
    n = ws * ws
    # Zero padding to whole windows, bottom / right, not masked (as torchvision).
    x = jnp.pad(x, ((0, 0), (0, -h % ws), (0, -w % ws), (0, 0)))
    ph, pw = x.shape[1:3]
    # torchvision: no shift along an axis whose padded size one window covers.
    sh = 0 if ws >= ph else self.shift
    sw = 0 if ws >= pw else self.shift
    if sh or sw:
      x = jnp.roll(x, (-sh, -sw), axis=(1, 2))
    nwin = (ph // ws) * (pw // ws)
    x = x.reshape(b, ph // ws, ws, pw // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, nwin, n, c)

    qkv = _dense(3 * c, self.dtype, self.param_dtype, 'qkv')(x)
    qkv = qkv.reshape(b, nwin, n, 3, heads, c // heads)
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    q = q * jnp.asarray((c // heads) ** -0.5, q.dtype)
    logits = jnp.einsum('bwnhd,bwmhd->bwhnm', q, k)

    # Stored [heads, (2W-1)^2] (torch: transposed), so the generic 2-D rule maps it.
    table = self.param(
      'relative_position_bias_table',
      nn.initializers.truncated_normal(0.02),
      (heads, (2 * ws - 1) ** 2),
      self.param_dtype,
    )
    softmax_dtype = jnp.promote_types(self.dtype, jnp.float32)
    bias = table[:, relative_position_index(ws)].reshape(heads, n, n)
    logits = logits.astype(softmax_dtype) + bias.astype(softmax_dtype)
    if sh or sw:
      mask = jnp.asarray(shift_mask(ph, pw, ws, sh, sw), softmax_dtype)
      logits = logits + mask[None, :, None]
    attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    y = jnp.einsum('bwhnm,bwmhd->bwnhd', attn, v).reshape(b, nwin, n, c)
    y = _dense(c, self.dtype, self.param_dtype, 'proj')(y)

    y = y.reshape(b, ph // ws, pw // ws, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(b, ph, pw, c)
    if sh or sw:
      y = jnp.roll(y, (sh, sw), axis=(1, 2))
    return y[:, :h, :w]


class Mlp(nn.Module):
  """torchvision's `ops.MLP([4C, C])`: Linear '0', GELU (exact), Linear '3'."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    x = _dense(MLP_RATIO * c, self.dtype, self.param_dtype, '0')(x)
    x = nn.gelu(x, approximate=False)
    return _dense(c, self.dtype, self.param_dtype, '3')(x)


class SwinBlock(nn.Module):
  """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

  num_heads: int
  shift: int
  drop_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    dt, pdt = self.dtype, self.param_dtype
    y = _layer_norm(dt, pdt, 'norm1')(x)
    y = WindowAttention(self.num_heads, self.shift, dtype=dt, param_dtype=pdt, name='attn')(y)
    x = x + stochastic_depth(self, y, self.drop_rate, train)
    y = Mlp(dt, pdt, name='mlp')(_layer_norm(dt, pdt, 'norm2')(x))
    return x + stochastic_depth(self, y, self.drop_rate, train)


class PatchMerging(nn.Module):
  """2x2 neighbourhoods -> channels (pad odd sizes), LayerNorm(4C), Linear 4C -> 2C."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h, w, c = x.shape[-3:]
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate(
      [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1
    )
    x = _layer_norm(self.dtype, self.param_dtype, 'norm')(x)
    return _dense(2 * c, self.dtype, self.param_dtype, 'reduction', use_bias=False)(x)


class PatchEmbed(nn.Module):
  """torchvision's `features.0`: Conv 4x4 stride 4 ('0'), Permute, LayerNorm ('2')."""

  embed_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    # The patch conv keeps torch's Conv2d default init (U(+-1/sqrt(fan_in))): the
    # model-wide trunc_normal of torchvision's Swin touches only nn.Linear.
    kernel_init, bias_init = torch_linear_init(PATCH * PATCH * x.shape[-1])
    x = nn.Conv(
      self.embed_dim,
      (PATCH, PATCH),
      strides=(PATCH, PATCH),
      padding='VALID',
      kernel_init=kernel_init,
      bias_init=bias_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='0',
    )(x)
    return _layer_norm(self.dtype, self.param_dtype, '2')(x)


class SwinStage(nn.Module):
  """Blocks '0', '1', ...: even ones unshifted, odd ones shifted by W // 2."""

  num_blocks: int
  num_heads: int
  drop_rates: Sequence[float]
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    block = remat_block(SwinBlock, self.remat)
    for i in range(self.num_blocks):
      x = block(
        self.num_heads,
        0 if i % 2 == 0 else WINDOW // 2,
        self.drop_rates[i],
        self.dtype,
        self.param_dtype,
        name=str(i),
      )(x, train)
    return x


class SwinFeatures(nn.Module):
  """torchvision's `features` Sequential; returns (end of stage 3, end of stage 4)."""

  embed_dim: int
  depths: Sequence[int]
  num_heads: Sequence[int]
  stochastic_depth_prob: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
    dt, pdt = self.dtype, self.param_dtype
    x = PatchEmbed(self.embed_dim, dt, pdt, name='0')(x)
    rates = block_drop_rates(self.depths, self.stochastic_depth_prob)
    k1 = None
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads, strict=True)):
      x = SwinStage(depth, heads, rates[i], self.remat, dt, pdt, name=str(2 * i + 1))(x, train)
      if i == len(self.depths) - 2:
        k1 = x
      if i < len(self.depths) - 1:
        x = PatchMerging(dt, pdt, name=str(2 * i + 2))(x)
    return k1, x


class Swin(nn.Module):
  """A torchvision Swin Transformer v1 exposing the stage-3 / stage-4 taps.

  Attributes:
    embed_dim: stage-1 channels (after width scaling).
    depths: blocks per stage.
    num_heads: attention heads per stage.
    num_classes: if set, adds torchvision's `head` and returns `'logits'`.
    stochastic_depth_prob: the last block's drop rate in training (0 = off).
    remat: rematerialise each block in the backward pass (`backbone.remat_block`).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  embed_dim: int
  depths: Sequence[int]
  num_heads: Sequence[int]
  num_classes: int | None = None
  stochastic_depth_prob: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> dict[str, Array]:
    """The backbone contract (`registry.py`): k1 and k2 at H/16 and H/32 (rounded up) in
    `dtype`, `pooled` at least float32; `train` turns on stochastic depth (rate > 0)."""
    k1, x = SwinFeatures(
      self.embed_dim,
      tuple(self.depths),
      tuple(self.num_heads),
      self.stochastic_depth_prob,
      self.remat,
      self.dtype,
      self.param_dtype,
      name='features',
    )(x, train)
    k2 = _layer_norm(self.dtype, self.param_dtype, 'norm')(x)
    # The pooled vector in at least float32, as the registry's contract asks.
    out = {'k1': k1, 'k2': k2, 'pooled': float32_avg_pool(k2)}
    if self.num_classes is not None:
      logits = _dense(self.num_classes, self.dtype, self.param_dtype, 'head')(out['pooled'])
      out['logits'] = logits.astype(jnp.float32)
    return out


def swin_fields(name: str, width: float, depth: float) -> dict[str, Any]:
  """`Swin`'s fields for torchvision's 'swin_t', 'swin_s', 'swin_b' (`backbone.creator`).

  `width` multiplies the channels per head, `depth` the blocks of every stage, in
  pairs (1.0 = torchvision). The option `stochastic_depth_prob` is the drop rate of
  the last block in training (0 = off; torchvision's ImageNet rates are in
  `SWIN_SPECS`).
  """
  spec = SWIN_SPECS[name]
  return {
    'embed_dim': swin_embed_dim(spec, width),
    'depths': tuple(2 * scale_blocks(n // 2, depth) for n in spec.depths),
    'num_heads': spec.num_heads,
  }


create_swin = creator(Swin, swin_fields)


def adapt_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
  """Removes torchvision's `relative_position_index` buffers, after checking them.

  The buffers are constants of the window size that the Flax model recomputes; a
  file whose index differs was saved from a different architecture.

  Args:
    state_dict: torchvision key -> tensor (numpy or torch on the CPU).

  Returns:
    A new dict without the `*.relative_position_index` keys; other keys unchanged.

  Raises:
    ValueError: naming every index that differs from torchvision's for 7x7 windows.
  """
  expected = relative_position_index(WINDOW)
  out, wrong = {}, []
  for key, value in state_dict.items():
    if key.rsplit('.', 1)[-1] != 'relative_position_index':
      out[key] = value
      continue
    array = np.asarray(value)
    if array.shape != expected.shape or not np.array_equal(array, expected):
      wrong.append(f'{key} {tuple(array.shape)}')
  if wrong:
    raise ValueError(
      f'{len(wrong)} relative_position_index buffers differ from those of {WINDOW}x{WINDOW} '
      'windows (was the file saved from another Swin variant?):\n  ' + '\n  '.join(wrong)
    )
  return out
