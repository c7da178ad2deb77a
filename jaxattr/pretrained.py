"""`--config.model.pretrained=torchvision:ARCH`: torchvision's ImageNet weights, fetched once.

  python -m jaxattr.main --config=configs/wider.py:resnet101 --workdir=runs/r101 \
      --config.model.pretrained=torchvision:resnet101

`resolve` turns such a spec into the directory of a converted backbone, which
`load_into` reads as it reads any directory written by `python -m
jaxattr.convert`; a value that does not start with `torchvision:` is such a directory
and is returned unchanged. For `torchvision:ARCH[:WEIGHTS]` (WEIGHTS is torchvision's
enum name, `IMAGENET1K_V1` by default: the weights of the paper's time) it

1. downloads torchvision's published file (the registry's `Backbone.url` for V1,
   `MORE_WEIGHTS` for the others; e.g. `resnet101-63fe2227.pth`) into
   `<cache>/torchvision/`, unless it is there;
2. checks that the file's sha256 starts with the hex digits in its name (torch.hub's
   own check), while downloading;
3. converts it with `convert.convert_file` into `<cache>/converted/<file stem>/`
   (`backbone.msgpack` + `meta.json`), unless a conversion of the same file by the
   same converter version is there;
4. logs the URL, the sha256 and the directory, and returns the directory.

A second run therefore makes no request and no conversion. A download is written to
a temporary name in the same folder and renamed only once complete and checked, and
a conversion is written to a temporary folder renamed as a whole, so an interrupted
run never leaves anything that a later run would take for a finished file. Processes
on one host (one per GPU) take turns through a lock file, so the file is fetched once.

`<cache>` is `$JAXATTR_CACHE`, else `$XDG_CACHE_HOME/jaxattr`, else
`~/.cache/jaxattr`. `$JAXATTR_TORCHVISION_URL` (or `resolve`'s `url`), when set,
replaces the folder of torchvision's URL (https://download.pytorch.org/models): a
mirror, or a local server in the tests. HTTP uses the standard library only. A failed
download, a checksum mismatch or a missing torch (needed to read `.pth`) stops with
one line (`PretrainedError`) that names the URL and the manual route: download the
file by hand, convert it with `python -m jaxattr.convert`, and pass the directory.
"""

import fcntl
import hashlib
import http.client
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from jaxattr import convert
from jaxattr.data.common import DataError
from jaxattr.models import registry
from jaxattr.optim import BACKBONE

PREFIX = 'torchvision:'
DEFAULT_BASE_URL = 'https://download.pytorch.org/models'
DEFAULT_WEIGHTS = 'IMAGENET1K_V1'
# Seconds a connection attempt or a single read may stall before the download fails.
DEFAULT_TIMEOUT_S = 60.0

# torchvision's weights other than IMAGENET1K_V1 (whose URL is `registry.Backbone.url`), by
# arch and torchvision's `*_Weights` enum name; the files of torchvision's newer recipe.
MORE_WEIGHTS: dict[str, dict[str, str]] = {
  'resnet50': {'IMAGENET1K_V2': 'resnet50-11ad3fa6.pth'},
  'resnet101': {'IMAGENET1K_V2': 'resnet101-cd907fc2.pth'},
  'resnet152': {'IMAGENET1K_V2': 'resnet152-f82ba261.pth'},
}

# torch.hub names files `<stem>-<first hex digits of the sha256>.<ext>`.
_HASHED_NAME = re.compile(r'^(?P<stem>.+)-(?P<sha>[0-9a-f]{8,64})\.[A-Za-z]+$')
_CHUNK = 1 << 20
_PROGRESS_EVERY_S = 15.0


class PretrainedError(DataError):
  """The weights could not be fetched; the one-line message says what to do instead.

  A `DataError`, so `jaxattr.main` stops with the message alone, as for bad data.
  """


