"""Plain `torch.nn` reference implementations of the jaxattr architectures.

Two uses: the conversion parity tests (random weights in torchvision's layout run
here and, converted, in Flax) and the PyTorch side of the speed benchmark (the same
architecture timed in both frameworks). torchvision itself is not a dependency (it
does not install beside the pinned torch): the backbones are written out from
torchvision's model definitions with its exact module names, so `state_dict()` keys
equal those of `torchvision.models.resnet50()` etc., and real torchvision checkpoints
load with `load_state_dict(strict=True)` (DenseNet files after the legacy-key
renaming torchvision also applies, `jaxattr.models.densenet.rename_legacy_keys`).

  ResNetTorch     ResNet-18/34/50/101/152, v1.5 (stride on the bottleneck's 3x3)
  DenseNetTorch   DenseNet-121/161/169/201
  VisionTransformerTorch
                  ViT-B/16 (`torchvision.models.vit_b_16`), built on
                  `torch.nn.MultiheadAttention`; at inputs other than 224x224 the
                  position embedding is resized with `F.interpolate(mode='bicubic',
                  align_corners=True)`, torchvision's `interpolate_embeddings`
  AttentionHeadTorch / AttentionMaskTorch / AttentionClassifierTorch
                  the attention module of `jaxattr/models/attention.py`
  AttributeModelTorch
                  backbone + primary classifier + score-level attention at the
                  given levels; its module names are the Flax `AttributeModel`'s
                  (`backbone`, `classifier`, `attention3.mask.conv1`, ...), so the
                  generic name mapping of `jaxattr.convert` carries weights across.

Tensors are NCHW here (torch's convention); backbones return a dict with the taps
`k1` (layer3 / after denseblock3 / ViT tokens after block 8) and `k2` (layer4 /
relu(norm5) / ViT tokens after the final norm), `pooled` (what the ImageNet head
reads: the average of k2, ViT's class token) and, when `num_classes` is set,
`logits`. `width` scales channel counts with the same rounding as the Flax models
(`max(1, round(c * width))`), so tiny variants match too.

Initialisation mirrors torchvision for the backbones; the heads use torch's
defaults except the primary classifier (Xavier, zero bias, as the model's docstring
says). Test-only: imported by the tests and the benchmark's `--compare_torch`.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def scale_channels(channels: int, width: float) -> int:
  """`max(1, round(channels * width))`: the channel count at a width multiplier.

  Args:
    channels: the width-1 channel count.
    width: the multiplier.

  Returns:
    The scaled count.
  """
  return max(1, int(round(channels * width)))


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
  return (size + 2 * padding - kernel) // stride + 1


# --- ResNet -----------------------------------------------------------------------


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def _downsample(cin: int, out: int, stride: int) -> nn.Sequential | None:
  """A block's projection shortcut (1x1 conv + BN) where the block changes shape, else None."""
  if stride == 1 and cin == out:
    return None
  return nn.Sequential(_conv1x1(cin, out, stride), nn.BatchNorm2d(out))


def _cnn_outputs(k1: Tensor, k2: Tensor, head: nn.Module | None) -> dict[str, Tensor]:
  """A CNN backbone's outputs: its taps, the global average of `k2` and, with a head, logits."""
  out = {'k1': k1, 'k2': k2, 'pooled': torch.flatten(F.adaptive_avg_pool2d(k2, 1), 1)}
  if head is not None:
    out['logits'] = head(out['pooled'])
  return out


