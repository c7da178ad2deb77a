"""A run folder is a faithful record: it resumes only the config it records, has one
writer at a time, and names a damaged checkpoint instead of failing in a traceback.

One short run of configs/test.py (8 steps, checkpoints at 4 and 8) is trained in-process
and copied by each test; the command-line behaviour is checked with real `python -m
jaxattr.main` / `jaxattr.evaluate` / `jaxattr.predict` processes (one CPU device).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxattr import checkpoints, evaluate, export, inference, schema, train
from jaxattr.run import layout, lock, resume
from tests.conftest import REPO, main_command, make_config, run_tool, tool_env

TIMEOUT = 600  # Seconds for one subprocess (a cold compile on a busy 2-core machine).
OVERRIDES = {
  'train.batch_size': 16,  # 8 steps per epoch: an evaluation and a best checkpoint at 8.
  'train.max_steps': 8,
  'train.checkpoint_every_steps': 4,
  'train.freeze_backbone_epochs': 3,  # Frozen throughout: one compiled train step.
}


def _config(data_dir: str):
  return make_config(data_dir, **OVERRIDES)


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  train.train_and_evaluate(_config(data_dir), str(workdir), devices=jax.devices()[:1])
  return workdir


def _copy(trained: Path, tmp_path: Path) -> Path:
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  return workdir


def _main(data_dir: str, workdir: Path, *flags: str) -> subprocess.CompletedProcess:
  overrides = [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  cmd = main_command(data_dir, workdir, *overrides, *flags)
  env = tool_env(1)
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _tool(*args: str) -> subprocess.CompletedProcess:
  return run_tool(*args, timeout=TIMEOUT, num_devices=1)


def _corrupt(step_dir: Path) -> Path:
  """Flips one byte in the middle of the step's largest array file (bit rot)."""
  path = max((p for p in step_dir.rglob('d/*') if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))
  return path


_HOLDER = """
import sys, time
from jaxattr.run import lock
lock.WorkdirLock(sys.argv[1]).acquire()
print('locked', flush=True)
time.sleep(600)
"""


def _hold_lock(workdir: Path) -> subprocess.Popen:
  """A process that holds the workdir's lock the way a run does, until killed."""
  proc = subprocess.Popen(
    [sys.executable, '-c', _HOLDER, str(workdir)],
    cwd=REPO,
    env=tool_env(1),
    stdout=subprocess.PIPE,
    text=True,
  )
  assert proc.stdout.readline().strip() == 'locked'
  return proc


def _kill(holder: subprocess.Popen) -> None:
  holder.send_signal(signal.SIGKILL)
  assert holder.wait(timeout=60) == -signal.SIGKILL
  holder.stdout.close()