def cache_dir() -> Path:
  """The cache folder: `$JAXATTR_CACHE`, else `$XDG_CACHE_HOME/jaxattr`, else `~/.cache/jaxattr`.

  Returns:
    The folder (not created here).
  """
  if os.environ.get('JAXATTR_CACHE'):
    return Path(os.environ['JAXATTR_CACHE']).expanduser()
  xdg = os.environ.get('XDG_CACHE_HOME')
  return (Path(xdg) if xdg else Path.home() / '.cache') / 'jaxattr'


def is_torchvision(spec: str) -> bool:
  """Whether `config.model.pretrained` names torchvision weights rather than a directory."""
  return spec.startswith(PREFIX)


def resolve(
  spec: str,
  backbone: str,
  width: float = 1.0,
  depth: float = 1.0,
  cache: str | os.PathLike | None = None,
  url: str | None = None,
  timeout_s: float = DEFAULT_TIMEOUT_S,
) -> str:
  """The converted-backbone directory that `config.model.pretrained` stands for.

  Args:
    spec: a directory written by `python -m jaxattr.convert` (returned unchanged), or
      `torchvision:ARCH` / `torchvision:ARCH:WEIGHTS` (see the module docstring).
    backbone: `config.model.backbone`; ARCH must equal it (checked before any download).
    width: `config.model.width`; must be 1.0, the width of torchvision's files
      (checked before any download).
    depth: `config.model.depth`; must be 1.0 likewise.
    cache: the cache folder; None = `cache_dir()`.
    url: a folder URL to fetch the file from instead of torchvision's (a mirror);
      None = `$JAXATTR_TORCHVISION_URL` if set, else torchvision's own URL.
    timeout_s: seconds a connection or a read may stall before the download fails.

  Returns:
    The directory holding `backbone.msgpack` and `meta.json`.

  Raises:
    PretrainedError: one line, for an unknown ARCH or WEIGHTS, ARCH other than
      `backbone`, a failed or truncated download, a checksum mismatch, or no torch.
  """
  if not is_torchvision(spec):
    return spec
  arch, weights = _parse(spec, backbone, width, depth)
  source = weights_url(arch, weights)
  name = source.rsplit('/', 1)[-1]
  folder = url or os.environ.get('JAXATTR_TORCHVISION_URL')
  if folder:
    source = f'{folder.rstrip("/")}/{name}'
  cache = Path(cache).expanduser() if cache is not None else cache_dir()
  match = _HASHED_NAME.match(name)
  if match is None:  # Every torchvision file carries its hash; a table entry without one is a bug.
    raise ValueError(f'{name}: no sha256 prefix in the file name.')
  stem, sha_prefix = match.group('stem'), match.group('sha')
  out_dir = cache / 'converted' / stem
  manual = _manual_route(source, arch, name)

  with _lock(cache / 'locks' / f'{name}.lock'):
    if _is_converted(out_dir, arch, sha_prefix):
      logging.info('Pretrained %s: cached %s (from %s).', spec, out_dir, source)
      return str(out_dir)
    _require_torch(spec, name, manual)
    download = cache / 'torchvision' / name
    if download.is_file():
      logging.info('Pretrained %s: using the downloaded %s.', spec, download)
    else:
      _download(source, download, sha_prefix, timeout_s, manual)
    _convert(arch, download, out_dir)
  meta = convert.load_meta(out_dir)
  logging.info(
    'Pretrained %s: %s (sha256 %s, %d parameters) converted to %s.',
    spec,
    source,
    meta['sha256'],
    meta['num_params'],
    out_dir,
  )
  return str(out_dir)


def weights_url(arch: str, weights: str = DEFAULT_WEIGHTS) -> str:
  """torchvision's URL of one set of weights.

  Args:
    arch: a registered backbone name.
    weights: torchvision's `*_Weights` enum name; `IMAGENET1K_V1` is the registry's URL.

  Returns:
    The URL; the file name ends in `-<first hex digits of its sha256>.pth`.

  Raises:
    KeyError: if torchvision publishes no such weights for `arch` (see `available`).
  """
  if weights == DEFAULT_WEIGHTS:
    return registry.get(arch).url
  return f'{DEFAULT_BASE_URL}/{MORE_WEIGHTS[arch][weights]}'


