"""Test-session set-up and helpers shared by several test files.

Four fake CPU devices, so data-parallel code is tested on more than one device
(tests that want one device build their mesh over `jax.devices()[:1]`), and a
persistent compilation cache, so tests that compile the same tiny model share
the work. Below them: the tiny synthetic dataset as a session fixture
(`data_dir`), one trained run of configs/test.py (`trained_run`), `make_config`,
float64 runs for the equivalence tests (`float64`, `FLOAT64`), the subprocess helpers
(`tool_env`, `main_command`, `run_tool`, `free_port`, `tail`), the comparison helpers
(`run_steps`, `tree_allclose`), `sorted_examples` and `write_blank_png`.

Tests marked `slow` (they launch processes, train several backbones, run Slurm, or compare
multi-device or resumed training) are left out of the quick tier, `pytest -m "not slow"`.
"""

import os
import socket
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# XLA:CPU compiles the tests' programs at LLVM -O0, here and in every subprocess (they
# inherit os.environ): compiling is most of the suite's time, and -O0 compiles the tiny
# models' train steps in about half the time of -O2 (ResNet-18: 35 -> 18 s) while the
# tests' few steps hardly feel the slower kernels. Every test compares programs compiled
# alike; a test that compares with XLA's default passes it explicitly (test_train.py's init).
os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} --xla_backend_optimization_level=0'

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_num_cpu_devices', 4)
jax.config.update(
  'jax_compilation_cache_dir', os.path.join(tempfile.gettempdir(), 'jaxattr_test_jax_cache')
)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (`-n 2`, the README's command) a test file is one work unit, so its
# module fixtures are built once, and test_tools joins test_train's unit since both use
# the session's `trained_run` (`pytest_xdist_make_scheduler` below; xdist's own
# `--dist=loadgroup` marks do not group with this pytest). The longest units start first,
# so no worker is left with a long file at the end.
_UNIT_OF = {'test_tools': 'test_train'}
_LONGEST_FIRST = (
  'test_backbones_train',
  'test_train',
  'test_slurm',
  'test_faults',
  'test_multihost',
  'test_experiments',
  'test_models',
  'test_run_folder',
)


def _unit(nodeid: str) -> str:
  """The work unit of a test: its file's module name, or the unit that file joins."""
  name = Path(nodeid.split('::')[0]).stem
  return _UNIT_OF.get(name, name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  # Stable: a file's tests keep their order.
  items.sort(key=lambda item: rank.get(_unit(item.nodeid), len(rank)))


@pytest.hookimpl(optionalhook=True)  # A pytest-xdist hook: called only under -n.
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
  if config.getvalue('dist') != 'load':  # Another --dist asked for: xdist's own.
    return None
  from xdist.scheduler import LoadScopeScheduling

  class FileUnits(LoadScopeScheduling):
    """xdist's loadscope with `_unit` as the scope, in collection order."""

    def _split_scope(self, nodeid: str) -> str:
      return _unit(nodeid)

  config.option.loadscopereorder = False  # Keep the longest-first order.
  return FileUnits(config, log)


# ---------------------------------------------------------------------------
# Helpers shared by several test files (import them: `from tests.conftest import ...`).
# TensorFlow and the configs are imported inside them, so that collecting a test
# file that needs neither stays cheap.


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
  """The tiny synthetic dataset of configs/test.py (`synthetic_attributes/tiny`), built once.

  Shared by every test that asks for it: treat it as read-only (copy it to damage it).
  """
  from jaxattr import schema
  from jaxattr.data import input_pipeline

  path = tmp_path_factory.mktemp('tfds')
  config = schema.load_recipe('test').get_config()
  config.data.data_dir = str(path)
  input_pipeline.prepare(input_pipeline.get_builder(config.data), config.data)
  return str(path)


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory, data_dir) -> tuple[Path, subprocess.CompletedProcess]:
  """One `python -m jaxattr.main --config=configs/test.py` run on `data_dir`: (workdir, process).

  tests/test_train.py checks what the run writes and prints, tests/test_tools.py runs the
  tools on it. Tools may add their own files to the workdir; none changes the run's.
  """
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  proc = run_tool(
    'jaxattr.main',
    '--config=configs/test.py',
    f'--workdir={workdir}',
    f'--config.data.data_dir={data_dir}',
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def tool_env(num_devices: int | None = None, **extra: str) -> dict[str, str]:
  """The environment of a subprocess: this checkout's `jaxattr`, the tests' compilation cache.

  Args:
    num_devices: CPU devices of the subprocess (JAX on CPU only); None inherits the
      test process's environment (JAX's default: one).
    **extra: more variables.

  Returns:
    os.environ with those set.
  """
  env = dict(
    os.environ,
    PYTHONPATH=str(REPO),
    TF_CPP_MIN_LOG_LEVEL='2',
    JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.5',
  )
  if num_devices is not None:
    env.update(JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES=str(num_devices))
  env.update(extra)
  return env


def main_command(
  data_dir: str, workdir: Path, *flags: str, script: Path | None = None
) -> list[str]:
  """`python -m jaxattr.main` (or `script`): configs/test.py on `data_dir` into `workdir`."""
  program = [str(script)] if script else ['-m', 'jaxattr.main']
  return [
    sys.executable,
    *program,
    '--config=configs/test.py',
    f'--workdir={workdir}',
    f'--config.data.data_dir={data_dir}',
    *flags,
  ]


def run_tool(*args: str, timeout: float = 300, num_devices: int | None = None):
  """`python -m *args` from the repository root (`tool_env`), output captured.

  Returns:
    The subprocess.CompletedProcess.
  """
  return subprocess.run(
    [sys.executable, '-m', *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=tool_env(num_devices),
  )


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def tail(log: Path, n: int = 3000) -> str:
  """The log file's name and its last `n` characters, for a failure message."""
  return f'--- {log.name}:\n' + log.read_text(errors='replace')[-n:]


# ---------------------------------------------------------------------------
# Equivalence tests: runs that sum in different orders (1 vs 4 devices, 1 vs 2
# processes) compute in float64. Rounding differs between them by float64's unit
# roundoff (2**-53, 1.1e-16), and the train steps amplify such differences most in
# the BatchNorm biases whose gradients are sums that cancel to ~1e-5 of their terms,
# by ~1e5 over the tests' steps. In float32 (6e-8) that reaches the 1e-5 bound of
# `tree_allclose` on some CPUs; in float64 it stays ~1e-11, a margin of 1e6 that no
# CPU's choice of kernels or summation order can use up.

FLOAT64 = {'model.dtype': 'float64', 'model.param_dtype': 'float64'}


@pytest.fixture
def float64():
  """`jax_enable_x64` for the test (restored after it); the config wants `FLOAT64` too."""
  with jax.enable_x64(True):
    yield


def tree_allclose(a, b, rtol: float = 1e-5) -> None:
  """Leaf by leaf: |x - y| <= rtol * (|y| + max|y|) + 1e-7, relative to each tensor's scale.

  The floor covers parameters that stay at float noise: the spatial softmax is
  invariant to the mask-logit bias, whose gradient is zero up to rounding.
  """
  import numpy as np

  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x), np.asarray(y)
    scale = float(np.max(np.abs(y))) if y.size else 0.0
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale + 1e-7)


def run_steps(ex, n: int, state=None, start: int = 0):
  """`n` train steps of the experiment `ex` from step `start`: (state, the n losses)."""
  state = ex.state if state is None else state
  batches = ex.train_batches(start_step=start)
  losses = []
  for step in range(start, start + n):
    state, m = ex.train_step(state, next(batches), step)
    losses.append(float(m['loss']))
  return state, losses


def make_config(data_dir: str, **overrides: Any):
  """configs/test.py reading `data_dir`, with dotted overrides ('train.batch_size': 8).

  Args:
    data_dir: the TFDS data dir (the `data_dir` fixture).
    **overrides: field path -> value; pass them as `**{'train.batch_size': 8}`.

  Returns:
    The config.
  """
  from jaxattr import schema

  config = schema.load_recipe('test').get_config()
  config.data.data_dir = data_dir
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def sorted_examples(builder, split: str, **kwargs: Any) -> list[dict[str, Any]]:
  """The numpy examples of a prepared split in `index` order (kwargs to `as_dataset`)."""
  import tensorflow_datasets as tfds

  examples = tfds.as_numpy(builder.as_dataset(split=split, **kwargs))
  return sorted(examples, key=lambda e: e['index'])


def build(builder_cls, root: Path, data_dir: Path, **kwargs: Any):
  """A `builder_cls(data_dir=data_dir, **kwargs)` prepared from the manual dir `root`."""
  import tensorflow_datasets as tfds

  builder = builder_cls(data_dir=str(data_dir), **kwargs)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  return builder


def write_blank_png(path: Path, width: int, height: int) -> None:
  """Writes a black 1-bit greyscale PNG without ever holding its pixels.

  A 20,000 x 20,000 image (400 megapixels, 1.2 GB as RGB) is 50 MB of filtered
  rows, deflated here a row at a time (fastest level) to ~220 KB in half a second.

  Args:
    path: the file to write.
    width: pixels per row.
    height: rows.
  """

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

  row = bytes(1 + (width + 7) // 8)  # Filter type 0, then the row's bits, all 0.
  deflate = zlib.compressobj(1)
  idat = b''.join(deflate.compress(row) for _ in range(height)) + deflate.flush()
  header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale.
  png = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', idat) + chunk(b'IEND', b'')
  path.write_bytes(png)
