"""Tests for jaxattr/pretrained.py: `torchvision:ARCH` / `openai:NAME` from a local HTTP server.

Nothing here reaches the internet: a `http.server` on 127.0.0.1 (random free port)
serves a random resnet18 state dict (`torch_reference`, torchvision's names and
shapes, saved with `torch.save`: 47 MB, the smallest registered arch at torchvision's
width) under a torchvision-style name carrying the first hex digits of its true
sha256, and the registry's resnet18 entry is pointed at that name. OpenAI's CLIP
files are stood in for by a TorchScript archive of a whole CLIP model (open_clip's image
tower at test size beside text-tower tensors) served at `<sha256>/ViT-B-16.pt`, the
registry's clip_vit_b_16 entry pointed at it and at the test-size tower.
"""

import dataclasses
import hashlib
import http.server
import io
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from jaxattr import convert, pretrained
from jaxattr.models import clip, registry
from tests import torch_reference
from tests.conftest import REPO, tool_env


class _Server:
  """Serves `files` (URL path -> bytes) and records every requested path."""

  def __init__(self):
    self.files: dict[str, bytes] = {}
    self.truncate: set[str] = set()  # Paths whose body stops halfway (Content-Length is full).
    self.requests: list[str] = []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):
        server.requests.append(self.path)
        body = server.files.get(self.path)
        if body is None:
          self.send_error(404)
          return
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path in server.truncate else body)

      def log_message(self, *args):  # Keep the test output clean.
        pass

    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/models'
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
    self.thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join()


@pytest.fixture
def server():
  s = _Server()
  yield s
  s.close()


@pytest.fixture(scope='module')
def weights_file() -> tuple[str, bytes, dict[str, np.ndarray]]:
  """(torchvision-style name, .pth bytes, the state dict as numpy)."""
  torch.manual_seed(0)
  model = torch_reference.create_backbone('resnet18')
  buffer = io.BytesIO()
  torch.save(model.state_dict(), buffer)
  data = buffer.getvalue()
  name = f'resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth'
  return name, data, {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _serve_as_resnet18(monkeypatch, name: str) -> None:
  """Makes `name` the registry's resnet18 weights file (fetched from the test's folder URL)."""
  entry = dataclasses.replace(
    registry.BACKBONES['resnet18'], url=f'https://download.pytorch.org/models/{name}'
  )
  monkeypatch.setitem(registry.BACKBONES, 'resnet18', entry)


@pytest.fixture
def served(server, weights_file, monkeypatch):
  """The file served as torchvision's resnet18 V1 weights."""
  name, data, _ = weights_file
  server.files[f'/models/{name}'] = data
  _serve_as_resnet18(monkeypatch, name)
  return server


def _resolve(cache: Path, url: str, spec: str = 'torchvision:resnet18', **kwargs) -> str:
  return pretrained.resolve(spec, 'resnet18', cache=cache, url=url, **kwargs)


def _files(folder: Path) -> list[Path]:
  return sorted(p for p in folder.rglob('*') if p.is_file()) if folder.exists() else []


def _one_line_error(excinfo, *parts: str) -> str:
  message = str(excinfo.value)
  assert '\n' not in message, message
  for part in parts:
    assert part in message, message
  return message


def _free_closed_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_download_convert_then_cached(served, weights_file, tmp_path, monkeypatch):
  name, data, state_dict = weights_file
  # The defaults come from the environment (documented in docs/pretrained.md).
  monkeypatch.setenv('JAXATTR_CACHE', str(tmp_path / 'cache'))
  monkeypatch.setenv('JAXATTR_TORCHVISION_URL', served.url + '/')
  path = Path(pretrained.resolve('torchvision:resnet18', 'resnet18'))
  assert served.requests == [f'/models/{name}']
  assert path.parent.parent == tmp_path / 'cache'
  assert (tmp_path / 'cache' / 'torchvision' / name).read_bytes() == data

  # Equal to converting the same file by hand, and (independently) to torch's tensors.
  got = convert.load_backbone(path)
  (tmp_path / name).write_bytes(data)
  convert.convert_file('resnet18', tmp_path / name, tmp_path / 'direct')
  direct = convert.load_backbone(tmp_path / 'direct')
  assert jax.tree.structure(got) == jax.tree.structure(direct)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(direct), strict=True):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(
    got['params']['conv1']['kernel'], state_dict['conv1.weight'].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
    got['batch_stats']['layer4']['1']['bn2']['var'], state_dict['layer4.1.bn2.running_var']
  )
  meta = convert.load_meta(path)
  assert meta['source'] == name and meta['sha256'] == hashlib.sha256(data).hexdigest()

  # Second run: no request, no conversion, and the server is not even needed.
  backbone_file = path / convert.BACKBONE_FILE
  before = backbone_file.stat().st_mtime_ns
  served.files.clear()
  assert Path(pretrained.resolve('torchvision:resnet18', 'resnet18')) == path
  assert served.requests == [f'/models/{name}']
  assert backbone_file.stat().st_mtime_ns == before

  # An older converter's output (another format version) is redone from the cached
  # download, still without a request.
  meta_file = path / convert.META_FILE
  meta_file.write_text(meta_file.read_text().replace('"format_version": 1', '"format_version": 0'))
  assert Path(pretrained.resolve('torchvision:resnet18', 'resnet18')) == path
  assert served.requests == [f'/models/{name}']
  assert convert.load_meta(path)['format_version'] == convert.FORMAT_VERSION
  for a, b in zip(
    jax.tree.leaves(direct), jax.tree.leaves(convert.load_backbone(path)), strict=True
  ):
    np.testing.assert_array_equal(a, b)

  # No temporary file or folder is left next to the results.
  assert [p for p in (tmp_path / 'cache').rglob('*') if p.name.startswith('.')] == []


