"""Faults during training: preemption, a kill during a checkpoint save, corrupt images.

Runs that are interrupted are real `python -m jaxattr.main` processes (one CPU
device) sharing the tests' compilation cache; the expected final state is that of
an uninterrupted run of the same command, which the deterministic pipeline makes
bit-for-bit reproducible. Corrupt images are written into a copy of the tiny
synthetic dataset's TFRecord file by hand, after the build (the builders reject
bad images at build time).
"""

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf

from jaxattr import checkpoints, train
from jaxattr.data import common, input_pipeline
from tests.conftest import REPO, main_command, make_config, tail, tool_env

TIMEOUT = 300  # Seconds for one subprocess run (a cold compile on a busy 2-core machine).

# configs/test.py with 16 steps per epoch, the backbone frozen throughout (one
# compiled train step), evaluations at steps 16 and 32, and a log line every 2 steps.
TOTAL_STEPS = 40
FAULT_FLAGS = (
  '--config.train.batch_size=8',
  '--config.train.freeze_backbone_epochs=3',
  f'--config.train.max_steps={TOTAL_STEPS}',
  '--config.train.log_every_steps=2',
)
STEPS_PER_EPOCH = 128 // 8


# `data_dir`: the tiny synthetic dataset, the session fixture of conftest.py.


def _command(data_dir: str, workdir: Path, *flags: str, script: Path | None = None) -> list[str]:
  return main_command(data_dir, workdir, *FAULT_FLAGS, *flags, script=script)


def _start(cmd: list[str], log: Path, **env: str) -> subprocess.Popen:
  with open(log, 'w') as f:
    env = tool_env(1, **env)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)


def _run(cmd: list[str], log: Path) -> int:
  proc = _start(cmd, log)
  try:
    return proc.wait(timeout=TIMEOUT)
  finally:
    proc.kill()
    proc.wait()


def _wait_for(proc: subprocess.Popen, log: Path, pattern: str, accept=lambda m: True):
  """Polls the log until a line matches `pattern` (and `accept`); the process must live."""
  deadline = time.monotonic() + TIMEOUT
  while time.monotonic() < deadline:
    for match in re.finditer(pattern, log.read_text(errors='replace'), re.M):
      if accept(match):
        return match
    if proc.poll() is not None:
      pytest.fail(f'Exited ({proc.returncode}) before {pattern!r}:\n{tail(log)}')
    time.sleep(0.02)
  proc.kill()
  pytest.fail(f'No {pattern!r} within {TIMEOUT} s:\n{tail(log)}')


def _config(data_dir: str):
  return make_config(
    data_dir,
    **{'train.batch_size': 8, 'train.freeze_backbone_epochs': 3, 'train.max_steps': TOTAL_STEPS},
  )


@pytest.fixture(scope='module')
def target(data_dir):
  """A fresh one-device train state: the structure checkpoints are restored into."""
  return train.create_experiment(_config(data_dir), devices=jax.devices()[:1]).state


@pytest.fixture(scope='module')
def reference(data_dir, tmp_path_factory, target) -> Path:
  """An uninterrupted run of the command the fault tests interrupt."""
  workdir = tmp_path_factory.mktemp('reference') / 'run'
  log = workdir.parent / 'log.txt'
  assert _run(_command(data_dir, workdir), log) == 0, tail(log)
  assert checkpoints.Checkpointer(workdir).latest_step() == TOTAL_STEPS
  return workdir


