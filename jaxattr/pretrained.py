"""`--config.model.pretrained=torchvision:ARCH` / `openai:NAME`: published weights, fetched once.

  python -m jaxattr.main --config=configs/wider.py:resnet101 --workdir=runs/r101 \
      --config.model.pretrained=torchvision:resnet101
  python -m jaxattr.main --config=configs/peta.py:clip_vit_b_16 --workdir=runs/clip \
      --config.model.pretrained=openai:ViT-B-16

`resolve` turns such a spec into the directory of a converted backbone, which
`load_into` reads as it reads any directory written by `python -m jaxattr.convert`.
The values:

  torchvision:ARCH[:WEIGHTS]  torchvision's file (WEIGHTS is torchvision's enum name,
                              `IMAGENET1K_V1` by default: the weights of the paper's time)
  openai:NAME                 OpenAI's CLIP file (ViT-B-16, ViT-L-14), whose image tower
                              the CLIP backbones load (`models/clip.py`)
  published                   the backbone's own: torchvision:ARCH, or openai:NAME for
                              the CLIP towers (`published_spec`)
  scratch (or '')             random initialisation (`resolve` returns None)
  anything else               a converted directory, returned unchanged

OpenAI's files are the source for CLIP because they need the least code: a plain HTTPS
GET of a public URL (no hub API, no token), and the URL's folder is the file's full
sha256, so the check is the same as torchvision's, only longer. (open_clip's
safetensors on the Hugging Face hub hold the same tensors, but need the hub's
resolve URLs, and their published hashes live in the hub's API, not in the URL.)
OpenAI's `.pt` files are TorchScript archives, read by `convert.load_state_dict`.

For a published file `resolve`

1. checks the spec against the config (ARCH is the backbone, width and depth 1)
   before anything is fetched;
2. downloads the file (the registry's `Backbone.url`; `MORE_WEIGHTS` for torchvision's
   other weights) into `<cache>/torchvision/<file>` or `<cache>/openai/<NAME>-<first
   8 hex digits of its sha256>.pt`, unless it is there, checking while downloading
   that its sha256 starts with the published digits (torch.hub's check; OpenAI's
   whole sha256);
3. checks a file already in the cache the same way on every use: a mismatch (a file
   damaged or altered since) stops the run with a line naming the file;
4. converts it with `convert.convert_file` into `<cache>/converted/<cached file's
   stem>/` (`backbone.msgpack` + `meta.json`), unless a conversion of the same file by
   the same converter version is there. The folder carries the file's hash, so each
   weights file has its own (resnet50's V1 and V2 never overwrite each other);
5. logs the URL, the sha256 and the directory, and returns the directory.

A second run therefore makes no request and no conversion. A download is written to
a temporary name in the same folder and renamed only once complete and checked, and
a conversion is written to a temporary folder renamed as a whole, so an interrupted
run never leaves anything that a later run would take for a finished file. Processes
on one host (one per GPU) take turns through a lock file per weights file, so each
file is fetched and converted once. `jaxattr.main` resolves the weights before it
creates the workdir: a bad spec or a failed download refuses the run (exit 2) and
writes nothing there.

`<cache>` is `$JAXATTR_CACHE`, else `$XDG_CACHE_HOME/jaxattr`, else
`~/.cache/jaxattr`. `$JAXATTR_TORCHVISION_URL` / `$JAXATTR_OPENAI_URL` (or `resolve`'s
`url`), when set, replace the folder of the publisher's URL
(https://download.pytorch.org/models, https://openaipublic.azureedge.net/clip/models;
OpenAI's files sit in `<folder>/<sha256>/<NAME>.pt`): a mirror, or a local server in
the tests. HTTP uses the standard library only. A failed download, a checksum mismatch
or a missing torch (needed to read `.pth` / `.pt`) stops with one line
(`PretrainedError`) that names the URL or the file and the manual route: download the
file by hand, convert it with `python -m jaxattr.convert`, and pass the directory.
"""

import dataclasses
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
from jaxattr.schema import PUBLISHED, SCRATCH

PREFIX = 'torchvision:'
OPENAI_PREFIX = 'openai:'
DEFAULT_BASE_URL = 'https://download.pytorch.org/models'
DEFAULT_OPENAI_URL = registry.OPENAI_URL.rstrip('/')
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
# OpenAI's URLs: `<folder>/<full sha256>/<name>.pt`.
_OPENAI_PATH = re.compile(r'/(?P<sha>[0-9a-f]{64})/(?P<name>[^/]+)$')
_CHUNK = 1 << 20
_PROGRESS_EVERY_S = 15.0