class BasicBlock(nn.Module):
  """torchvision's BasicBlock: conv1/bn1/conv2/bn2 and an optional `downsample`."""

  expansion = 1

  def __init__(self, cin: int, planes: int, out: int, stride: int = 1):
    super().__init__()
    self.conv1 = _conv3x3(cin, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = _conv3x3(planes, out)
    self.bn2 = nn.BatchNorm2d(out)
    self.downsample = _downsample(cin, out, stride)

  def forward(self, x: Tensor) -> Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu(y + identity)


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (v1.5): the stride sits on `conv2`, the 3x3 conv."""

  expansion = 4

  def __init__(self, cin: int, planes: int, out: int, stride: int = 1):
    super().__init__()
    self.conv1 = _conv1x1(cin, planes)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3x3(planes, planes, stride)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = _conv1x1(planes, out)
    self.bn3 = nn.BatchNorm2d(out)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = _downsample(cin, out, stride)

  def forward(self, x: Tensor) -> Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + identity)


RESNET_ARCHS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
  'resnet18': (BasicBlock, (2, 2, 2, 2)),
  'resnet34': (BasicBlock, (3, 4, 6, 3)),
  'resnet50': (Bottleneck, (3, 4, 6, 3)),
  'resnet101': (Bottleneck, (3, 4, 23, 3)),
  'resnet152': (Bottleneck, (3, 8, 36, 3)),
}


class ResNetTorch(nn.Module):
  """torchvision's ResNet (names conv1, bn1, layer1..4, fc) returning the k1/k2 taps.

  Args:
    block: `BasicBlock` or `Bottleneck`.
    layers: blocks per stage.
    width: channel multiplier (1.0 = torchvision).
    num_classes: if set, the `fc` classifier and a `logits` output.
  """

  def __init__(
    self,
    block: type[nn.Module],
    layers: Sequence[int],
    width: float = 1.0,
    num_classes: int | None = 1000,
  ):
    super().__init__()
    stem = scale_channels(64, width)
    self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(stem)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    cin = stem
    for i, (num_blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512), strict=True)):
      p = scale_channels(planes, width)
      out = scale_channels(planes * block.expansion, width)
      blocks = []
      for j in range(num_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(block(cin, p, out, stride))
        cin = out
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
    self.num_features = cin
    self.fc = nn.Linear(cin, num_classes) if num_classes is not None else None
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

  def forward(self, x: Tensor) -> dict[str, Tensor]:
    """Runs the backbone on NCHW images; returns `k1`, `k2` (NCHW) and maybe `logits`."""
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer2(self.layer1(x))
    k1 = self.layer3(x)
    k2 = self.layer4(k1)
    return _cnn_outputs(k1, k2, self.fc)


# --- DenseNet ---------------------------------------------------------------------


class _DenseLayer(nn.Module):
  """norm1-relu1-conv1 (bottleneck 1x1) - norm2-relu2-conv2 (3x3, growth)."""

  def __init__(self, cin: int, growth: int, bottleneck: int):
    super().__init__()
    self.norm1 = nn.BatchNorm2d(cin)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(cin, bottleneck, 1, bias=False)
    self.norm2 = nn.BatchNorm2d(bottleneck)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(bottleneck, growth, 3, padding=1, bias=False)

  def forward(self, x: Tensor) -> Tensor:
    # In-place ReLUs are safe: each acts on a fresh BatchNorm output, never on `x`.
    y = self.conv1(self.relu1(self.norm1(x)))
    return self.conv2(self.relu2(self.norm2(y)))


class _DenseBlock(nn.ModuleDict):
  """`denselayer1..N`, each appending its growth channels to the features."""

  def __init__(self, num_layers: int, cin: int, growth: int, bottleneck: int):
    super().__init__()
    for i in range(num_layers):
      self[f'denselayer{i + 1}'] = _DenseLayer(cin + i * growth, growth, bottleneck)

  def forward(self, x: Tensor) -> Tensor:
    features = [x]
    for layer in self.values():
      features.append(layer(torch.cat(features, 1)))
    return torch.cat(features, 1)


class _Transition(nn.Sequential):
  """norm-relu-conv (1x1) - pool (AvgPool 2/2)."""

  def __init__(self, cin: int, cout: int):
    super().__init__()
    self.norm = nn.BatchNorm2d(cin)
    self.relu = nn.ReLU(inplace=True)
    self.conv = nn.Conv2d(cin, cout, 1, bias=False)
    self.pool = nn.AvgPool2d(2, stride=2)


DENSENET_ARCHS: dict[str, tuple[int, tuple[int, int, int, int], int]] = {
  # growth_rate, block_config, num_init_features (bn_size is 4 for all).
  'densenet121': (32, (6, 12, 24, 16), 64),
  'densenet161': (48, (6, 12, 36, 24), 96),
  'densenet169': (32, (6, 12, 32, 32), 64),
  'densenet201': (32, (6, 12, 48, 32), 64),
}


class DenseNetTorch(nn.Module):
  """torchvision's DenseNet (`features.*`, `classifier`) returning the k1/k2 taps.

  Args:
    growth_rate: channels added per dense layer (width 1).
    block_config: dense layers per block.
    num_init_features: stem channels (width 1).
    bn_size: the bottleneck has `bn_size * growth_rate` channels (width 1).
    width: channel multiplier (1.0 = torchvision).
    num_classes: if set, the `classifier` and a `logits` output.
  """

  def __init__(
    self,
    growth_rate: int,
    block_config: Sequence[int],
    num_init_features: int,
    bn_size: int = 4,
    width: float = 1.0,
    num_classes: int | None = 1000,
  ):
    super().__init__()
    growth = scale_channels(growth_rate, width)
    bottleneck = scale_channels(bn_size * growth_rate, width)
    channels = scale_channels(num_init_features, width)
    features = nn.Sequential()
    features.add_module('conv0', nn.Conv2d(3, channels, 7, stride=2, padding=3, bias=False))
    features.add_module('norm0', nn.BatchNorm2d(channels))
    features.add_module('relu0', nn.ReLU(inplace=True))
    features.add_module('pool0', nn.MaxPool2d(3, stride=2, padding=1))
    for i, num_layers in enumerate(block_config):
      features.add_module(
        f'denseblock{i + 1}', _DenseBlock(num_layers, channels, growth, bottleneck)
      )
      channels += num_layers * growth
      if i != len(block_config) - 1:
        features.add_module(f'transition{i + 1}', _Transition(channels, channels // 2))
        channels //= 2
    features.add_module('norm5', nn.BatchNorm2d(channels))
    self.features = features
    self.num_features = channels
    self.num_blocks = len(block_config)
    self.classifier = nn.Linear(channels, num_classes) if num_classes is not None else None
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight)
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
      elif isinstance(m, nn.Linear):
        nn.init.zeros_(m.bias)

  def forward(self, x: Tensor) -> dict[str, Tensor]:
    """Runs the backbone on NCHW images; returns `k1`, `k2` (NCHW) and maybe `logits`."""
    k1 = None
    for name, module in self.features.named_children():
      x = module(x)
      if name == f'denseblock{self.num_blocks - 1}':
        k1 = x
    k2 = F.relu(x)
    return _cnn_outputs(k1, k2, self.classifier)


# --- Vision Transformer ----------------------------------------------------------------


class MLPBlockTorch(nn.Sequential):
  """torchvision's `MLPBlock`: `0` Linear, `1` GELU, `2` Dropout, `3` Linear, `4` Dropout."""

  def __init__(self, dim: int, mlp_dim: int):
    super().__init__(
      nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_dim, dim), nn.Dropout(0.0)
    )
    for m in self.modules():
      if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        nn.init.normal_(m.bias, std=1e-6)