def _assert_same_final_state(workdir: Path, reference: Path, target) -> None:
  """The final checkpoints are equal, leaf for leaf and bit for bit."""
  got = checkpoints.Checkpointer(workdir).restore(target)
  want = checkpoints.Checkpointer(reference).restore(target)
  assert int(got.step) == int(want.step) == TOTAL_STEPS
  for (path, x), y in zip(
    jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
  got_results = json.loads((workdir / 'results.json').read_text())
  want_results = json.loads((reference / 'results.json').read_text())
  assert got_results['test']['map_voc'] == want_results['test']['map_voc']
  assert got_results['best_step'] == want_results['best_step']


# jaxattr.main with two test-only hooks, set through the environment:
# STEP_DELAY_S sleeps after every train step (so a signal sent when the log shows
# step k lands long before the run ends, however busy the machine), and
# BLOCK_SAVE_OF_STEP blocks Orbax's commit of that step's save (the rename of its
# temporary directory) after announcing it, so the process can be killed while
# that save is in progress. Neither changes a number the run computes.
_DRIVER = """
import asyncio
import os
import sys
import time

from orbax.checkpoint._src.path import atomicity

from jaxattr import train

_finalize = atomicity.AtomicRenameTemporaryPath.finalize
_train_step = train.Experiment.train_step


async def finalize(self):
  final = self.get_final()
  if final.parent.name == 'checkpoints' and final.name == os.environ.get('BLOCK_SAVE_OF_STEP'):
    print(f'SAVE IN PROGRESS {self.get()}', file=sys.stderr, flush=True)
    while True:
      await asyncio.sleep(60)
  return await _finalize(self)


def train_step(self, state, batch, step):
  out = _train_step(self, state, batch, step)
  time.sleep(float(os.environ.get('STEP_DELAY_S', '0')))
  return out


atomicity.AtomicRenameTemporaryPath.finalize = finalize
train.Experiment.train_step = train_step

from absl import app  # noqa: E402

from jaxattr import main  # noqa: E402

app.run(main.main)
"""


@pytest.fixture(scope='module')
def driver(tmp_path_factory) -> Path:
  path = tmp_path_factory.mktemp('driver') / 'driver.py'
  path.write_text(_DRIVER)
  return path


# --- Preemption -------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_checkpoints_at_the_step_and_resumes_exactly(
  data_dir, tmp_path, reference, target, driver
):
  workdir, log = tmp_path / 'run', tmp_path / 'first.txt'
  # No periodic checkpoints: the only ones are at epoch ends (16, 32) and the one
  # the signal asks for.
  flags = ('--config.train.checkpoint_every_steps=1000',)
  proc = _start(_command(data_dir, workdir, *flags, script=driver), log, STEP_DELAY_S='0.05')
  try:
    _wait_for(proc, log, r'\] \[(\d+)\] .*train/loss', lambda m: int(m[1]) >= 4)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=TIMEOUT)
  finally:
    proc.kill()
    proc.wait()
  text = log.read_text()
  assert code == 128 + signal.SIGTERM, tail(log)
  stopped = int(re.search(r'Stopped at step (\d+) after checkpointing', text)[1])
  assert 4 <= stopped < TOTAL_STEPS
  ckpt = checkpoints.Checkpointer(workdir)
  assert ckpt.latest_step() == stopped  # Saved at the step where the signal landed.
  assert not (workdir / 'results.json').exists()
  ckpt.close()

  log2 = tmp_path / 'second.txt'
  assert _run(_command(data_dir, workdir, *flags), log2) == 0, tail(log2)
  assert f'Restoring latest checkpoint of step {stopped} ' in log2.read_text()
  _assert_same_final_state(workdir, reference, target)


# --- Killed during a save ------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_during_save_resumes_from_previous_complete_checkpoint(
  data_dir, tmp_path, reference, target, driver
):
  workdir, log = tmp_path / 'run', tmp_path / 'first.txt'
  flags = ('--config.train.checkpoint_every_steps=4', '--config.train.keep_checkpoints=2')
  cmd = _command(data_dir, workdir, *flags, script=driver)
  proc = _start(cmd, log, BLOCK_SAVE_OF_STEP='24')
  try:
    match = _wait_for(proc, log, r'^SAVE IN PROGRESS (\S+)$')
    partial = Path(match[1])
    assert partial.name == '24.orbax-checkpoint-tmp' and partial.is_dir()
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
  finally:
    proc.kill()
    proc.wait()
  assert partial.is_dir()  # The save really was cut short.
  ckpt = checkpoints.Checkpointer(workdir)
  # The latest complete one is 20; 16, which the commit of 24 would have deleted, is kept.
  assert ckpt.latest_step() == 20 and 16 in ckpt.latest.all_steps()
  ckpt.close()

  log2 = tmp_path / 'second.txt'
  assert _run(_command(data_dir, workdir, *flags), log2) == 0, tail(log2)
  assert 'Restoring latest checkpoint of step 20 ' in log2.read_text()
  assert not list((workdir / 'checkpoints').glob('*.orbax-checkpoint-tmp*'))
  _assert_same_final_state(workdir, reference, target)


