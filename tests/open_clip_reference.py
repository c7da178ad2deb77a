"""open_clip's own `VisionTransformer`, imported without the parts this venv cannot import.

open_clip's package `__init__` imports torchvision (its image transforms and
`FrozenBatchNorm2d`), and torchvision does not install beside the pinned torch (see
`torch_reference.py`). The ViT image tower needs none of it: `open_clip.transformer`
imports torchvision only through `open_clip.utils`, for `FrozenBatchNorm2d`, which
freezes ResNet towers. So `transformer_module` imports `open_clip.transformer` from the
installed package without running the package's `__init__` and with a placeholder for
that one name, while the import runs; the code under comparison is open_clip's own.
"""

import importlib
import importlib.util
import sys
import types
from typing import Any

import torch

_PLACEHOLDERS = ('torchvision', 'torchvision.ops', 'torchvision.ops.misc')


def transformer_module() -> types.ModuleType:
  """The installed `open_clip.transformer` module (QuickGELU, VisionTransformer, ...)."""
  if 'open_clip.transformer' in sys.modules:
    return sys.modules['open_clip.transformer']
  spec = importlib.util.find_spec('open_clip')
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(
      'open_clip_torch is not installed: pip install --no-deps open_clip_torch==3.3.0'
    )
  saved = {name: sys.modules.get(name) for name in ('open_clip', *_PLACEHOLDERS)}
  package = types.ModuleType('open_clip')
  package.__path__ = list(spec.submodule_search_locations)
  misc = types.ModuleType('torchvision.ops.misc')
  misc.FrozenBatchNorm2d = None  # Only `freeze_batch_norm_2d` (ResNet towers) reads it.
  sys.modules.update(
    {
      'open_clip': package,
      'torchvision': types.ModuleType('torchvision'),
      'torchvision.ops': types.ModuleType('torchvision.ops'),
      'torchvision.ops.misc': misc,
    }
  )
  try:
    return importlib.import_module('open_clip.transformer')
  finally:
    for name, module in saved.items():
      if module is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = module


# OpenAI's towers in open_clip's terms (open_clip's model configs ViT-B-16 / ViT-L-14).
SPECS = {
  'clip_vit_b_16': {'patch_size': 16, 'width': 768, 'layers': 12, 'heads': 12, 'output_dim': 512},
  'clip_vit_l_14': {'patch_size': 14, 'width': 1024, 'layers': 24, 'heads': 16, 'output_dim': 768},
}


def vision_transformer(name: str, width: float = 1.0, layers: int | None = None, **kw: Any):
  """open_clip's `VisionTransformer` of OpenAI's tower `name` (QuickGELU), optionally narrowed.

  Args:
    name: 'clip_vit_b_16' or 'clip_vit_l_14'.
    width: multiplier of the head dimension and E (as `jaxattr.models.clip`'s `width`).
    layers: blocks; None = OpenAI's.
    **kw: further `VisionTransformer` arguments (e.g. `output_tokens=True`).

  Returns:
    The torch module (random init, train mode as constructed).
  """
  t = transformer_module()
  spec = SPECS[name]
  heads = spec['heads']
  d = heads * max(1, round(spec['width'] // heads * width))
  return t.VisionTransformer(
    image_size=224,
    patch_size=spec['patch_size'],
    width=d,
    layers=layers or spec['layers'],
    heads=heads,
    mlp_ratio=4.0,
    output_dim=max(1, round(spec['output_dim'] * width)),
    act_layer=t.QuickGELU,
    **kw,
  )


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
  """Every parameter drawn anew (N(0, 0.02) + its own mean), so zero biases and unit
  LayerNorm scales do not hide a mapping error."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
