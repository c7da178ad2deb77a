"""Plain `torch.nn` Swin Transformer v1 and ConvNeXt with torchvision's names: test references.

torchvision itself does not install beside the pinned torch, so these are written from
torchvision's model definitions (`torchvision/models/swin_transformer.py`,
`torchvision/models/convnext.py`): the same module tree (so `state_dict()` has exactly
torchvision's keys, including Swin's persistent `relative_position_index` buffer) and
the same maths in eval mode. Dropout and stochastic depth are left out (identity at
eval, and neither owns a tensor); every `nn.Sequential` keeps torchvision's indices by
holding the same parameter-free modules (`Permute`, `GELU`, `Dropout`, `Flatten`).

Swin follows the current torchvision, which copies `shift_size` per call; older
releases set it to 0 in place the first time a window covered the whole (padded) map,
so a model first run at 224 kept no shift in stage 4 at any later size.

`forward(x)` takes NCHW images and returns a dict: `'k1'` (end of stage 3), `'k2'`
(end of stage 4; Swin: after the final norm), both NHWC, `'pooled'` (the [B, D]
vector the ImageNet head reads) and `'logits'`.
"""

import torch
from torch import nn
from torch.nn import functional as F


class Permute(nn.Module):
  """torchvision's `ops.misc.Permute` (no parameters)."""

  def __init__(self, dims: list[int]):
    super().__init__()
    self.dims = dims

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return torch.permute(x, self.dims)


# --- Swin Transformer v1 -----------------------------------------------------------

SWIN_CONFIGS = {
  # embed_dim, depths, num_heads (torchvision's swin_t / swin_s / swin_b).
  'swin_t': (96, (2, 2, 6, 2), (3, 6, 12, 24)),
  'swin_s': (96, (2, 2, 18, 2), (3, 6, 12, 24)),
  'swin_b': (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}
WINDOW = 7


def relative_position_index(window: int) -> torch.Tensor:
  """torchvision's index into the (2W-1)^2 bias table for each pair of window tokens."""
  coords = torch.stack(
    torch.meshgrid(torch.arange(window), torch.arange(window), indexing='ij')
  ).flatten(1)  # 2, N
  rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # N, N, 2
  rel = rel + (window - 1)
  return (rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]).flatten()