class PretrainedError(DataError):
  """The weights could not be fetched; the one-line message says what to do instead.

  A `DataError`, so `jaxattr.main` stops with the message alone, as for bad data.
  """


@dataclasses.dataclass(frozen=True)
class _Source:
  """One published weights file: where it is, what it must hash to, where it is cached."""

  arch: str
  publisher: str  # 'torchvision' or 'openai': the download's cache subfolder.
  url: str
  local_name: str  # The cached file's name; its stem names the converted folder.
  sha_prefix: str  # The published sha256 (OpenAI: all of it; torchvision: its start).


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


def is_published(spec: str) -> bool:
  """Whether `spec` names published weights to fetch (`torchvision:`, `openai:`, 'published')."""
  return spec == PUBLISHED or spec.startswith((PREFIX, OPENAI_PREFIX))


def published_spec(backbone: str) -> str:
  """What `pretrained='published'` stands for with `backbone`.

  Args:
    backbone: a registered backbone name.

  Returns:
    `torchvision:ARCH` (IMAGENET1K_V1) for torchvision's architectures, `openai:NAME`
    (e.g. 'openai:ViT-B-16') for the CLIP towers.
  """
  entry = registry.get(backbone)
  if entry.publisher == 'openai':
    return OPENAI_PREFIX + Path(entry.file_name).stem
  return PREFIX + backbone


def openai_names() -> dict[str, str]:
  """`openai:NAME` -> registered arch, e.g. {'ViT-B-16': 'clip_vit_b_16', ...}."""
  return {
    Path(b.file_name).stem: b.name for b in registry.BACKBONES.values() if b.publisher == 'openai'
  }


def resolve(
  spec: str,
  backbone: str,
  width: float = 1.0,
  depth: float = 1.0,
  cache: str | os.PathLike | None = None,
  url: str | None = None,
  timeout_s: float = DEFAULT_TIMEOUT_S,
) -> str | None:
  """The converted-backbone directory that `config.model.pretrained` stands for.

  Args:
    spec: a directory written by `python -m jaxattr.convert` (returned unchanged),
      `torchvision:ARCH` / `torchvision:ARCH:WEIGHTS`, `openai:NAME` (ViT-B-16,
      ViT-L-14), 'published' (the backbone's own: `published_spec`) or 'scratch' /
      '' (random initialisation: None).
    backbone: `config.model.backbone`; ARCH must equal it (checked before any download).
    width: `config.model.width`; must be 1.0, the width of the published files
      (checked before any download).
    depth: `config.model.depth`; must be 1.0 likewise.
    cache: the cache folder; None = `cache_dir()`.
    url: a folder URL to fetch the file from instead of the publisher's (a mirror);
      None = `$JAXATTR_TORCHVISION_URL` / `$JAXATTR_OPENAI_URL` if set, else the
      publisher's own URL.
    timeout_s: seconds a connection or a read may stall before the download fails.

  Returns:
    The directory holding `backbone.msgpack` and `meta.json`; None for 'scratch'.

  Raises:
    PretrainedError: one line, for an unknown ARCH, NAME or WEIGHTS, ARCH other than
      `backbone`, a failed or truncated download, a checksum mismatch (also of a file
      already in the cache), or no torch.
  """
  if not spec or spec == SCRATCH:
    return None
  if spec == PUBLISHED:
    spec = published_spec(backbone)
  if not is_published(spec):
    return spec
  source = _source(spec, backbone, width, depth, url)
  cache = Path(cache).expanduser() if cache is not None else cache_dir()
  # Each file converts into its own folder (named with its hash), so two weights of one
  # arch (V1, V2) never share or overwrite one, also under concurrent runs.
  out_dir = cache / 'converted' / Path(source.local_name).stem
  download = cache / source.publisher / source.local_name
  manual = _manual_route(source.url, source.arch, source.url.rsplit('/', 1)[-1])

  with _lock(cache / 'locks' / f'{source.local_name}.lock'):
    if download.is_file():
      _check_cached(download, source.sha_prefix, manual)
    if _is_converted(out_dir, source.arch, source.sha_prefix):
      logging.info('Pretrained %s: cached %s (from %s).', spec, out_dir, source.url)
      return str(out_dir)
    _require_torch(spec, source.local_name, manual)
    if download.is_file():
      logging.info('Pretrained %s: using the downloaded %s.', spec, download)
    else:
      _download(source.url, download, source.sha_prefix, timeout_s, manual)
    _convert(source.arch, download, out_dir)
  meta = convert.load_meta(out_dir)
  logging.info(
    'Pretrained %s: %s (sha256 %s, %d parameters) converted to %s.',
    spec,
    source.url,
    meta['sha256'],
    meta['num_params'],
    out_dir,
  )
  return str(out_dir)


