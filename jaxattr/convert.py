"""torchvision ImageNet weights -> jaxattr backbone variables, exactly and checked.

  python -m jaxattr.convert --arch=resnet101 --input=resnet101-cd907fc2.pth --output=DIR
  python -m jaxattr.convert --arch=vit_b_16 --input=vit_b_16-c867db91.pth --output=DIR
  python -m jaxattr.convert --arch=clip_vit_b_16 --input=ViT-B-16.pt --output=DIR

(`--arch`: any name of `jaxattr.models.registry.BACKBONES`) reads a torchvision
state dict (`.pth` / `.pt` with torch installed, `.safetensors` with the
`safetensors` package, `.npz` with numpy alone), maps every tensor by name onto the
Flax backbone of `jaxattr.models` and writes DIR/backbone.msgpack (the
`{'params', 'batch_stats'}` trees of the backbone, via `flax.serialization`) and
DIR/meta.json (arch, width, source file name, its sha256). Training loads it with
`--config.model.pretrained=DIR` (`jaxattr.pretrained.load_into` ->
`load_backbone`).

The mapping is the naming rule of `jaxattr/models/resnet.py`: the torch key split
on '.' is the Flax path; the leaf `weight` becomes `kernel` (conv, linear) or
`scale` (BatchNorm, LayerNorm), `running_mean` / `running_var` go to batch_stats as `mean` /
`var`, `num_batches_tracked` is dropped; conv kernels go OIHW -> HWIO and linear
weights (out, in) -> (in, out), any other 2-D tensor likewise (ViT's
`in_proj_weight`); other tensors keep their shape. Before the rule runs, a family's
`Backbone.adapt_state_dict` hook may rename or drop what the rule cannot map (old
DenseNet files' `denselayer1.norm.1.weight`, renamed as torchvision's own loader
does; Swin's constant `relative_position_index` buffers, checked and dropped; a whole
CLIP file's text tower, dropped by name, `jaxattr.models.clip.adapt_state_dict`).
Nothing is guessed: a tensor without a Flax counterpart, a Flax variable without a
tensor, or a shape that disagrees stops the conversion with a message naming every
such tensor.

The ImageNet classifier (`Backbone.head`: `fc`, `classifier`, `heads.head`, ...) is
dropped unless `include_head` / `--include_head` asks for it; `load_backbone` always
returns the backbone without it.
"""

import hashlib
import json
import os
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import traverse_util

from jaxattr.models import registry

ARCHS = tuple(registry.BACKBONES)
BACKBONE_FILE = 'backbone.msgpack'
META_FILE = 'meta.json'
FORMAT_VERSION = 1

# torch.hub names downloads `<name>-<first hex digits of the sha256>.pth`.
_HASH_IN_NAME = re.compile(r'-([0-9a-f]{8,64})\.')