def test_unfinished_save_is_ignored_and_cleaned_up(tmp_path):
  """A temporary directory as Orbax leaves it (newer step, partial) is never restored."""
  state = {'w': np.arange(6, dtype=np.float32).reshape(2, 3), 'step': np.asarray(7, np.int32)}
  ckpt = checkpoints.Checkpointer(tmp_path)
  ckpt.save(7, state)
  ckpt.wait()
  ckpt.close()
  complete = tmp_path / 'checkpoints' / '7'
  partial = tmp_path / 'checkpoints' / '9.orbax-checkpoint-tmp'
  shutil.copytree(complete, partial)
  (partial / 'commit_success.txt').unlink(missing_ok=True)
  for f in sorted(p for p in partial.rglob('*') if p.is_file())[::2]:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # Half-written files.

  reader = checkpoints.Checkpointer(tmp_path)  # A tool: leaves the directory alone.
  assert reader.latest_step() == 7
  restored = reader.restore({'w': np.zeros((2, 3), np.float32), 'step': np.asarray(0, np.int32)})
  np.testing.assert_array_equal(restored['w'], state['w'])
  reader.close()
  assert partial.is_dir()

  trainer = checkpoints.Checkpointer(tmp_path, cleanup_tmp=True)
  assert trainer.latest_step() == 7
  trainer.wait()
  trainer.close()
  deadline = time.monotonic() + 30  # Orbax deletes it in the background.
  while partial.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not partial.exists()
  assert complete.is_dir()


# --- Corrupt images -----------------------------------------------------------------