def _source(spec: str, backbone: str, width: float, depth: float, url: str | None) -> _Source:
  """The published file `spec` names, after the checks that need no download."""
  if spec.startswith(OPENAI_PREFIX):
    name = spec[len(OPENAI_PREFIX) :]
    names = openai_names()
    if name not in names:
      raise PretrainedError(f'{spec}: unknown CLIP model {name!r}; known: {", ".join(names)}.')
    arch = names[name]
    _check_fits(spec, arch, backbone, width, depth)
    match = _OPENAI_PATH.search(registry.get(arch).url)
    if match is None:  # Every OpenAI URL carries its hash; a table entry without one is a bug.
      raise ValueError(f'{registry.get(arch).url}: no sha256 folder in the URL.')
    sha, file_name = match.group('sha'), match.group('name')
    folder = url or os.environ.get('JAXATTR_OPENAI_URL') or DEFAULT_OPENAI_URL
    local = f'{Path(file_name).stem}-{sha[:8]}{Path(file_name).suffix}'
    return _Source(arch, 'openai', f'{folder.rstrip("/")}/{sha}/{file_name}', local, sha)
  arch, weights = _parse(spec, backbone, width, depth)
  source = weights_url(arch, weights)
  name = source.rsplit('/', 1)[-1]
  folder = url or os.environ.get('JAXATTR_TORCHVISION_URL')
  if folder:
    source = f'{folder.rstrip("/")}/{name}'
  match = _HASHED_NAME.match(name)
  if match is None:  # Every torchvision file carries its hash; a table entry without one is a bug.
    raise ValueError(f'{name}: no sha256 prefix in the file name.')
  return _Source(arch, 'torchvision', source, name, match.group('sha'))


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
  if registry.get(arch).publisher != 'torchvision':
    return ()
  return (DEFAULT_WEIGHTS, *MORE_WEIGHTS.get(arch, {}))


def _parse(spec: str, backbone: str, width: float, depth: float) -> tuple[str, str]:
  arch, _, weights = spec[len(PREFIX) :].partition(':')
  weights = weights or DEFAULT_WEIGHTS
  if arch not in registry.BACKBONES:
    known = ', '.join(registry.BACKBONES)
    raise PretrainedError(f'{spec}: unknown arch {arch!r}; known: {known}.')
  if registry.get(arch).publisher != 'torchvision':
    raise PretrainedError(
      f'{spec}: torchvision publishes no weights for {arch}; use {published_spec(arch)}.'
    )
  if weights not in available(arch):
    raise PretrainedError(
      f'{spec}: torchvision publishes {", ".join(available(arch))} for {arch}, not {weights!r}.'
    )
  _check_fits(spec, arch, backbone, width, depth)
  return arch, weights


def _check_fits(spec: str, arch: str, backbone: str, width: float, depth: float) -> None:
  """Stops unless weights of `arch` (width and depth 1) fit the configured backbone."""
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
      f'{spec}: reading {name} needs torch: pip install -e ".[torch]" in the clone (the CPU '
      f'wheel is enough); or, where torch is installed, {manual}.'
    ) from e


def _check_cached(download: Path, sha_prefix: str, manual: str) -> None:
  """Stops, naming the file, unless the cached download still hashes as published."""
  sha = convert.file_sha256(download)
  if not sha.startswith(sha_prefix):
    raise PretrainedError(
      f'{download}: its sha256 {sha} does not start with {sha_prefix}, the published one '
      f'(damaged or altered since it was downloaded); delete it to download it again, or {manual}.'
    )


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


def load_into(state: Any, path: str | None) -> Any:
  """A train state with its backbone parameters and statistics replaced by a converted backbone.

  Args:
    state: the fresh `train.TrainState` (sharded); the heads keep their init.
    path: a directory written by `python -m jaxattr.convert` (or `resolve`); None
      (`resolve('scratch')`) keeps the random initialisation.

  Returns:
    The state, each loaded array put on the sharding of the one it replaces.

  Raises:
    ValueError: naming `path`, if the file's tree or shapes do not match the model.
  """
  if path is None:
    logging.info('No pretrained weights (scratch): the backbone keeps its random init.')
    return state
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