def test_checksum_mismatch_caches_nothing(server, weights_file, tmp_path, monkeypatch):
  name, data, _ = weights_file
  true_prefix = hashlib.sha256(data).hexdigest()[:8]
  wrong_prefix = ''.join('0' if c != '0' else '1' for c in true_prefix)
  wrong_name = name.replace(true_prefix, wrong_prefix)
  server.files[f'/models/{wrong_name}'] = data
  _serve_as_resnet18(monkeypatch, wrong_name)
  with pytest.raises(pretrained.PretrainedError) as e:
    _resolve(tmp_path, server.url)
  url = f'{server.url}/{wrong_name}'
  _one_line_error(e, url, wrong_prefix, 'python -m jaxattr.convert --arch=resnet18 --input=')
  assert server.requests == [f'/models/{wrong_name}']
  assert _files(tmp_path / 'torchvision') == [] and _files(tmp_path / 'converted') == []


def test_truncated_download_is_not_kept(served, weights_file, tmp_path):
  name, _, _ = weights_file
  served.truncate.add(f'/models/{name}')
  with pytest.raises(pretrained.PretrainedError) as e:
    _resolve(tmp_path, served.url)
  _one_line_error(e, f'{served.url}/{name}', 'by hand')
  assert _files(tmp_path / 'torchvision') == [] and _files(tmp_path / 'converted') == []


def test_http_error_names_the_url(server, tmp_path, monkeypatch):
  _serve_as_resnet18(monkeypatch, 'r-0123abcd.pth')
  with pytest.raises(pretrained.PretrainedError) as e:
    _resolve(tmp_path, server.url)
  _one_line_error(e, f'{server.url}/r-0123abcd.pth', '404', 'by hand')
  assert _files(tmp_path / 'torchvision') == []


def test_unreachable_host_fails_fast(served, tmp_path):
  url = f'http://127.0.0.1:{_free_closed_port()}/models'
  start = time.monotonic()
  with pytest.raises(pretrained.PretrainedError) as e:
    _resolve(tmp_path, url, timeout_s=5)
  assert time.monotonic() - start < 5
  _one_line_error(e, f'{url}/resnet18-', 'refused', 'by hand')
  assert _files(tmp_path / 'torchvision') == []