class ShiftedWindowAttention(nn.Module):
  def __init__(self, dim: int, window: int, shift: int, num_heads: int):
    super().__init__()
    self.window, self.shift, self.num_heads = window, shift, num_heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)
    self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
    nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
    self.register_buffer('relative_position_index', relative_position_index(window))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, h, w, c = x.shape
    ws, heads = self.window, self.num_heads
    n = ws * ws
    x = F.pad(x, (0, 0, 0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws))
    _, ph, pw, _ = x.shape
    # No shift along an axis that one window covers (torchvision's rule).
    sh = 0 if ws >= ph else self.shift
    sw = 0 if ws >= pw else self.shift
    if sh + sw > 0:
      x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    nwin = (ph // ws) * (pw // ws)
    x = x.view(b, ph // ws, ws, pw // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nwin, n, c)
    qkv = self.qkv(x).reshape(b * nwin, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    bias = self.relative_position_bias_table[self.relative_position_index]
    attn = attn + bias.view(n, n, heads).permute(2, 0, 1).unsqueeze(0)
    if sh + sw > 0:
      # Regions that the cyclic shift brought together must not attend to each other.
      label = x.new_zeros((ph, pw))
      count = 0
      for hs in ((0, -ws), (-ws, -sh), (-sh, None)):
        for wsl in ((0, -ws), (-ws, -sw), (-sw, None)):
          label[hs[0] : hs[1], wsl[0] : wsl[1]] = count
          count += 1
      label = label.view(ph // ws, ws, pw // ws, ws).permute(0, 2, 1, 3).reshape(nwin, n)
      mask = label.unsqueeze(1) - label.unsqueeze(2)
      mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
      attn = attn.view(b, nwin, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
      attn = attn.view(-1, heads, n, n)
    attn = F.softmax(attn, dim=-1)
    x = (attn @ v).transpose(1, 2).reshape(b * nwin, n, c)
    x = self.proj(x)
    x = x.view(b, ph // ws, pw // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
    if sh + sw > 0:
      x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


class SwinBlock(nn.Module):
  def __init__(self, dim: int, num_heads: int, shift: int):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-5)
    self.attn = ShiftedWindowAttention(dim, WINDOW, shift, num_heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-5)
    # torchvision's ops.MLP: Linear, GELU, Dropout, Linear, Dropout -> mlp.0, mlp.3.
    self.mlp = nn.Sequential(
      nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(4 * dim, dim), nn.Dropout(0.0)
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
  def __init__(self, dim: int):
    super().__init__()
    self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
    self.norm = nn.LayerNorm(4 * dim, eps=1e-5)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-3:-1]
    x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
    x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :],
                   x[..., 1::2, 1::2, :]], -1)  # fmt: skip
    return self.reduction(self.norm(x))


class SwinTorch(nn.Module):
  """torchvision's `SwinTransformer` (v1, patch 4, window 7) in eval mode."""

  def __init__(self, embed_dim: int, depths, num_heads, num_classes: int = 1000):
    super().__init__()
    layers = [nn.Sequential(nn.Conv2d(3, embed_dim, 4, 4), Permute([0, 2, 3, 1]),
                            nn.LayerNorm(embed_dim, eps=1e-5))]  # fmt: skip
    for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
      dim = embed_dim * 2**i
      layers.append(
        nn.Sequential(
          *[SwinBlock(dim, heads, 0 if j % 2 == 0 else WINDOW // 2) for j in range(depth)]
        )
      )
      if i < len(depths) - 1:
        layers.append(PatchMerging(dim))
    self.features = nn.Sequential(*layers)
    self.num_features = embed_dim * 2 ** (len(depths) - 1)
    self.norm = nn.LayerNorm(self.num_features, eps=1e-5)
    self.head = nn.Linear(self.num_features, num_classes)

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for i, layer in enumerate(self.features):
      x = layer(x)
      if i == len(self.features) - 3:
        out['k1'] = x
    out['k2'] = self.norm(x)
    out['pooled'] = out['k2'].mean(dim=(1, 2))
    out['logits'] = self.head(out['pooled'])
    return out


def swin(name: str, depths=None) -> SwinTorch:
  """A torchvision Swin v1 by name; `depths` overrides the blocks per stage (tests)."""
  embed_dim, default_depths, heads = SWIN_CONFIGS[name]
  return SwinTorch(embed_dim, depths or default_depths, heads)


# --- ConvNeXt ----------------------------------------------------------------------

CONVNEXT_CONFIGS = {
  # channels per stage, blocks per stage (torchvision's convnext_tiny / small / base).
  'convnext_tiny': ((96, 192, 384, 768), (3, 3, 9, 3)),
  'convnext_small': ((96, 192, 384, 768), (3, 3, 27, 3)),
  'convnext_base': ((128, 256, 512, 1024), (3, 3, 27, 3)),
}


class LayerNorm2d(nn.LayerNorm):
  """LayerNorm over the channels of an NCHW tensor."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
    return x.permute(0, 3, 1, 2)


def depthwise_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
  """`conv(x)` for a depthwise 'same' conv, as im2col and a per-channel dot product.

  The same sums as torch's grouped convolution (tested against it), but fast in
  float64, where torch's depthwise kernel takes about a second per 56x56 block.
  """
  b, c, h, w = x.shape
  k = conv.kernel_size[0]
  cols = F.unfold(x, k, padding=conv.padding[0]).view(b, c, k * k, h * w)
  out = torch.einsum('bckp,ck->bcp', cols, conv.weight.view(c, k * k)).view(b, c, h, w)
  return out + conv.bias.view(1, c, 1, 1)


class CNBlock(nn.Module):
  def __init__(self, dim: int, layer_scale: float = 1e-6):
    super().__init__()
    self.block = nn.Sequential(
      nn.Conv2d(dim, dim, 7, padding=3, groups=dim),
      Permute([0, 2, 3, 1]),
      nn.LayerNorm(dim, eps=1e-6),
      nn.Linear(dim, 4 * dim),
      nn.GELU(),
      nn.Linear(4 * dim, dim),
      Permute([0, 3, 1, 2]),
    )
    self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = depthwise_conv(x, self.block[0])
    for layer in self.block[1:]:
      y = layer(y)
    return x + self.layer_scale * y


class ConvNeXtTorch(nn.Module):
  """torchvision's `ConvNeXt` in eval mode."""

  def __init__(self, channels, depths, num_classes: int = 1000):
    super().__init__()
    layers = [nn.Sequential(nn.Conv2d(3, channels[0], 4, 4), LayerNorm2d(channels[0], eps=1e-6))]
    for i, (dim, depth) in enumerate(zip(channels, depths, strict=True)):
      layers.append(nn.Sequential(*[CNBlock(dim) for _ in range(depth)]))
      if i < len(channels) - 1:
        layers.append(
          nn.Sequential(LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, channels[i + 1], 2, 2))
        )
    self.features = nn.Sequential(*layers)
    self.num_features = channels[-1]
    self.classifier = nn.Sequential(
      LayerNorm2d(channels[-1], eps=1e-6), nn.Flatten(1), nn.Linear(channels[-1], num_classes)
    )

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for i, layer in enumerate(self.features):
      x = layer(x)
      if i == len(self.features) - 3:
        out['k1'] = x.permute(0, 2, 3, 1)
    out['k2'] = x.permute(0, 2, 3, 1)
    pooled = self.classifier[1](self.classifier[0](x.mean(dim=(2, 3), keepdim=True)))
    out['pooled'] = pooled
    out['logits'] = self.classifier[2](pooled)
    return out


def convnext(name: str, depths=None) -> ConvNeXtTorch:
  """A torchvision ConvNeXt by name; `depths` overrides the blocks per stage (tests)."""
  channels, default_depths = CONVNEXT_CONFIGS[name]
  return ConvNeXtTorch(channels, depths or default_depths)


def randomise(model: nn.Module, seed: int) -> None:
  """Random values in every tensor that torchvision initialises to a constant.

  LayerNorm scales and biases, linear and conv biases, Swin's bias tables (std 1, so
  that the relative position bias and the shift mask both move the attention) and
  ConvNeXt's layer scales (O(1) instead of 1e-6, which would leave every block a near
  identity) all get values a swapped or mis-laid tensor would show in the outputs.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.LayerNorm):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0.0, 0.2, generator=g)
      elif isinstance(m, nn.Linear | nn.Conv2d) and m.bias is not None:
        m.bias.normal_(0.0, 0.1, generator=g)
      if isinstance(m, ShiftedWindowAttention):
        m.relative_position_bias_table.normal_(0.0, 1.0, generator=g)
      if isinstance(m, CNBlock):
        m.layer_scale.uniform_(0.2, 1.0, generator=g)
  model.eval()