# --- Resuming -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_rerun_with_another_config_is_refused_listing_the_fields(trained, data_dir, tmp_path):
  workdir = _copy(trained, tmp_path)
  before = {p: (workdir / p).read_bytes() for p in ('config.json', 'config_history.jsonl')}
  proc = _main(
    data_dir, workdir, '--config.optimizer.learning_rate=0.5', '--config.train.max_steps=12'
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'optimizer.learning_rate: 0.05 -> 0.5\n' in proc.stderr
  assert 'train.max_steps: 8 -> 12\n' in proc.stderr
  assert 'Rerun with --allow_config_change' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert {p: (workdir / p).read_bytes() for p in before} == before
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['4', '8']


@pytest.mark.parametrize(
  ('field', 'value', 'reason'),
  [
    ('model.backbone', 'resnet34', "holds this architecture's parameters"),
    ('model.attention.levels', (4,), "holds this architecture's parameters"),
    ('model.depth', 0.5, "holds this architecture's parameters"),
    ('data.image_size', 72, 'full-spatial convolutions are sized for this input'),
    ('data.builder_config', 'small', 'belong to this dataset'),
    ('history.length', 3, 'prediction history has this shape'),
    ('train.batch_size', 32, 'counted in steps of this batch'),
  ],
)
def test_fields_that_fix_the_model_or_data_are_refused_even_when_allowed(
  trained, data_dir, field, value, reason
):
  config = _config(data_dir)
  section, *rest = field.split('.')
  node = config[section]
  for part in rest[:-1]:
    node = node[part]
  node[rest[-1]] = value
  with pytest.raises(resume.ConfigChanged) as error:
    resume.check_resume(trained, config, allow_change=True)
  assert f'  {field}: ' in str(error.value)
  assert '(cannot change in a resumed run: ' in str(error.value)
  assert reason in str(error.value)


def test_a_run_from_before_model_depth_resumes_at_full_depth_only(trained, data_dir, tmp_path):
  workdir = _copy(trained, tmp_path)
  saved = json.loads((workdir / layout.CONFIG).read_text())
  del saved['model']['depth']
  (workdir / layout.CONFIG).write_text(json.dumps(saved))
  config = _config(data_dir)
  # New fields need --allow_config_change as always; depth 1.0 is the depth it ran at.
  assert resume.check_resume(workdir, config, allow_change=True) == {
    'model.depth': (schema.MISSING, 1.0)
  }
  config.model.depth = 0.5
  with pytest.raises(resume.ConfigChanged, match="model.depth: .* holds this architecture's"):
    resume.check_resume(workdir, config, allow_change=True)


def test_the_same_config_resumes_and_a_fresh_folder_takes_any(trained, data_dir, tmp_path):
  assert resume.check_resume(trained, _config(data_dir)) == {}
  assert resume.check_resume(tmp_path, _config(data_dir)) == {}


@pytest.mark.slow
def test_allowed_change_resumes_from_the_newest_readable_checkpoint_after_a_killed_run(
  trained, data_dir, tmp_path
):
  """Also: the lock of a SIGKILLed run is taken over, and a damaged latest checkpoint
  is skipped (and kept) so the change takes effect at the step actually resumed."""
  workdir = _copy(trained, tmp_path)
  original = json.loads((workdir / 'config.json').read_text())
  holder = _hold_lock(workdir)
  _kill(holder)
  _corrupt(workdir / 'checkpoints' / '8')

  proc = _main(
    data_dir,
    workdir,
    '--config.optimizer.learning_rate=0.5',
    '--config.train.max_steps=12',
    '--allow_config_change',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  log = proc.stderr
  assert f'left by a run that ended without releasing it (pid {holder.pid} on host ' in log
  assert 'Skipping the checkpoint of step 8: ' in log
  assert 'does not match its sha256' in log
  assert (workdir / 'damaged' / 'checkpoints-8').is_dir()  # Kept, not deleted.
  assert 'Restoring latest checkpoint of step 4 ' in log
  assert checkpoints.Checkpointer(workdir).latest_step() == 12

  history = resume.load_config_history(workdir)
  assert [e['step'] for e in history] == [0, 4]
  assert history[0]['config'] == original
  assert history[1]['changed'] == {
    'optimizer.learning_rate': [0.05, 0.5],
    'train.max_steps': [8, 12],
  }
  assert json.loads((workdir / 'config.json').read_text())['optimizer']['learning_rate'] == 0.5
  results = json.loads((workdir / 'results.json').read_text())
  assert [c['step'] for c in results['config_changes']] == [4]
  markdown = (workdir / 'results.md').read_text()
  assert 'This run changed its config while training' in markdown
  assert '- from step 4: optimizer.learning_rate 0.05 -> 0.5, train.max_steps 8 -> 12' in markdown
  assert (workdir / layout.LOCK).read_text() == ''  # Released at the end.


# --- One writer -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_on_a_folder_in_use_stops_naming_the_first(trained, data_dir, tmp_path):
  workdir = _copy(trained, tmp_path)
  holder = _hold_lock(workdir)
  try:
    start = time.monotonic()
    proc = _main(data_dir, workdir)
    elapsed = time.monotonic() - start
  finally:
    _kill(holder)
  assert proc.returncode == 2, proc.stderr[-3000:]
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith(f'jaxattr.main: {workdir}: in use by another run (pid {holder.pid} ')
  assert f'on host {socket.gethostname()} since ' in line
  assert elapsed < TIMEOUT
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['4', '8']


def test_tools_read_a_folder_in_use(trained):
  with lock.WorkdirLock(trained):  # As while a run trains in it.
    predictor = inference.Predictor.from_workdir(trained, 'latest')
  assert predictor.description


def test_lock_names_its_holder_and_is_released(tmp_path, caplog):
  held = lock.WorkdirLock(tmp_path)
  assert held.acquire() == {}
  record = json.loads((tmp_path / layout.LOCK).read_text())
  assert (record['pid'], record['host']) == (os.getpid(), socket.gethostname())
  with pytest.raises(lock.RunLocked, match=f'pid {os.getpid()} on host '):
    lock.WorkdirLock(tmp_path).acquire()  # Another open file: the same process is refused.
  held.release()
  held.release()  # Idempotent.
  assert (tmp_path / layout.LOCK).read_text() == ''
  with lock.WorkdirLock(tmp_path):  # Free again, and nothing to take over.
    assert 'Took over' not in caplog.text


@pytest.mark.slow
def test_a_killed_holders_lock_is_taken_over_with_a_log_line(tmp_path, caplog):
  holder = _hold_lock(tmp_path)
  _kill(holder)
  held = lock.WorkdirLock(tmp_path)
  previous = held.acquire()
  held.release()
  assert previous['pid'] == holder.pid
  assert f'Took over the lock of {tmp_path} left by a run' in caplog.text


def test_without_file_locks_the_record_decides(tmp_path, monkeypatch):
  """A file system without flock: a live holder on this host is refused, a dead one not."""

  def no_flock(fd, operation):
    raise OSError(37, 'No locks available')

  monkeypatch.setattr(lock.fcntl, 'flock', no_flock)
  path = tmp_path / layout.LOCK
  path.write_text(json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'since': 'x'}))
  with pytest.raises(lock.RunLocked):
    lock.WorkdirLock(tmp_path).acquire()
  dead = subprocess.Popen([sys.executable, '-c', ''])
  dead.wait()
  path.write_text(json.dumps({'host': socket.gethostname(), 'pid': dead.pid, 'since': 'x'}))
  held = lock.WorkdirLock(tmp_path)
  assert held.acquire()['pid'] == dead.pid
  held.release()