def available(arch: str) -> tuple[str, ...]:
  """The weights names `torchvision:ARCH:WEIGHTS` accepts for `arch` (registered)."""
  return (DEFAULT_WEIGHTS, *MORE_WEIGHTS.get(arch, {}))


def _parse(spec: str, backbone: str, width: float, depth: float) -> tuple[str, str]:
  arch, _, weights = spec[len(PREFIX) :].partition(':')
  weights = weights or DEFAULT_WEIGHTS
  if arch not in registry.BACKBONES:
    known = ', '.join(registry.BACKBONES)
    raise PretrainedError(f'{spec}: unknown arch {arch!r}; known: {known}.')
  if weights not in available(arch):
    raise PretrainedError(
      f'{spec}: torchvision publishes {", ".join(available(arch))} for {arch}, not {weights!r}.'
    )
  if arch != backbone:
    raise PretrainedError(
      f'{spec} are weights for {arch}, but config.model.backbone is {backbone}; '
      f'set --config.model.backbone={arch} or pass weights for {backbone}.'
    )
  if width != 1.0:
    raise PretrainedError(
      f'{spec} are weights for width 1.0, but config.model.width is {width:g}; set '
      '--config.model.width=1.0 (narrower backbones start from random weights).'
    )
  if depth != 1.0:
    raise PretrainedError(
      f'{spec} are weights for depth 1.0, but config.model.depth is {depth:g}; set '
      '--config.model.depth=1.0 (shallower backbones start from random weights).'
    )
  return arch, weights


def _manual_route(source: str, arch: str, name: str) -> str:
  return (
    f'download {source} by hand, convert it with `python -m jaxattr.convert --arch={arch}'
    f' --input={name} --output=DIR` and pass --config.model.pretrained=DIR'
  )


def _is_converted(out_dir: Path, arch: str, sha_prefix: str) -> bool:
  """Whether `out_dir` holds this file converted by this converter (else it is redone)."""
  if not (out_dir / convert.BACKBONE_FILE).is_file() or not (out_dir / convert.META_FILE).is_file():
    return False
  meta = convert.load_meta(out_dir)
  return (
    meta.get('arch') == arch
    and meta.get('width') == 1.0
    and str(meta.get('sha256', '')).startswith(sha_prefix)
    and meta.get('format_version') == convert.FORMAT_VERSION
  )


def _require_torch(spec: str, name: str, manual: str) -> None:
  # Checked before downloading: hundreds of MB are no use if they cannot be read.
  try:
    import torch  # noqa: F401
  except ImportError as e:
    raise PretrainedError(
      f'{spec}: reading {name} needs torch: pip install "jaxattr[torch]" (the CPU wheel is '
      f'enough); or, where torch is installed, {manual}.'
    ) from e


