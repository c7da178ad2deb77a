"""Two JAX processes train like one process with the same devices, through a preemption.

Each process is a real `python -m jaxattr.main` with two CPU devices, joined by
JAX's distributed runtime on 127.0.0.1 (gloo collectives on CPU). The reference is
one process with four devices (this test process, see conftest.py) on the same
global batches. The two-process run is preempted once, by a SIGTERM to process 1
only (as when one host of a job is reclaimed), and resumed by relaunching both.

Both runs compute in float64 (conftest.py, FLOAT64): process p holds elements p, p + 2,
... of each global batch, so the two runs sum the batch in different orders, and float64
leaves the comparisons' 1e-5 bounds a margin of 1e6 over that rounding as the steps
amplify it, on any CPU.
"""

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxattr import checkpoints, train
from tests.conftest import (
  FLOAT64,
  REPO,
  free_port,
  main_command,
  make_config,
  tail,
  tool_env,
  tree_allclose,
)

pytestmark = pytest.mark.slow  # Launches processes.

TIMEOUT = 300  # Seconds for one launch of both processes (cold compile, busy machine).
STEPS = 24  # Three epochs of 8 steps, evaluated at 8, 16 and 24.
# lr 1e-3 and the backbone frozen throughout (one compiled train step per process).
OVERRIDES = {
  'optimizer.learning_rate': 1e-3,
  'history.start_epoch': 0,
  'train.freeze_backbone_epochs': 3,
  'train.max_steps': STEPS,
  'train.log_every_steps': 2,
  'eval.attention_grid': True,
  **FLOAT64,
}


def _launch(data_dir: str, workdir: Path, logs: list[Path]) -> list[subprocess.Popen]:
  """Starts processes 0 and 1 of one run, each with two CPU devices, in float64."""
  port = free_port()
  env = tool_env(
    2,
    JAX_ENABLE_X64='1',
    # The coordinator listens on loopback only (JAX's default is every interface).
    JAX_COORDINATOR_BIND_ADDRESS=f'127.0.0.1:{port}',
  )
  flags = [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  procs = []
  for process, log in enumerate(logs):
    cmd = main_command(
      data_dir,
      workdir,
      f'--coordinator_address=127.0.0.1:{port}',
      '--num_processes=2',
      f'--process_id={process}',
      *flags,
    )
    with open(log, 'w') as f:
      procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT))
  return procs


def _wait_all(procs: list[subprocess.Popen], logs: list[Path]) -> list[int | None]:
  """Exit codes; a process still running 30 s after another failed is killed (None)."""
  deadline = time.monotonic() + TIMEOUT
  failed_at = None
  try:
    while time.monotonic() < deadline:
      codes = [p.poll() for p in procs]
      if all(c is not None for c in codes):
        return codes
      if failed_at is None and any(c not in (None, 0) for c in codes):
        failed_at = time.monotonic()  # The others may wait for it in a collective.
      if failed_at is not None and time.monotonic() > failed_at + 30:
        return codes
      time.sleep(0.1)
    pytest.fail('Timed out:\n' + '\n'.join(tail(log) for log in logs))
  finally:
    for p in procs:
      p.kill()
      p.wait()


def _wait_for_step(proc: subprocess.Popen, log: Path, step: int) -> None:
  deadline = time.monotonic() + TIMEOUT
  pattern = re.compile(r'\] \[(\d+)\] .*train/loss')
  while time.monotonic() < deadline:
    if any(int(m[1]) >= step for m in pattern.finditer(log.read_text(errors='replace'))):
      return
    if proc.poll() is not None:
      pytest.fail(f'Exited ({proc.returncode}) before step {step}:\n{tail(log)}')
    time.sleep(0.02)
  pytest.fail(f'No step {step} within {TIMEOUT} s:\n{tail(log)}')


def test_two_processes_train_like_one_and_resume_after_preemption(data_dir, float64, tmp_path):
  workdir = tmp_path / 'run'
  logs = [tmp_path / f'first_{p}.txt' for p in range(2)]
  procs = _launch(data_dir, workdir, logs)
  try:
    _wait_for_step(procs[1], logs[1], 2)
    procs[1].send_signal(signal.SIGTERM)
  finally:
    codes = _wait_all(procs, logs)
  assert codes == [128 + signal.SIGTERM] * 2, '\n'.join(tail(log) for log in logs)
  stops = [int(re.search(r'Stopped at step (\d+) after', log.read_text())[1]) for log in logs]
  assert stops[0] == stops[1] and 2 <= stops[0] < STEPS  # One agreed step.
  ckpt = checkpoints.Checkpointer(workdir)
  assert ckpt.latest_step() == stops[0]
  ckpt.close()
  first_pids = [p.pid for p in procs]

  logs = [tmp_path / f'second_{p}.txt' for p in range(2)]
  procs = _launch(data_dir, workdir, logs)
  assert _wait_all(procs, logs) == [0, 0], '\n'.join(tail(log) for log in logs)
  texts = [log.read_text() for log in logs]
  for text in texts:
    assert f'Restoring latest checkpoint of step {stops[0]} ' in text
    assert 'JAX process' in text and '2 local / 4 global devices' in text

  # The reference: one process, four devices, the same config and global batches.
  config = make_config(data_dir, **OVERRIDES)
  config.eval.attention_grid = False
  reference = tmp_path / 'reference'
  expected = train.train_and_evaluate(config, str(reference), devices=jax.devices()[:4])
  target = train.create_experiment(config, devices=jax.devices()[:4]).state
  two = checkpoints.Checkpointer(workdir).restore(target)
  one = checkpoints.Checkpointer(reference).restore(target)
  assert int(two.step) == int(one.step) == STEPS
  tree_allclose(two.params, one.params)
  tree_allclose(two.batch_stats, one.batch_stats)
  # Momenta hold raw gradients, and the mask-logit biases' are zero up to rounding
  # (the spatial softmax ignores them): the 1e-6 floor covers that noise.
  for x, y in zip(jax.tree.leaves(two.opt_state), jax.tree.leaves(one.opt_state), strict=True):
    y = np.asarray(y)
    scale = float(np.max(np.abs(y))) if y.size else 0.0
    np.testing.assert_allclose(np.asarray(x), y, rtol=1e-5, atol=1e-5 * scale + 1e-6)
  tree_allclose(two.history['probs'], one.history['probs'])
  np.testing.assert_array_equal(two.history['count'], one.history['count'])
  assert int(np.sum(two.history['count'])) == STEPS * config.train.batch_size

  # Evaluation gathered both processes' shards: every example once, same metrics.
  results = json.loads((workdir / 'results.json').read_text())
  for split in ('validation', 'test'):
    assert results[split]['num_examples'] == expected[split]['num_examples'] == 64
    for key in ('map_voc', 'map_sklearn', 'ma', 'f1'):
      assert results[split][key] == pytest.approx(expected[split][key], abs=1e-4), (split, key)
  assert results['best_step'] == expected['best_step']

  # Process 0 alone wrote the logs, results and figure.
  assert 'Results:' in texts[0] and 'Results:' not in texts[1]
  events = list(workdir.glob('events.out.tfevents.*'))
  writers = {int(re.search(r'\.(\d+)\.\d+\.v2$', e.name)[1]) for e in events}
  assert writers == {first_pids[0], procs[0].pid}
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'val/map_voc' in r] == [8, 16, 24]
  assert (workdir / 'attention.png').is_file()
  for name in ('config.json', 'attributes.json', 'results.md'):
    assert (workdir / name).is_file()