class EncoderBlockTorch(nn.Module):
  """torchvision's `EncoderBlock`: ln_1, self_attention, ln_2, mlp (pre-norm residuals)."""

  def __init__(self, num_heads: int, dim: int, mlp_dim: int):
    super().__init__()
    self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
    self.self_attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
    self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = MLPBlockTorch(dim, mlp_dim)

  def forward(self, x: Tensor) -> Tensor:
    y = self.ln_1(x)
    y, _ = self.self_attention(y, y, y, need_weights=False)
    x = x + y
    return x + self.mlp(self.ln_2(x))


class EncoderTorch(nn.Module):
  """torchvision's `Encoder`: pos_embedding, layers.encoder_layer_{i}, ln."""

  def __init__(self, seq_length: int, num_layers: int, num_heads: int, dim: int, mlp_dim: int):
    super().__init__()
    self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim).normal_(std=0.02))
    self.layers = nn.Sequential()
    for i in range(num_layers):
      self.layers.add_module(f'encoder_layer_{i}', EncoderBlockTorch(num_heads, dim, mlp_dim))
    self.ln = nn.LayerNorm(dim, eps=1e-6)


class VisionTransformerTorch(nn.Module):
  """torchvision's `VisionTransformer` (conv_proj, class_token, encoder, heads.head).

  Args:
    patch_size: patch side (16).
    num_layers: encoder blocks (12).
    num_heads: heads (12).
    hidden_dim: D at width 1 (768); `width` scales D / num_heads.
    mlp_dim: MLP width at width 1 (3072).
    image_size: the side the position embedding is for (224).
    width: multiplier of the head dimension and the MLP width.
    num_classes: if set, `heads.head` and a `logits` output.
    tap_after: `k1` is read after this many blocks (None: two thirds of the depth).
  """

  def __init__(
    self,
    patch_size: int = 16,
    num_layers: int = 12,
    num_heads: int = 12,
    hidden_dim: int = 768,
    mlp_dim: int = 3072,
    image_size: int = 224,
    width: float = 1.0,
    num_classes: int | None = 1000,
    tap_after: int | None = None,
  ):
    super().__init__()
    dim = num_heads * scale_channels(hidden_dim // num_heads, width)
    self.patch_size, self.hidden_dim = patch_size, dim
    self.grid = image_size // patch_size
    self.tap_after = max(1, 2 * num_layers // 3) if tap_after is None else tap_after
    self.conv_proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)
    self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.encoder = EncoderTorch(
      self.grid**2 + 1, num_layers, num_heads, dim, scale_channels(mlp_dim, width)
    )
    self.num_features = dim
    self.heads = None
    if num_classes is not None:
      self.heads = nn.Sequential()
      self.heads.add_module('head', nn.Linear(dim, num_classes))
      nn.init.zeros_(self.heads.head.weight)
      nn.init.zeros_(self.heads.head.bias)
    fan_in = 3 * patch_size * patch_size
    nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
    nn.init.zeros_(self.conv_proj.bias)

  def position_embedding(self, gh: int, gw: int) -> Tensor:
    """The position embedding for a gh x gw grid (torchvision's `interpolate_embeddings`)."""
    pos = self.encoder.pos_embedding
    if (gh, gw) == (self.grid, self.grid):
      return pos
    d = pos.shape[-1]
    grid = pos[:, 1:].permute(0, 2, 1).reshape(1, d, self.grid, self.grid)
    grid = F.interpolate(grid, size=(gh, gw), mode='bicubic', align_corners=True)
    return torch.cat([pos[:, :1], grid.reshape(1, d, gh * gw).permute(0, 2, 1)], dim=1)

  def forward(self, x: Tensor) -> dict[str, Tensor]:
    """Runs the backbone on NCHW images; returns `k1`, `k2` (NCHW), `pooled`, `logits`."""
    n = x.shape[0]
    x = self.conv_proj(x)
    gh, gw = x.shape[2:]
    x = x.reshape(n, self.hidden_dim, gh * gw).permute(0, 2, 1)
    x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
    x = x + self.position_embedding(gh, gw)
    tap = x
    for i, layer in enumerate(self.encoder.layers):
      x = layer(x)
      if i + 1 == self.tap_after:
        tap = x
    x = self.encoder.ln(x)

    def grid(tokens):
      return tokens[:, 1:].permute(0, 2, 1).reshape(n, self.hidden_dim, gh, gw)

    out = {'k1': grid(tap), 'k2': grid(x), 'pooled': x[:, 0]}
    if self.heads is not None:
      out['logits'] = self.heads(x[:, 0])
    return out


# --- Factories ----------------------------------------------------------------------

VIT_ARCHS: dict[str, dict[str, int]] = {
  # torchvision's vit_b_16; k1 after encoder block 8 of 12 (the choice).
  'vit_b_16': dict(
    patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072, tap_after=8
  ),
}

ARCHS = (*RESNET_ARCHS, *DENSENET_ARCHS, *VIT_ARCHS)


def create_backbone(name: str, width: float = 1.0, num_classes: int | None = 1000) -> nn.Module:
  """A reference backbone by torchvision name.

  Args:
    name: 'resnet18' ... 'resnet152', 'densenet121' ... 'densenet201', 'vit_b_16'.
    width: channel multiplier (1.0 = torchvision).
    num_classes: ImageNet head size; None = no head (taps only).

  Returns:
    `ResNetTorch`, `DenseNetTorch` or `VisionTransformerTorch`, in training mode
    (call `.eval()` for inference).
  """
  if name in VIT_ARCHS:
    return VisionTransformerTorch(**VIT_ARCHS[name], width=width, num_classes=num_classes)
  if name in RESNET_ARCHS:
    block, layers = RESNET_ARCHS[name]
    return ResNetTorch(block, layers, width, num_classes)
  if name in DENSENET_ARCHS:
    growth, blocks, init = DENSENET_ARCHS[name]
    return DenseNetTorch(growth, blocks, init, width=width, num_classes=num_classes)
  raise ValueError(f'Unknown backbone {name!r}; expected one of {ARCHS}.')


def tap_sizes(name: str, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Spatial sizes of `k1` and `k2` for an input of `height` x `width`.

  Args:
    name: a backbone name.
    height: input height.
    width: input width.

  Returns:
    `((h1, w1), (h2, w2))`, e.g. ((14, 14), (7, 7)) at 224 x 224.
  """
  if name not in ARCHS:
    raise ValueError(f'Unknown backbone {name!r}; expected one of {ARCHS}.')
  if name in VIT_ARCHS:
    p = VIT_ARCHS[name]['patch_size']
    return (height // p, width // p), (height // p, width // p)

  def taps(n: int) -> tuple[int, int]:
    n = _conv_out(_conv_out(n, 7, 2, 3), 3, 2, 1)  # conv1 / conv0, then the max pool.
    if name in RESNET_ARCHS:
      n = _conv_out(_conv_out(n, 3, 2, 1), 3, 2, 1)  # layer2, layer3 stride on a 3x3.
      return n, _conv_out(n, 3, 2, 1)
    n = n // 2 // 2  # transition1, transition2 (average pools, floor).
    return n, n // 2

  (h1, h2), (w1, w2) = taps(height), taps(width)
  return (h1, w1), (h2, w2)


def tap_channels(name: str, width: float = 1.0) -> tuple[int, int]:
  """Channels of `k1` and `k2`, e.g. (1024, 2048) for resnet101 and (1024, 1024) for densenet121.

  Args:
    name: a backbone name.
    width: channel multiplier.

  Returns:
    `(k1_channels, k2_channels)`.
  """
  if name in VIT_ARCHS:
    heads, dim = VIT_ARCHS[name]['num_heads'], VIT_ARCHS[name]['hidden_dim']
    d = heads * scale_channels(dim // heads, width)
    return d, d
  if name in RESNET_ARCHS:
    block, _ = RESNET_ARCHS[name]
    return scale_channels(256 * block.expansion, width), scale_channels(
      512 * block.expansion, width
    )
  if name not in DENSENET_ARCHS:
    raise ValueError(f'Unknown backbone {name!r}; expected one of {ARCHS}.')
  growth_rate, blocks, init = DENSENET_ARCHS[name]
  growth = scale_channels(growth_rate, width)
  channels = scale_channels(init, width)
  for n in blocks[:2]:
    channels = (channels + n * growth) // 2  # A dense block, then a halving transition.
  k1 = channels + blocks[2] * growth
  return k1, k1 // 2 + blocks[3] * growth


# --- Attention heads ------------------------------------------------------------------


def spatial_softmax(z: Tensor) -> Tensor:
  """Softmax over all H*W positions, per sample and channel, of NCHW logits, in float32."""
  b, c, h, w = z.shape
  return torch.softmax(z.float().reshape(b, c, h * w), dim=-1).reshape(b, c, h, w)


class AttentionMaskTorch(nn.Module):
  """Mask branch (C-BN-ReLU x2, C logits), spatial softmax, confidence branch.

  Args:
    in_channels: channels of the tap.
    num_classes: attributes C.
    channels: hidden width of the mask branch (already width-scaled).
    confidence_weighting: False = no confidence branch, s = 1.
  """

  def __init__(
    self, in_channels: int, num_classes: int, channels: int, confidence_weighting: bool = True
  ):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(channels)
    self.conv2 = nn.Conv2d(channels, channels, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(channels)
    self.logits = nn.Conv2d(channels, num_classes, 1)
    self.confidence = nn.Conv2d(in_channels, num_classes, 1) if confidence_weighting else None

  def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Returns `(a, s, u = a * s)`, each [B, C, H, W] float32."""
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    a = spatial_softmax(self.logits(y))
    if self.confidence is None:
      return a, torch.ones_like(a), a
    s = torch.sigmoid(self.confidence(x).float())
    return a, s, a * s


class AttentionClassifierTorch(nn.Module):
  """C-BN-ReLU, C-BN-ReLU, C(kernel = H x W)-BN-ReLU, Dense(C) on the weighted masks.

  Args:
    num_classes: attributes C (also the input channels).
    channels: the three conv widths (already width-scaled).
    spatial: (H, W) of the input; the third conv's kernel covers it all.
  """

  def __init__(self, num_classes: int, channels: Sequence[int], spatial: tuple[int, int]):
    super().__init__()
    c1, c2, c3 = channels
    self.conv1 = nn.Conv2d(num_classes, c1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(c1)
    self.conv2 = nn.Conv2d(c1, c2, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(c2)
    self.conv3 = nn.Conv2d(c2, c3, tuple(spatial), bias=False)
    self.bn3 = nn.BatchNorm2d(c3)
    self.fc = nn.Linear(c3, num_classes)

  def forward(self, u: Tensor) -> Tensor:
    """Returns logits [B, C]."""
    y = F.relu(self.bn1(self.conv1(u)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = F.relu(self.bn3(self.conv3(y)))
    return self.fc(torch.flatten(y, 1))


class AttentionHeadTorch(nn.Module):
  """One level of score-level attention: `mask` + `classifier`."""

  def __init__(
    self,
    in_channels: int,
    num_classes: int,
    spatial: tuple[int, int],
    mask_channels: int = 256,
    classifier_channels: Sequence[int] = (256, 512, 512),
    confidence_weighting: bool = True,
  ):
    super().__init__()
    self.mask = AttentionMaskTorch(in_channels, num_classes, mask_channels, confidence_weighting)
    self.classifier = AttentionClassifierTorch(num_classes, classifier_channels, spatial)

  def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Returns `(logits [B, C], a, s)`."""
    a, s, u = self.mask(x)
    return self.classifier(u), a, s


class AttributeModelTorch(nn.Module):
  """Backbone + primary Dense + score-level attention, as the Flax `AttributeModel`.

  Args:
    num_classes: attributes C.
    backbone: a backbone name.
    image_size: (H, W) of the input; fixes the attention classifiers' last kernel.
    width: channel multiplier of backbone and heads.
    levels: attention levels: (), (3,), (4,) or (3, 4).
    confidence_weighting: use the confidence branch.
    mask_channels: hidden width of the mask branch (before `width`).
    classifier_channels: attention-classifier conv widths (before `width`).
  """

  def __init__(
    self,
    num_classes: int,
    backbone: str = 'resnet101',
    image_size: tuple[int, int] = (224, 224),
    width: float = 1.0,
    levels: Sequence[int] = (3, 4),
    confidence_weighting: bool = True,
    mask_channels: int = 256,
    classifier_channels: Sequence[int] = (256, 512, 512),
  ):
    super().__init__()
    levels = tuple(levels)
    if levels not in ((), (3,), (4,), (3, 4)):
      raise ValueError(f'levels must be one of (), (3,), (4,), (3, 4); got {levels}.')
    self.levels = levels
    self.backbone = create_backbone(backbone, width, num_classes=None)
    sizes = dict(zip((3, 4), tap_sizes(backbone, *image_size), strict=True))
    channels = dict(zip((3, 4), tap_channels(backbone, width), strict=True))
    self.classifier = nn.Linear(channels[4], num_classes)
    nn.init.xavier_uniform_(self.classifier.weight)
    nn.init.zeros_(self.classifier.bias)
    mask = scale_channels(mask_channels, width)
    classifier = tuple(scale_channels(c, width) for c in classifier_channels)
    for level in levels:
      head = AttentionHeadTorch(
        channels[level], num_classes, sizes[level], mask, classifier, confidence_weighting
      )
      self.add_module(f'attention{level}', head)

  def forward(self, x: Tensor) -> dict[str, Tensor | tuple[Tensor, ...]]:
    """Runs the model on NCHW images.

    Args:
      x: normalised images [B, 3, H, W] at the `image_size` given at construction.

    Returns:
      `logits` [B, C] (mean of primary and attention logits), `primary_logits`,
      `attention_logits` [L, B, C], `masks` and `confidences` (tuples of [B, C, Hi, Wi]).
    """
    taps = self.backbone(x)
    features = {3: taps['k1'], 4: taps['k2']}
    primary = self.classifier(taps['pooled']).float()
    logits, masks, confidences = [], [], []
    for level in self.levels:
      y, a, s = getattr(self, f'attention{level}')(features[level])
      logits.append(y.float())
      masks.append(a)
      confidences.append(s)
    stacked = torch.stack(logits) if logits else primary.new_zeros((0, *primary.shape))
    return {
      'logits': torch.cat([primary[None], stacked]).mean(0),
      'primary_logits': primary,
      'attention_logits': stacked,
      'masks': tuple(masks),
      'confidences': tuple(confidences),
    }
