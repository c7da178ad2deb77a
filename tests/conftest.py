"""Test-session set-up shared by every test file.

Four fake CPU devices, so data-parallel code is tested on more than one device
(tests that want one device build their mesh over `jax.devices()[:1]`), and a
persistent compilation cache, so tests that compile the same tiny model share
the work.
"""

import os
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402

jax.config.update('jax_num_cpu_devices', 4)
jax.config.update(
  'jax_compilation_cache_dir', os.path.join(tempfile.gettempdir(), 'jaxattr_test_jax_cache')
)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