@contextmanager
def _lock(path: Path) -> Iterator[None]:
  """Holds an exclusive lock on `path` (created), so one process per host fetches a file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _download(source: str, dest: Path, sha_prefix: str, timeout_s: float, manual: str) -> None:
  """Fetches `source` to `dest` atomically, checking its length and sha256 prefix.

  Raises:
    PretrainedError: one line naming `source`, the reason and `manual`; nothing is left
      at `dest`.
  """
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f'.{dest.name}.', suffix='.part')
  tmp = Path(tmp_name)
  logging.info('Downloading %s to %s.', source, dest)
  try:
    digest, received, expected = hashlib.sha256(), 0, None
    start = last_report = time.monotonic()
    with os.fdopen(fd, 'wb') as out:
      request = urllib.request.Request(source, headers={'User-Agent': 'jaxattr'})
      with urllib.request.urlopen(request, timeout=timeout_s) as response:
        length = response.headers.get('Content-Length')
        expected = int(length) if length is not None else None
        while chunk := response.read(_CHUNK):
          out.write(chunk)
          digest.update(chunk)
          received += len(chunk)
          if time.monotonic() - last_report > _PROGRESS_EVERY_S:
            last_report = time.monotonic()
            total = f' of {expected / 1e6:.0f}' if expected else ''
            logging.info('Downloading %s: %.0f%s MB.', source, received / 1e6, total)
      out.flush()
      os.fsync(out.fileno())
    if expected is not None and received != expected:
      raise _DownloadFailed(f'the connection ended after {received} of {expected} bytes')
    sha = digest.hexdigest()
    if not sha.startswith(sha_prefix):
      raise _DownloadFailed(
        f'its sha256 {sha} does not start with {sha_prefix} as its name says '
        '(damaged or altered file; nothing was kept)'
      )
    tmp.replace(dest)
    logging.info(
      'Downloaded %s (%d bytes, sha256 %s) in %.1f s.',
      source,
      received,
      sha,
      time.monotonic() - start,
    )
  except (_DownloadFailed, OSError, http.client.HTTPException, ValueError) as e:
    # OSError covers urllib's URLError / HTTPError, refused connections and timeouts;
    # HTTPException a body cut short (IncompleteRead).
    tmp.unlink(missing_ok=True)
    if isinstance(e, urllib.error.HTTPError):
      e.close()  # It holds the response's socket.
    is_url_error = isinstance(e, urllib.error.URLError) and not isinstance(
      e, urllib.error.HTTPError
    )
    reason = str(e.reason) if is_url_error else str(e) or type(e).__name__
    reason = ' '.join(reason.split())  # One line, whatever the library put in it.
    raise PretrainedError(f'Could not download {source}: {reason}; {manual}.') from e
  except BaseException:  # Interrupted (Ctrl-C, SIGTERM): leave no temporary file.
    tmp.unlink(missing_ok=True)
    raise


class _DownloadFailed(Exception):
  """A download that arrived but cannot be used (truncated, wrong checksum)."""


def _convert(arch: str, download: Path, out_dir: Path) -> None:
  """Converts `download` into `out_dir`, which appears complete or not at all."""
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f'.{out_dir.name}.', suffix='.part'))
  try:
    convert.convert_file(arch, download, tmp)
    if out_dir.exists():  # Stale: another converter version, or another file's conversion.
      shutil.rmtree(out_dir)
    tmp.rename(out_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def load_into(state: Any, path: str) -> Any:
  """A train state with its backbone parameters and statistics replaced by a converted backbone.

  Args:
    state: the fresh `train.TrainState` (sharded); the heads keep their init.
    path: a directory written by `python -m jaxattr.convert` (or `resolve`).

  Returns:
    The state, each loaded array put on the sharding of the one it replaces.

  Raises:
    ValueError: naming `path`, if the file's tree or shapes do not match the model.
  """
  backbone = convert.load_backbone(path)
  params = dict(state.params)
  batch_stats = dict(state.batch_stats)
  params[BACKBONE] = _checked_replace(state.params[BACKBONE], backbone['params'], path)
  if BACKBONE in state.batch_stats:
    batch_stats[BACKBONE] = _checked_replace(
      state.batch_stats[BACKBONE], backbone['batch_stats'], path
    )
  n = sum(x.size for x in jax.tree.leaves(backbone['params']))
  logging.info(
    'Loaded pretrained backbone from %s (%d parameters); heads keep their init.', path, n
  )
  return state.replace(params=params, batch_stats=batch_stats)


def _checked_replace(current, loaded, path):
  cur_struct = jax.tree.structure(current)
  if jax.tree.structure(loaded) != cur_struct:
    raise ValueError(
      f'{path}: the backbone in the file does not match config.model.backbone and .depth.'
    )
  for a, b in zip(jax.tree.leaves(current), jax.tree.leaves(loaded), strict=True):
    if a.shape != b.shape:
      raise ValueError(f'{path}: shape {b.shape} in the file, {a.shape} in the model.')
  return jax.tree.map(
    lambda a, b: jax.device_put(jnp.asarray(b, a.dtype), a.sharding), current, loaded
  )
