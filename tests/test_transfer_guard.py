"""The train loop's per-step work does not synchronise with the host.

A step that read a device value on the host (`float(loss)`, `int(state.step)`, a Python
`if` on an array, `block_until_ready`) would wait for the device every step. The loop's
steps run here through the change from the frozen to the end-to-end stage, on four
devices, with two checks on:

- `jax.transfer_guard('disallow')` around the compiled step: it refuses implicit
  transfers (a Python or numpy value handed to a compiled program; on accelerators also
  any device-to-host read), while the batch's explicit placement (`sharding.to_global`)
  stays allowed. The loop's metric accumulation after each step is outside it: clu's
  `Average` copies its count, a Python int, to the device, a transfer that does not
  wait for the device.
- `_no_host_reads` around both: on CPU, device buffers are host memory and the guard
  sees no device-to-host transfer, so jax.Array's host reads (its value, `item`,
  `block_until_ready`) raise instead. numpy's buffer-protocol read (`np.asarray`) of a
  CPU array is the one read neither check sees on CPU.
"""

import contextlib

import jax
import numpy as np
import pytest
from jax._src import array as jax_array

from jaxattr import metrics, sharding, train
from tests.conftest import make_config


class HostRead(RuntimeError):
  """A read of a device array's value on the host, where the loop must not make one."""


@contextlib.contextmanager
def _no_host_reads(monkeypatch):
  """jax.Array's reads of its value on the host raise `HostRead` inside the block."""

  def refuse(*args, **kwargs):
    raise HostRead('a host read of a device array inside a train step')

  with monkeypatch.context() as m:
    m.setattr(jax_array.ArrayImpl, '_value', property(refuse))
    for name in ('item', 'block_until_ready'):
      m.setattr(jax_array.ArrayImpl, name, refuse)
    yield


@pytest.fixture(scope='module')
def ex(data_dir):
  """configs/test.py on four devices."""
  return train.create_experiment(make_config(data_dir), devices=jax.devices()[:4])


def test_train_steps_and_their_metrics_do_not_read_device_values(ex, monkeypatch):
  n = ex.freeze_steps + 3  # Both compiled stages.
  # The first step of each stage compiles it, and compiling reads the constants the step
  # closes over: those steps run outside `_no_host_reads`.
  compiles = {0, ex.freeze_steps}
  batches = ex.train_batches()
  state, collection = ex.state, None
  for step in range(n):
    with contextlib.ExitStack() as checks:
      if step not in compiles:
        checks.enter_context(_no_host_reads(monkeypatch))
      with jax.transfer_guard('disallow'):
        state, step_metrics = ex.train_step(state, next(batches), step)
      names = tuple(sorted(step_metrics))
      update = metrics.make_train_metrics(names).single_from_model_output(**step_metrics)
      collection = update if collection is None else collection.merge(update)
  with _no_host_reads(monkeypatch):
    # The checks are on: the reads a loop would sync with are refused.
    for read in (lambda: float(step_metrics['loss']), lambda: int(state.step)):
      with pytest.raises(HostRead):
        read()
  # The guard is on: a numpy batch handed to the compiled step unplaced is refused.
  with jax.transfer_guard('disallow'), pytest.raises(Exception, match='Disallowed host-to-dev'):
    ex.train_steps[False](state, next(batches))
  assert int(state.step) == n
  summary = jax.device_get(collection.compute())
  assert np.isfinite(summary['loss'])


def test_the_host_batch_is_placed_explicitly_split_over_the_devices(ex):
  """What the step receives: `sharding.to_global` places the batch, row blocks per device."""
  mesh = ex.mesh
  batch = next(ex.train_batches())
  with jax.transfer_guard('disallow'):
    placed = sharding.to_global(batch, sharding.batch_sharded(mesh))
  rows = ex.config.train.batch_size // 4
  for name, array in placed.items():
    assert array.shape == batch[name].shape, name
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start)
    assert [s.device for s in shards] == list(mesh.devices.flat), name
    for i, shard in enumerate(shards):
      np.testing.assert_array_equal(shard.data, batch[name][i * rows : (i + 1) * rows])
