"""Tests for jaxattr/pretrained.py: `torchvision:ARCH` fetched from a local HTTP server.

Nothing here reaches the internet: a `http.server` on 127.0.0.1 (random free port)
serves a random resnet18 state dict (`torch_reference`, torchvision's names and
shapes, saved with `torch.save`: 47 MB, the smallest registered arch at torchvision's
width) under a torchvision-style name carrying the first hex digits of its true
sha256, and the registry's resnet18 entry is pointed at that name.
"""

import dataclasses
import hashlib
import http.server
import io
import re
import socket
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from jaxattr import convert, pretrained
from jaxattr.models import registry
from tests import torch_reference


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
  _one_line_error(e, 'pip install "jaxattr[torch]"')
  assert served.requests == []


def test_a_directory_is_returned_unchanged(tmp_path):
  assert pretrained.resolve(str(tmp_path), 'resnet50', cache=tmp_path / 'c') == str(tmp_path)
  assert not (tmp_path / 'c').exists()


def test_every_registered_arch_has_torchvision_weights_with_a_sha256_prefix():
  for arch in registry.BACKBONES:
    assert pretrained.available(arch)[0] == 'IMAGENET1K_V1'
    for weights in pretrained.available(arch):
      url = pretrained.weights_url(arch, weights)
      assert re.fullmatch(rf'https://download\.pytorch\.org/models/{arch}-[0-9a-f]{{8}}\.pth', url)
  assert set(pretrained.MORE_WEIGHTS) <= set(registry.BACKBONES)