# --- The workdir itself ---------------------------------------------------------------------


def test_a_workdir_that_cannot_be_written_is_named_in_one_line(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(layout.RunError, match=r'/file: cannot be used as the workdir: it is a file'):
    layout.create_workdir(blocker)
  with pytest.raises(layout.RunError, match=f'its parent {blocker} is a file, not a folder'):
    layout.create_workdir(blocker / 'run')
  assert layout.create_workdir(tmp_path / 'a' / 'b').is_dir()


# --- Damaged checkpoints ------------------------------------------------------------------


def _best_dir(workdir: Path) -> Path:
  (step_dir,) = (workdir / 'best').iterdir()
  return step_dir


@pytest.mark.slow
def test_tools_name_a_damaged_checkpoint_in_one_line(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  best = _best_dir(workdir)
  file = _corrupt(best)
  expected = f'{best}: damaged: {file.relative_to(best)} does not match its sha256.'
  for call in (
    lambda: evaluate.evaluate_run(workdir, devices=jax.devices()[:1], write=False),
    lambda: inference.Predictor.from_workdir(workdir, 'best'),
    lambda: export.export_run(workdir, tmp_path / 'model.bin', checkpoint='best'),
  ):
    with pytest.raises(layout.RunError) as error:
      call()
    assert str(error.value) == expected

  for args in (
    ('jaxattr.evaluate', f'--workdir={workdir}'),
    ('jaxattr.predict', f'--workdir={workdir}', '--checkpoint=best', str(tmp_path / 'none.png')),
  ):
    proc = _tool(*args)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith('error:')] == [
      f'error: {expected}'
    ], proc.stderr[-3000:]


def test_damage_orbax_notices_without_checksums_is_named_in_one_line(trained, tmp_path):
  """A run from before the checksums: TensorStore's error, its first line only."""
  workdir = _copy(trained, tmp_path)
  best = _best_dir(workdir)
  (best / layout.CHECKSUMS).unlink()
  # Every data file zeroed: TensorStore cannot decode any chunk. One damaged file would not
  # do: which arrays share a file varies between saves, and that file may hold only arrays
  # that prediction never reads, such as optimizer moments.
  data_files = [p for p in best.rglob('d/*') if p.is_file()]
  assert data_files
  for path in data_files:
    path.write_bytes(bytes(path.stat().st_size))
  with pytest.raises(layout.RunError) as error:
    inference.Predictor.from_workdir(workdir, 'best')
  message = str(error.value)
  assert message.startswith(f'{best}: cannot be read (')
  assert '\n' not in message


def test_restart_stops_in_one_line_when_no_checkpoint_is_readable(trained, data_dir, tmp_path):
  workdir = _copy(trained, tmp_path)
  for step in ('4', '8'):
    _corrupt(workdir / 'checkpoints' / step)
  ckpt = checkpoints.Checkpointer(workdir)
  target = train.create_experiment(_config(data_dir), devices=jax.devices()[:1]).state
  with pytest.raises(checkpoints.CheckpointError, match='Nothing was moved or deleted') as error:
    ckpt.restore_latest(target)
  ckpt.close()
  assert '\n' not in str(error.value)
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['4', '8']
  assert not (workdir / 'damaged').exists()


def test_checksums_cover_every_file_of_a_save(tmp_path):
  state = {'w': np.arange(12, dtype=np.float32).reshape(3, 4)}
  ckpt = checkpoints.Checkpointer(tmp_path)
  ckpt.save(3, state)
  ckpt.wait()
  ckpt.close()
  step_dir = tmp_path / 'checkpoints' / '3'
  sums = json.loads((step_dir / layout.CHECKSUMS).read_text())['sha256']
  files = {str(p.relative_to(step_dir)) for p in step_dir.rglob('*') if p.is_file()}
  assert set(sums) == files - {layout.CHECKSUMS}
  assert checkpoints.verify_checksums(step_dir)
  victim = step_dir / sorted(sums)[0]
  victim.unlink()
  with pytest.raises(
    checkpoints.CheckpointError, match=f'incomplete: {sorted(sums)[0]} is missing'
  ):
    checkpoints.verify_checksums(step_dir)