def _corrupt(data_dir: str, dest: Path, split: str, damage: dict[int, str]) -> str:
  """Copies the dataset and rewrites the images of `damage` ({index: 'garbage'|'truncated'})."""
  shutil.copytree(data_dir, dest, dirs_exist_ok=True)
  (path,) = dest.glob(f'synthetic_attributes/tiny/*/*-{split}.tfrecord-*')
  examples = [
    tf.train.Example.FromString(r) for r in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()
  ]
  done = set()
  for ex in examples:
    index = ex.features.feature['index'].int64_list.value[0]
    if index in damage:
      image = ex.features.feature['image'].bytes_list
      encoded = image.value[0]
      assert encoded[:2] == b'\xff\xd8'  # A JPEG.
      image.value[0] = encoded[: len(encoded) // 2] if damage[index] == 'truncated' else b'junk'
      done.add(index)
  assert done == set(damage)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for ex in examples:
      writer.write(ex.SerializeToString())
  return str(dest)


def _image_id(index: int, split: str = 'train') -> str:
  return f'{split}_{index:07d}'  # How the synthetic builder names its examples.


@pytest.fixture(scope='module')
def clean_stream(data_dir):
  """Indices of the first two epochs of the clean train stream (global batch 16)."""
  config = make_config(data_dir)
  builder = input_pipeline.get_builder(config.data)
  batches = input_pipeline.train_batches(builder, config.data, global_batch=16, seed=0)
  return [next(batches)['index'] for _ in range(16)]


@pytest.fixture(scope='module')
def bad_train(data_dir, clean_stream, tmp_path_factory):
  """Two corrupt train images met at steps 1 and 2: (data_dir, {index: kind})."""
  damage = {int(clean_stream[1][3]): 'garbage', int(clean_stream[2][10]): 'truncated'}
  return _corrupt(data_dir, tmp_path_factory.mktemp('bad'), 'train', damage), damage


def _stream(data_dir: str, mode: str, **kwargs):
  config = make_config(data_dir, **{'data.on_bad_image': mode})
  builder = input_pipeline.get_builder(config.data)
  return input_pipeline.train_batches(builder, config.data, global_batch=16, seed=0, **kwargs)


def test_skip_names_each_image_once_and_keeps_epochs_aligned(bad_train, clean_stream, caplog):
  data_dir, damage = bad_train
  spe = 128 // 16
  batches = _stream(data_dir, 'skip')
  with caplog.at_level('WARNING'):
    got = [next(batches)['index'] for _ in range(2 * spe)]
  warned = [r.getMessage() for r in caplog.records if 'corrupt image' in r.getMessage()]
  assert len(warned) == 2  # Each once, although epoch 1 reads them again (filtered out).
  for index in damage:
    assert any(f"'{_image_id(index)}' (index {index})" in w for w in warned), warned
  # Epoch 0: the clean order without the bad images, then the epoch's first
  # examples again in their place; batch shapes and epoch boundaries unchanged.
  clean0 = np.concatenate(clean_stream[:spe])
  kept = [i for i in clean0 if i not in damage]
  np.testing.assert_array_equal(np.concatenate(got[:spe]), kept + list(clean0[: len(damage)]))
  np.testing.assert_array_equal(got[0], clean_stream[0])  # Before the first bad image.
  # Epoch 1 is the clean epoch 1 without them, refilled the same way.
  clean1 = np.concatenate(clean_stream[spe:])
  kept1 = [i for i in clean1 if i not in damage]
  np.testing.assert_array_equal(np.concatenate(got[spe:]), kept1 + list(clean1[: len(damage)]))
  assert all(len(b) == 16 for b in got)


def test_fail_stops_at_the_batch_and_names_the_image(bad_train, clean_stream):
  data_dir, damage = bad_train
  first = next(i for i, kind in damage.items() if i in clean_stream[1])
  batches = _stream(data_dir, 'fail')
  np.testing.assert_array_equal(next(batches)['index'], clean_stream[0])
  with pytest.raises(common.DataError) as error:
    next(batches)
  message = str(error.value)
  assert f"'{_image_id(first)}' (index {first}" in message
  assert "split 'train'" in message and 'on_bad_image=skip' in message
  assert 'Unknown image file format' in message  # TF's own reason ('junk' bytes).


def test_two_process_streams_each_name_their_own_image(bad_train):
  """The bad images fall in different processes' shards: each process names its own."""
  data_dir, damage = bad_train
  named = {}
  for process in (0, 1):
    batches = _stream(data_dir, 'fail', process_index=process, process_count=2)
    with pytest.raises(common.DataError) as error:
      for _ in range(8):
        next(batches)
    named[process] = [i for i in damage if f"'{_image_id(i)}' (index {i}" in str(error.value)]
    skipping = _stream(data_dir, 'skip', process_index=process, process_count=2)
    seen = np.concatenate([next(skipping)['index'] for _ in range(8)])  # One epoch.
    assert len(seen) == 64 and not set(damage) & set(seen.tolist())
  # Element j of the global batch is read by process j % 2 (garbage at position 3,
  # the truncated JPEG at position 10).
  assert named == {
    1: [i for i, k in damage.items() if k == 'garbage'],
    0: [i for i, k in damage.items() if k == 'truncated'],
  }


def test_training_skips_corrupt_images_and_evaluates_the_rest(
  bad_train, clean_stream, tmp_path, caplog
):
  data_dir, damage = bad_train
  bad_val = 5
  data_dir = _corrupt(data_dir, tmp_path / 'tfds', 'validation', {bad_val: 'garbage'})
  # Epoch 0 and its evaluation (frozen stage: one compile).
  config = make_config(data_dir, **{'data.on_bad_image': 'skip', 'train.max_steps': 8})
  with caplog.at_level('WARNING'):
    results = train.train_and_evaluate(config, str(tmp_path / 'run'), devices=jax.devices()[:1])
  assert results['steps'] == 8
  assert results['validation']['num_examples'] == 63
  assert results['test']['num_examples'] == 64
  text = '\n'.join(r.getMessage() for r in caplog.records)
  for index in damage:
    assert f"'{_image_id(index)}' (index {index})" in text
  assert f"'{_image_id(bad_val, 'validation')}' (index {bad_val}) of split 'validation'" in text


@pytest.mark.slow
def test_cli_fails_with_one_line_naming_the_image(bad_train, tmp_path):
  data_dir, damage = bad_train
  log = tmp_path / 'log.txt'
  assert _run(main_command(data_dir, tmp_path / 'run'), log) == 1
  text = log.read_text()
  last = text.strip().splitlines()[-1]
  first = next(i for i, kind in damage.items() if kind == 'garbage')
  assert last.startswith("jaxattr.main: process 0: Corrupt image in split 'train'"), last
  assert f"'{_image_id(first)}' (index {first}" in last
  assert 'Traceback' not in text