# Leaf renames torch -> Flax for BatchNorm statistics (collection, Flax leaf).
_STATS = {'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}
# Flax leaf -> torch leaf, for naming missing tensors in torch's terms.
_TORCH_LEAF = {
  'kernel': 'weight',
  'scale': 'weight',
  'bias': 'bias',
  'mean': 'running_mean',
  'var': 'running_var',
}
# Longest list of tensors an error message spells out per kind of problem.
_MAX_LISTED = 50

Variables = dict[str, dict[str, Any]]


def _check_arch(arch: str) -> registry.Backbone:
  if arch not in registry.BACKBONES:
    raise ValueError(f'Unknown arch {arch!r}; expected one of {tuple(registry.BACKBONES)}.')
  return registry.BACKBONES[arch]


def _under(key: str, prefix: str) -> bool:
  """Whether the torch key `key` belongs to the module `prefix` (e.g. 'heads.head')."""
  return key == prefix or key.startswith(prefix + '.')


def _torch_layout(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch shape of a Flax kernel shape (HWIO -> OIHW, (in, out) -> (out, in))."""
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if len(flax_shape) == 2:
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if value.ndim == 2:
    return value.T
  return value


def _torch_key(path: tuple[str, ...]) -> str:
  return '.'.join((*path[:-1], _TORCH_LEAF.get(path[-1], path[-1])))


def torch_to_flax(
  state_dict: Mapping[str, Any], expected: Mapping[str, Any], what: str = 'the model'
) -> Variables:
  """Maps a torch state dict onto Flax variables by name, checking every tensor.

  Works for any module whose Flax tree follows the naming rule of the module
  docstring (the backbones, and `AttributeModel` against the tests'
  `torch_reference.AttributeModelTorch`).

  Args:
    state_dict: torch key -> array (numpy, or anything `np.asarray` accepts).
    expected: `{'params': tree, 'batch_stats': tree}` of arrays or
      `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape(module.init, ...)`); the
      output has exactly this structure, shapes and dtypes.
    what: how error messages name the target model.

  Returns:
    `{'params': ..., 'batch_stats': ...}` of numpy arrays, nested plain dicts.

  Raises:
    ValueError: naming every unexpected, missing or mis-shaped tensor.
  """
  targets = {}  # (collection, flax path) -> (shape, dtype)
  for collection in ('params', 'batch_stats'):
    flat = traverse_util.flatten_dict(dict(expected.get(collection, {})))
    for path, leaf in flat.items():
      targets[(collection, path)] = (tuple(leaf.shape), np.dtype(leaf.dtype))

  values, unexpected, misshaped, misshaped_targets = {}, [], [], set()
  for key, tensor in state_dict.items():
    *module, leaf = key.split('.')
    module = tuple(module)
    if leaf == 'num_batches_tracked':
      # A counter torch keeps per BatchNorm; fine if that BatchNorm exists here.
      if ('batch_stats', (*module, 'mean')) not in targets:
        unexpected.append(f'{key} (no BatchNorm {".".join(module)!r} in {what})')
      continue
    if leaf in _STATS:
      collection, name = _STATS[leaf]
    elif leaf == 'weight':
      collection = 'params'
      name = 'kernel' if ('params', (*module, 'kernel')) in targets else 'scale'
    else:
      collection, name = 'params', leaf
    target = (collection, (*module, name))
    array = np.asarray(tensor)
    if target not in targets:
      unexpected.append(f'{key} {tuple(array.shape)}')
      continue
    shape, dtype = targets[target]
    if array.ndim != len(shape) or _to_flax_layout(array).shape != shape:
      misshaped.append(
        f'{key}: {tuple(array.shape)} in the file, {_torch_layout(shape)} expected (torch layout)'
      )
      misshaped_targets.add(target)
      continue
    values[target] = np.ascontiguousarray(_to_flax_layout(array)).astype(dtype, copy=False)

  missing = [
    f'{_torch_key(p)} {_torch_layout(shape)}'
    for (c, p), (shape, _) in targets.items()
    if (c, p) not in values and (c, p) not in misshaped_targets
  ]
  problems = []
  for title, items in (
    ('unexpected tensors (no counterpart)', unexpected),
    ('missing tensors', missing),
    ('tensors with the wrong shape', misshaped),
  ):
    if items:
      listed = items[:_MAX_LISTED]
      if len(items) > _MAX_LISTED:
        listed.append(f'... and {len(items) - _MAX_LISTED} more')
      problems.append(f'{len(items)} {title}:\n  ' + '\n  '.join(listed))
  if problems:
    if unexpected and missing:
      problems.append('Is the architecture (--arch, --width) the one the file was saved from?')
    raise ValueError(f'Cannot convert the state dict to {what}; ' + '\n'.join(problems))

  out: Variables = {'params': {}, 'batch_stats': {}}
  for collection in out:
    flat = {p: values[(c, p)] for (c, p) in values if c == collection}
    out[collection] = traverse_util.unflatten_dict(flat) if flat else {}
  return out


def backbone_shapes(
  arch: str, width: float = 1.0, num_classes: int | None = None, depth: float = 1.0
) -> dict[str, Any]:
  """The variable shapes of a backbone, without allocating it.

  Args:
    arch: a name of `ARCHS`.
    width: channel multiplier.
    num_classes: include the ImageNet head with this many classes; None = none.
    depth: block multiplier (1.0 = the published architecture).

  Returns:
    `{'params': tree, 'batch_stats': tree}` of `jax.ShapeDtypeStruct`.
  """
  entry = _check_arch(arch)
  model = registry.create_backbone(arch, width, num_classes=num_classes, depth=depth)
  # 64 is a multiple of every torchvision family's patch and stride, 224 of CLIP's 16 and
  # 14; shapes do not depend on the size.
  side = 224 if entry.family == 'clip' else 64
  x = jnp.zeros((1, side, side, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def convert_state_dict(
  arch: str,
  state_dict: Mapping[str, Any],
  include_head: bool = False,
  width: float = 1.0,
  depth: float = 1.0,
) -> Variables:
  """Converts a torchvision state dict of `arch` to the jaxattr backbone's variables.

  Args:
    arch: a name of `registry.BACKBONES` ('resnet101', 'vit_b_16', ...).
    state_dict: torchvision key -> array (numpy or torch tensors on the CPU).
    include_head: keep the ImageNet classifier (`Backbone.head`, its class count
      read from the file); by default it is dropped, and need not be in the file.
    width: channel multiplier of the architecture (1.0 = torchvision; tiny widths
      are for tests).
    depth: block multiplier likewise.

  Returns:
    `{'params': ..., 'batch_stats': ...}` of float32 numpy arrays, structured like
    the variables of `create_backbone(arch, width[, num_classes])`.

  Raises:
    ValueError: for an unknown arch, or naming every unexpected, missing or
      mis-shaped tensor.
  """
  backbone = _check_arch(arch)
  state_dict = {k: _to_numpy(v) for k, v in state_dict.items()}
  if backbone.adapt_state_dict is not None:
    state_dict = backbone.adapt_state_dict(state_dict)
  head = backbone.head
  num_classes = None
  if include_head:
    head_weight = state_dict.get(f'{head}.weight')
    if head_weight is None or head_weight.ndim != 2:
      raise ValueError(f'include_head needs the tensor {head}.weight [classes, features].')
    num_classes = int(head_weight.shape[0])
  else:
    state_dict = {k: v for k, v in state_dict.items() if not _under(k, head)}
  expected = backbone_shapes(arch, width, num_classes, depth)
  return torch_to_flax(state_dict, expected, what=f'{arch} (width {width:g}, depth {depth:g})')


def _to_numpy(value: Any) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, 'detach'):  # A torch tensor; numpy has no bfloat16, so widen it.
    value = value.detach().cpu()
    if str(value.dtype) == 'torch.bfloat16':
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a state dict from `.pth` / `.pt` (torch), `.safetensors` or `.npz`.

  Args:
    path: the file. `.pth` files are read with `torch.load(map_location='cpu',
      weights_only=True)` (no code from the file runs); a top-level `state_dict`
      entry, as training scripts save, is unwrapped. A TorchScript archive (OpenAI's
      CLIP `.pt` files) is read with `torch.jit.load` and its `state_dict()` taken.

  Returns:
    torch key -> numpy array.

  Raises:
    ValueError: for an unknown suffix or a file that is not a state dict.
    ImportError: if the reader the suffix needs is not installed.
  """
  path = Path(path)
  suffix = path.suffix.lower()
  if suffix in ('.pth', '.pt', '.bin'):
    try:
      import torch
    except ImportError as e:
      raise ImportError(
        f'Reading {path.name} needs torch (pip install torch, or pip install -e ".[torch]" '
        'in the clone); or save the state dict as .npz elsewhere and convert that.'
      ) from e
    if _is_torchscript(path):
      # OpenAI's CLIP files are TorchScript archives, read as OpenAI's `clip.load` does;
      # torch deprecates TorchScript (for torch.export) but still reads it.
      with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=DeprecationWarning, module=r'torch\.jit')
        loaded = torch.jit.load(str(path), map_location='cpu').state_dict()
    else:
      loaded = torch.load(path, map_location='cpu', weights_only=True)
    if isinstance(loaded, Mapping) and 'state_dict' in loaded:
      loaded = loaded['state_dict']
  elif suffix == '.safetensors':
    try:
      from safetensors.numpy import load_file
    except ImportError as e:
      raise ImportError(f'Reading {path.name} needs the safetensors package.') from e
    loaded = load_file(str(path))
  elif suffix == '.npz':
    with np.load(path, allow_pickle=False) as data:
      loaded = {k: data[k] for k in data.files}
  else:
    raise ValueError(f'{path}: unknown format {suffix!r}; expected .pth, .safetensors or .npz.')
  if not isinstance(loaded, Mapping):
    raise ValueError(f'{path} holds a {type(loaded).__name__}, not a state dict.')
  return {str(k): _to_numpy(v) for k, v in loaded.items()}