def test_wrong_backbone_or_unknown_names_stop_before_any_request(served, tmp_path):
  for spec, backbone, words in [
    ('torchvision:resnet101', 'resnet50', '--config.model.backbone=resnet101'),
    ('torchvision:resnet9', 'resnet9', 'unknown arch'),
    ('torchvision:resnet18:IMAGENET1K_V2', 'resnet18', 'IMAGENET1K_V1'),
    ('torchvision:resnet18', 'resnet18', '--config.model.width=1.0'),
    ('torchvision:resnet18', 'resnet18', '--config.model.depth=1.0'),
  ]:
    width = 0.0625 if 'width' in words else 1.0
    depth = 0.25 if 'depth' in words else 1.0
    with pytest.raises(pretrained.PretrainedError) as e:
      pretrained.resolve(spec, backbone, width, depth, cache=tmp_path, url=served.url)
    _one_line_error(e, spec, words)
  assert served.requests == []


def test_missing_torch_is_one_line_before_downloading(served, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # Any `import torch` now raises ImportError.
  with pytest.raises(pretrained.PretrainedError) as e:
    _resolve(tmp_path, served.url)
  _one_line_error(e, 'pip install -e ".[torch]" in the clone')
  assert served.requests == []


def test_a_directory_is_returned_unchanged(tmp_path):
  assert pretrained.resolve(str(tmp_path), 'resnet50', cache=tmp_path / 'c') == str(tmp_path)
  assert not (tmp_path / 'c').exists()


def test_every_registered_arch_has_torchvision_weights_with_a_sha256_prefix():
  for arch in (n for n, b in registry.BACKBONES.items() if b.publisher == 'torchvision'):
    assert pretrained.available(arch)[0] == 'IMAGENET1K_V1'
    for weights in pretrained.available(arch):
      url = pretrained.weights_url(arch, weights)
      assert re.fullmatch(rf'https://download\.pytorch\.org/models/{arch}-[0-9a-f]{{8}}\.pth', url)
  assert set(pretrained.MORE_WEIGHTS) <= set(registry.BACKBONES)


# --- openai:NAME (OpenAI's CLIP files), 'published', 'scratch', the cache's rules -------

CLIP_WIDTH, CLIP_DEPTH = 1 / 16, 0.25


@pytest.fixture(scope='module')
def clip_file() -> tuple[str, bytes, dict[str, np.ndarray]]:
  """(sha256, TorchScript bytes, state dict) of a whole CLIP model as OpenAI saves it.

  open_clip's image tower at test size under `visual`, beside text-tower tensors the
  converter must drop by name, traced to a TorchScript archive like OpenAI's `.pt`.
  """
  from tests import open_clip_reference

  class Clip(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.visual = open_clip_reference.vision_transformer('clip_vit_b_16', CLIP_WIDTH, 3)
      self.token_embedding = torch.nn.Embedding(10, 8)
      self.positional_embedding = torch.nn.Parameter(torch.randn(77, 8))
      self.text_projection = torch.nn.Parameter(torch.randn(8, 4))

    def forward(self, images):
      return self.visual(images)

  torch.manual_seed(1)
  model = Clip().eval()
  open_clip_reference.randomize_(model.visual)
  buffer = io.BytesIO()
  with warnings.catch_warnings():
    # The tracer's notes on Python control flow, and torch's deprecation of TorchScript:
    # OpenAI's files are TorchScript all the same.
    warnings.simplefilter('ignore')
    traced = torch.jit.trace(model, torch.zeros(1, 3, 224, 224), check_trace=False)
    torch.jit.save(traced, buffer)
  data = buffer.getvalue()
  state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  return hashlib.sha256(data).hexdigest(), data, state


@pytest.fixture
def served_clip(server, clip_file, monkeypatch):
  """The file served as OpenAI's ViT-B-16.pt; the registry's tower is the test-size one."""
  sha, data, _ = clip_file
  server.files[f'/models/{sha}/ViT-B-16.pt'] = data
  entry = registry.BACKBONES['clip_vit_b_16']

  def create_test_size(width=1.0, **options):
    del width  # The file's tower: 1/16 width, 3 blocks.
    return clip.create_clip('clip_vit_b_16', CLIP_WIDTH, **{**options, 'depth': CLIP_DEPTH})

  monkeypatch.setitem(
    registry.BACKBONES,
    'clip_vit_b_16',
    dataclasses.replace(
      entry, url=f'{registry.OPENAI_URL}{sha}/ViT-B-16.pt', create=create_test_size
    ),
  )
  return server


def test_openai_download_convert_then_cached(served_clip, clip_file, tmp_path, monkeypatch):
  sha, data, state = clip_file
  monkeypatch.setenv('JAXATTR_CACHE', str(tmp_path / 'cache'))
  monkeypatch.setenv('JAXATTR_OPENAI_URL', served_clip.url)
  path = Path(pretrained.resolve('openai:ViT-B-16', 'clip_vit_b_16'))
  request = f'/models/{sha}/ViT-B-16.pt'
  assert served_clip.requests == [request]
  assert path == tmp_path / 'cache' / 'converted' / f'ViT-B-16-{sha[:8]}'
  assert (tmp_path / 'cache' / 'openai' / f'ViT-B-16-{sha[:8]}.pt').read_bytes() == data

  params = convert.load_backbone(path)['params']
  # Against the file's own tensors: the text tower's `positional_embedding` is not the
  # image tower's, and the untransposed [1 + N, D] / [D, E] tensors keep torch's layout.
  np.testing.assert_array_equal(
    params['positional_embedding'], state['visual.positional_embedding']
  )
  np.testing.assert_array_equal(params['proj'], state['visual.proj'])
  np.testing.assert_array_equal(
    params['transformer']['resblocks']['2']['mlp']['c_proj']['kernel'],
    state['visual.transformer.resblocks.2.mlp.c_proj.weight'].T,
  )
  assert convert.load_meta(path)['sha256'] == sha

  # Cached: no request, and 'published' names the same file for a CLIP tower.
  served_clip.files.clear()
  assert Path(pretrained.resolve('published', 'clip_vit_b_16')) == path
  assert Path(pretrained.resolve('openai:ViT-B-16', 'clip_vit_b_16')) == path
  assert served_clip.requests == [request]


def test_openai_checksum_mismatch_caches_nothing(server, clip_file, tmp_path, monkeypatch):
  sha, data, _ = clip_file
  entry = registry.BACKBONES['clip_vit_b_16']
  server.files[f'/models/{sha}/ViT-B-16.pt'] = data[:-1] + bytes([data[-1] ^ 1])
  monkeypatch.setitem(
    registry.BACKBONES,
    'clip_vit_b_16',
    dataclasses.replace(entry, url=f'{registry.OPENAI_URL}{sha}/ViT-B-16.pt'),
  )
  with pytest.raises(pretrained.PretrainedError) as e:
    pretrained.resolve('openai:ViT-B-16', 'clip_vit_b_16', cache=tmp_path, url=server.url)
  _one_line_error(e, f'{server.url}/{sha}/ViT-B-16.pt', sha, '--arch=clip_vit_b_16')
  assert _files(tmp_path / 'openai') == [] and _files(tmp_path / 'converted') == []


def test_openai_unreachable_host_fails_fast(served_clip, tmp_path):
  url = f'http://127.0.0.1:{_free_closed_port()}/models'
  with pytest.raises(pretrained.PretrainedError) as e:
    pretrained.resolve('openai:ViT-B-16', 'clip_vit_b_16', cache=tmp_path, url=url, timeout_s=5)
  _one_line_error(e, f'{url}/', 'ViT-B-16.pt', 'refused', 'by hand')
  assert _files(tmp_path / 'openai') == []


def test_openai_names_and_sizes_are_checked_before_any_request(served_clip, tmp_path):
  for spec, backbone, width, words in [
    ('openai:ViT-B-32', 'clip_vit_b_16', 1.0, 'unknown CLIP model'),
    ('openai:ViT-L-14', 'clip_vit_b_16', 1.0, '--config.model.backbone=clip_vit_l_14'),
    ('openai:ViT-B-16', 'clip_vit_b_16', 0.5, '--config.model.width=1.0'),
    ('torchvision:clip_vit_b_16', 'clip_vit_b_16', 1.0, 'openai:ViT-B-16'),
  ]:
    with pytest.raises(pretrained.PretrainedError) as e:
      pretrained.resolve(spec, backbone, width, cache=tmp_path, url=served_clip.url)
    _one_line_error(e, spec, words)
  assert served_clip.requests == []


def test_a_cached_file_is_checked_on_every_use(served_clip, tmp_path):
  first = pretrained.resolve(
    'openai:ViT-B-16', 'clip_vit_b_16', cache=tmp_path, url=served_clip.url
  )
  (download,) = _files(tmp_path / 'openai')
  data = bytearray(download.read_bytes())
  data[len(data) // 2] ^= 1  # Damaged after the download; the conversion is still there.
  download.write_bytes(bytes(data))
  with pytest.raises(pretrained.PretrainedError) as e:
    pretrained.resolve('openai:ViT-B-16', 'clip_vit_b_16', cache=tmp_path, url=served_clip.url)
  _one_line_error(e, str(download), 'delete it')
  assert Path(first).is_dir() and len(served_clip.requests) == 1


def test_each_weights_file_converts_into_its_own_folder(
  served, weights_file, tmp_path, monkeypatch
):
  """V1 and V2 of one arch: two folders, the first one untouched by the second."""
  name, _, _ = weights_file
  torch.manual_seed(1)
  buffer = io.BytesIO()
  torch.save(torch_reference.create_backbone('resnet18').state_dict(), buffer)
  v2 = buffer.getvalue()
  v2_name = f'resnet18-{hashlib.sha256(v2).hexdigest()[:8]}.pth'
  served.files[f'/models/{v2_name}'] = v2
  monkeypatch.setitem(pretrained.MORE_WEIGHTS, 'resnet18', {'IMAGENET1K_V2': v2_name})
  one = Path(_resolve(tmp_path, served.url))
  before = (one / convert.BACKBONE_FILE).read_bytes()
  two = Path(_resolve(tmp_path, served.url, 'torchvision:resnet18:IMAGENET1K_V2'))
  assert one.name == name.removesuffix('.pth') and two.name == v2_name.removesuffix('.pth')
  assert (one / convert.BACKBONE_FILE).read_bytes() == before
  assert convert.load_meta(two)['source'] == v2_name


def test_scratch_is_random_init_and_published_is_the_backbones_own():
  assert pretrained.resolve('scratch', 'resnet50') is None
  assert pretrained.resolve('', 'resnet50') is None
  assert pretrained.published_spec('resnet50') == 'torchvision:resnet50'
  assert pretrained.published_spec('clip_vit_l_14') == 'openai:ViT-L-14'
  state = object()
  assert pretrained.load_into(state, None) is state


def test_main_refuses_weights_it_cannot_use_before_touching_the_workdir(tmp_path):
  """torchvision weights for the test config's 1/16-width backbone: exit 2, no workdir."""
  workdir = tmp_path / 'run'
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'jaxattr.main',
      '--config=configs/test.py',
      f'--workdir={workdir}',
      '--config.model.pretrained=torchvision:resnet18',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=tool_env(JAXATTR_CACHE=str(tmp_path / 'cache')),
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert '--config.model.width=1.0' in result.stderr
  assert not workdir.exists()
