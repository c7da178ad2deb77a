"""The backbone registry: every torchvision architecture jaxattr can build, in one table.

A `Backbone` says everything the rest of jaxattr needs about one architecture: how
to build the Flax module, its tap channels, torchvision's name of the ImageNet head,
an optional hook for torch names the generic converter rule cannot map,
torchvision's published parameter count and its ImageNet weights URL. The model
(`AttributeModel`), the converter (`jaxattr.convert`), the configs and the tools
read `BACKBONES`; nothing else lists architectures.

The backbone contract: `create(width, dtype, param_dtype, num_classes, module_name,
depth)` (`backbone.creator` builds it for every family) returns a Flax module whose
`__call__(x, train)` maps normalised NHWC images to

  'k1'      [B, H1, W1, C1]  the stage-3 tap (ResNet layer3, ViT block 8 tokens, ...)
  'k2'      [B, H2, W2, C2]  the stage-4 tap (the last feature grid)
  'pooled'  [B, C2]          the vector torchvision's ImageNet head reads (ResNet,
                             DenseNet, Swin: the average of k2; ConvNeXt: that
                             average after `classifier.0`'s LayerNorm; ViT: the
                             class token after the final norm)
  'logits'  [B, num_classes] only when `num_classes` is set, float32
  'embedding' [B, E]         CLIP towers only: the projected class token

whose parameter tree follows the torchvision state dict by the naming rule of
`resnet.py`, and whose `width` scales channel counts and `depth` the blocks of every
stage (1.0 = torchvision; `resnet.scale_blocks`) so that tiny CPU variants of the same
code path exist.

Adding a family: its module (e.g. `jaxattr/models/regnet.py` with its Flax module,
`create_regnet = backbone.creator(RegNet, regnet_fields)` and a tap-channel function),
one `_FAMILIES` line and one `_TORCHVISION` (or `_OPENAI`) line per architecture below.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import numpy as np

from jaxattr.models import clip, convnext, densenet, resnet, swin, vit

StateDict = dict[str, np.ndarray]

TORCHVISION_URL = 'https://download.pytorch.org/models/'
# OpenAI's CLIP files: `<folder>/<the file's full sha256>/<name>.pt`.
OPENAI_URL = 'https://openaipublic.azureedge.net/clip/models/'


@dataclasses.dataclass(frozen=True)
class Backbone:
  """One registered architecture.

  Attributes:
    name: torchvision's model name, e.g. 'resnet101', 'vit_b_16' (CLIP towers:
      'clip_vit_b_16', 'clip_vit_l_14').
    family: the module it comes from ('resnet', 'densenet', 'vit', 'swin', 'convnext',
      'clip'); configs pick a training recipe by it.
    create: `create(width=1.0, dtype=float32, param_dtype=float32, num_classes=None,
      module_name=None, depth=1.0)` -> the Flax module (see the module docstring).
    tap_channels: `tap_channels(width, depth=1.0)` -> `(C1, C2)` of `k1` and `k2`.
    head: torchvision's state-dict prefix of the ImageNet classifier's Linear ('fc',
      'classifier', 'heads.head', 'head', 'classifier.2'): the converter drops it
      unless asked; whatever precedes it (ConvNeXt's `classifier.0` LayerNorm)
      belongs to the backbone and feeds `pooled`. '' = none (CLIP towers).
    num_params: torchvision's published parameter count (with the 1000-class head);
      for CLIP, open_clip's count of the image tower (with `proj`).
    url: torchvision's IMAGENET1K_V1 weights; the hex digits after the last '-' of
      the file name start the file's sha256. CLIP: OpenAI's file, whose folder is
      the file's full sha256.
    publisher: who publishes the weights at `url`: 'torchvision' or 'openai' (the
      prefix of `--config.model.pretrained`).
    adapt_state_dict: optional `fn(state_dict) -> state_dict` run by the converter
      before the generic name mapping, for names or layouts the rule cannot map
      (DenseNet's legacy keys, Swin's buffers); None = nothing to adapt.
  """

  name: str
  family: str
  create: Callable[..., nn.Module]
  tap_channels: Callable[..., tuple[int, int]]
  head: str
  num_params: int
  url: str
  adapt_state_dict: Callable[[Mapping[str, np.ndarray]], StateDict] | None = None
  publisher: str = 'torchvision'

  @property
  def file_name(self) -> str:
    """The file name of `url` (what torch.hub caches it as)."""
    return self.url.rsplit('/', 1)[-1]


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
  """Adds `backbone` to `BACKBONES`.

  Args:
    backbone: the entry; its name must be new.

  Returns:
    The same entry.

  Raises:
    ValueError: if the name is taken.
  """
  if backbone.name in BACKBONES:
    raise ValueError(f'Backbone {backbone.name!r} is already registered.')
  BACKBONES[backbone.name] = backbone
  return backbone


def get(name: str) -> Backbone:
  """The registered backbone `name`.

  Raises:
    ValueError: naming the registered backbones, if `name` is not one.
  """
  if name not in BACKBONES:
    raise ValueError(f'Unknown backbone {name!r}; expected one of {sorted(BACKBONES)}.')
  return BACKBONES[name]


def create_backbone(name: str, width: float = 1.0, **options: Any) -> nn.Module:
  """A registered backbone's Flax module.

  Args:
    name: a key of `BACKBONES`.
    width: channel multiplier (1.0 = torchvision).
    **options: `dtype`, `param_dtype`, `num_classes` (include the ImageNet head,
      `Backbone.head`), `module_name` (the Flax name, e.g. 'backbone'), `depth`
      (block multiplier of every stage), as `backbone.creator` describes them.

  Returns:
    The module; `module(x, train)` returns `{'k1', 'k2', 'pooled'[, 'logits']}`.
  """
  return get(name).create(width=width, **options)


def backbone_tap_channels(name: str, width: float = 1.0, depth: float = 1.0) -> tuple[int, int]:
  """Channels of the `k1` and `k2` taps, e.g. (1024, 2048) for resnet101.

  Args:
    name: a key of `BACKBONES`.
    width: channel multiplier.
    depth: block multiplier (only DenseNet's channels depend on it).

  Returns:
    `(k1_channels, k2_channels)`.
  """
  return get(name).tap_channels(width, depth)


# --- The families and their torchvision architectures ---------------------------------

# family -> (create_fn(name, **kwargs), tap_channels_fn(name, width, depth), adapt_state_dict).
# Only DenseNet's tap channels depend on the depth (each dense layer adds channels).
_FAMILIES = {
  'resnet': (
    resnet.create_resnet,
    lambda n, w, d=1.0: resnet.resnet_tap_channels(resnet.RESNET_SPECS[n], w),
    None,
  ),
  'densenet': (
    densenet.create_densenet,
    lambda n, w, d=1.0: densenet.densenet_tap_channels(densenet.DENSENET_SPECS[n], w, d),
    densenet.rename_legacy_keys,
  ),
  'vit': (vit.create_vit, lambda n, w, d=1.0: vit.vit_tap_channels(n, w), None),
  'swin': (
    swin.create_swin,
    lambda n, w, d=1.0: swin.swin_tap_channels(n, w),
    swin.adapt_state_dict,
  ),
  'convnext': (
    convnext.create_convnext,
    lambda n, w, d=1.0: convnext.convnext_tap_channels(n, w),
    None,
  ),
  'clip': (
    clip.create_clip,
    lambda n, w, d=1.0: clip.clip_tap_channels(n, w),
    clip.adapt_state_dict,
  ),
}

# One line per architecture: name, family, torchvision's ImageNet head, torchvision's
# `num_params`, the IMAGENET1K_V1 file (torchvision's `*_Weights` enums).
_TORCHVISION = (
  ('resnet18', 'resnet', 'fc', 11_689_512, 'resnet18-f37072fd.pth'),
  ('resnet34', 'resnet', 'fc', 21_797_672, 'resnet34-b627a593.pth'),
  ('resnet50', 'resnet', 'fc', 25_557_032, 'resnet50-0676ba61.pth'),
  ('resnet101', 'resnet', 'fc', 44_549_160, 'resnet101-63fe2227.pth'),
  ('resnet152', 'resnet', 'fc', 60_192_808, 'resnet152-394f9c45.pth'),
  ('densenet121', 'densenet', 'classifier', 7_978_856, 'densenet121-a639ec97.pth'),
  ('densenet161', 'densenet', 'classifier', 28_681_000, 'densenet161-8d451a50.pth'),
  ('densenet169', 'densenet', 'classifier', 14_149_480, 'densenet169-b2777c0a.pth'),
  ('densenet201', 'densenet', 'classifier', 20_013_928, 'densenet201-c1103571.pth'),
  ('vit_b_16', 'vit', 'heads.head', 86_567_656, 'vit_b_16-c867db91.pth'),
  ('swin_t', 'swin', 'head', 28_288_354, 'swin_t-704ceda3.pth'),
  ('swin_s', 'swin', 'head', 49_606_258, 'swin_s-5e29d889.pth'),
  ('swin_b', 'swin', 'head', 87_768_224, 'swin_b-68c6b09e.pth'),
  # ConvNeXt's `classifier` is LayerNorm2d, Flatten, Linear: only the Linear is the head.
  ('convnext_tiny', 'convnext', 'classifier.2', 28_589_128, 'convnext_tiny-983f1562.pth'),
  ('convnext_small', 'convnext', 'classifier.2', 50_223_688, 'convnext_small-0c510722.pth'),
  ('convnext_base', 'convnext', 'classifier.2', 88_591_464, 'convnext_base-6075fbad.pth'),
)

_CLIP_B16 = '5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt'
_CLIP_L14 = 'b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt'
# OpenAI's CLIP image towers: name, family, no ImageNet head (''), open_clip's parameter
# count of the tower, OpenAI's file (under its full sha256).
_OPENAI = (
  ('clip_vit_b_16', 'clip', '', 86_192_640, _CLIP_B16),
  ('clip_vit_l_14', 'clip', '', 303_966_208, _CLIP_L14),
)

for _publisher, _folder, _table in (
  ('torchvision', TORCHVISION_URL, _TORCHVISION),
  ('openai', OPENAI_URL, _OPENAI),
):
  for _name, _family, _head, _count, _file in _table:
    _create, _taps, _adapt = _FAMILIES[_family]
    register(
      Backbone(
        name=_name,
        family=_family,
        create=functools.partial(_create, _name),
        tap_channels=functools.partial(_taps, _name),
        head=_head,
        num_params=_count,
        url=_folder + _file,
        adapt_state_dict=_adapt,
        publisher=_publisher,
      )
    )