def _is_torchscript(path: Path) -> bool:
  """Whether `path` is a TorchScript archive (a zip holding `<name>/constants.pkl`)."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    return any(name.endswith('/constants.pkl') for name in archive.namelist())


def file_sha256(path: str | os.PathLike) -> str:
  """The hex sha256 of a file, read in chunks."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def save_backbone(
  variables: Variables, out_dir: str | os.PathLike, meta: Mapping[str, Any]
) -> None:
  """Writes converted variables and their description to `out_dir`.

  Args:
    variables: `{'params': ..., 'batch_stats': ...}` (numpy or jax arrays).
    out_dir: created if needed; receives `backbone.msgpack` and `meta.json`.
    meta: JSON-serialisable description (arch, width, source, sha256, ...).
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  tree = {
    'params': jax.tree.map(np.asarray, dict(variables['params'])),
    'batch_stats': jax.tree.map(np.asarray, dict(variables.get('batch_stats', {}))),
  }
  # Written aside and renamed, so an interrupted run never leaves a half file behind.
  tmp = out_dir / (BACKBONE_FILE + '.tmp')
  tmp.write_bytes(flax.serialization.msgpack_serialize(tree))
  tmp.replace(out_dir / BACKBONE_FILE)
  meta = {
    **meta,
    'format_version': FORMAT_VERSION,
    'num_params': int(sum(x.size for x in jax.tree.leaves(tree['params']))),
  }
  (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + '\n')


def load_meta(path: str | os.PathLike) -> dict[str, Any]:
  """The `meta.json` of a converted backbone directory.

  Args:
    path: the directory written by `save_backbone`.

  Returns:
    The description (arch, width, source, sha256, include_head, ...).
  """
  return json.loads((Path(path) / META_FILE).read_text())


def load_backbone(path: str | os.PathLike) -> Variables:
  """Reads a converted backbone, always without the ImageNet classifier.

  Args:
    path: the directory written by `python -m jaxattr.convert` / `save_backbone`.

  Returns:
    `{'params': ..., 'batch_stats': ...}` of numpy arrays, structured like
    `state.params['backbone']` / `state.batch_stats['backbone']` of the attribute
    model with the same backbone and width.

  Raises:
    FileNotFoundError: if `path` holds no converted backbone.
  """
  path = Path(path)
  file = path / BACKBONE_FILE
  if not file.is_file():
    raise FileNotFoundError(
      f'{file} not found; write it with `python -m jaxattr.convert --output={path} ...`.'
    )
  tree = flax.serialization.msgpack_restore(file.read_bytes())
  params = _without_heads(dict(tree.get('params', {})))
  batch_stats = dict(tree.get('batch_stats', {}))
  meta = load_meta(path) if (path / META_FILE).is_file() else {}
  logging.info('Read backbone %s from %s.', meta.get('arch', '(no meta.json)'), path)
  return {'params': params, 'batch_stats': batch_stats}


def _without_heads(params: dict[str, Any]) -> dict[str, Any]:
  """`params` without any registered ImageNet head (a Dense at a `Backbone.head` path).

  Only a module holding exactly `kernel` and `bias` is removed, so a head path that
  names something else in another family (ConvNeXt's `classifier` also holds its
  LayerNorm) is left alone; parents left empty go too.
  """
  flat = traverse_util.flatten_dict(params)
  for head in {b.head for b in registry.BACKBONES.values()}:
    path = tuple(head.split('.'))
    leaves = {p[-1] for p in flat if p[:-1] == path}
    if leaves == {'kernel', 'bias'}:
      flat = {p: v for p, v in flat.items() if p[:-1] != path}
  return traverse_util.unflatten_dict(flat) if flat else {}


def convert_file(
  arch: str,
  input_path: str | os.PathLike,
  output_dir: str | os.PathLike,
  include_head: bool = False,
  width: float = 1.0,
) -> dict[str, Any]:
  """Reads, converts and writes one checkpoint (what the command line does).

  Args:
    arch: the architecture of the file.
    input_path: the torchvision state dict (.pth / .safetensors / .npz).
    output_dir: where `backbone.msgpack` and `meta.json` go.
    include_head: also keep the ImageNet classifier in the file.
    width: channel multiplier (1.0 for torchvision weights).

  Returns:
    The meta written to `meta.json`.
  """
  variables = convert_state_dict(arch, load_state_dict(input_path), include_head, width)
  name, sha256 = Path(input_path).name, file_sha256(input_path)
  meta = {
    'arch': arch,
    'width': width,
    'include_head': include_head,
    'source': name,
    'sha256': sha256,
  }
  match = _HASH_IN_NAME.search(name)
  if match:
    # As torch.hub's check_hash: a mismatch means a damaged or mislabelled download.
    meta['sha256_matches_name'] = sha256.startswith(match.group(1))
    if not meta['sha256_matches_name']:
      logging.warning(
        '%s: sha256 %s does not start with %s from the file name (damaged download?).',
        name,
        sha256,
        match.group(1),
      )
  save_backbone(variables, output_dir, meta)
  return load_meta(output_dir)


def _define_flags() -> dict[str, flags.FlagHolder]:
  # Defined only when run as a program: `train.py` imports this module as a library.
  return {
    'arch': flags.DEFINE_enum('arch', None, ARCHS, 'Architecture of the checkpoint.'),
    'input': flags.DEFINE_string('input', None, 'torchvision state dict (.pth/.safetensors/.npz).'),
    'output': flags.DEFINE_string('output', None, 'Output directory.'),
    'include_head': flags.DEFINE_bool(
      'include_head', False, 'Also keep the ImageNet classifier (fc, classifier, heads.head, ...).'
    ),
    'width': flags.DEFINE_float('width', 1.0, 'Channel multiplier (1.0 for torchvision files).'),
  }


def main(argv: list[str], holders: Mapping[str, flags.FlagHolder]) -> None:
  """Converts `--input` to `--output` (see the module docstring).

  Args:
    argv: the arguments left after flag parsing (none are expected).
    holders: the flags of `_define_flags`, by name.

  Raises:
    SystemExit: with the reason, when the file cannot be read or converted.
  """
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  output = holders['output'].value
  try:
    meta = convert_file(
      holders['arch'].value,
      holders['input'].value,
      output,
      holders['include_head'].value,
      holders['width'].value,
    )
  except (ValueError, ImportError, OSError) as e:
    # The reason is the whole message (the tensors at fault); a traceback adds nothing.
    raise SystemExit(f'jaxattr.convert: {e}') from e
  logging.info(
    'Wrote %s (%d parameters, sha256 of %s: %s) to %s.',
    meta['arch'],
    meta['num_params'],
    meta['source'],
    meta['sha256'],
    output,
  )


if __name__ == '__main__':
  _holders = _define_flags()
  flags.mark_flags_as_required(['arch', 'input', 'output'])
  app.run(lambda argv: main(argv, _holders))
