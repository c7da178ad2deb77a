r"""Preemption stress run: repeated SIGTERMs, automatic restarts, the same final state.

  python -m experiments.stress_preemption
  python -m experiments.stress_preemption --steps=500 --interval_s=60 \
      --root=/tmp/jaxattr_stress

Trains `configs/test.py` for `--steps` steps twice with `python -m jaxattr.main`:
once uninterrupted, and once with a SIGTERM sent `--interval_s` seconds (jittered
by +-50%, so signals land at every phase of the loop: steps, evaluations,
checkpoint writes) after each start of the training loop, and the same command
restarted after each preemption (exit code 143; or killed by the signal when it
lands in the final evaluation, after the last checkpoint), as a cluster's requeue
would.
Then it restores both final checkpoints and requires them to be equal bit for
bit (parameters, BatchNorm statistics, optimizer states, history, scheduler, best
metric), and the test metrics of both results.json to match. Prints one line per
preemption and a summary; exits non-zero on any mismatch, an unexpected exit
code, or a run that ended before any signal (lower --interval_s then).

The interval counts from the "Training steps" log line, so every restart makes
progress whatever the start-up time. 500 steps of configs/test.py train in about
a minute on a 2-core CPU, hence the 10 s default.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from jaxattr import checkpoints, schema, train
from jaxattr.run import layout

REPO = Path(__file__).resolve().parents[1]

_ROOT = flags.DEFINE_string('root', '/tmp/jaxattr_stress', 'Work folder (wiped first).')
_STEPS = flags.DEFINE_integer('steps', 500, 'Train steps of each run.')
_INTERVAL = flags.DEFINE_float(
  'interval_s', 10.0, 'Mean seconds of training between a (re)start and its SIGTERM.'
)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the signal timing jitter.')
_MAX_RESTARTS = flags.DEFINE_integer('max_restarts', 100, 'Give up after this many.')


def _command(workdir: Path, data_dir: Path, steps: int) -> list[str]:
  epochs = -(-steps // 8)  # configs/test.py: 128 train examples, batch 16.
  return [
    sys.executable,
    '-m',
    'jaxattr.main',
    '--config=configs/test.py',
    f'--workdir={workdir}',
    f'--config.data.data_dir={data_dir}',
    f'--config.train.num_epochs={epochs}',
    f'--config.train.max_steps={steps}',
  ]


def _env(root: Path) -> dict[str, str]:
  return dict(
    os.environ,
    PYTHONPATH=str(REPO),
    TF_CPP_MIN_LOG_LEVEL='2',
    JAX_PLATFORMS='cpu',
    JAX_COMPILATION_CACHE_DIR=str(root / 'jax_cache'),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.5',
  )


def _stopped_step(log: Path) -> int | None:
  found = re.findall(r'Stopped at step (\d+) after checkpointing', log.read_text(errors='replace'))
  return int(found[-1]) if found else None


def main(argv):
  del argv
  root = Path(_ROOT.value)
  shutil.rmtree(root, ignore_errors=True)
  root.mkdir(parents=True)
  data_dir = root / 'tfds'
  env = _env(root)
  rng = random.Random(_SEED.value)

  start = time.time()
  reference = root / 'reference'
  with open(root / 'reference.log', 'w') as f:
    code = subprocess.run(
      _command(reference, data_dir, _STEPS.value), cwd=REPO, env=env, stdout=f, stderr=f
    ).returncode
  if code != 0:
    raise SystemExit(f'The uninterrupted run failed ({code}); see {root}/reference.log')
  reference_s = time.time() - start
  print(f'uninterrupted: {_STEPS.value} steps in {reference_s:.0f} s', flush=True)

  workdir = root / 'preempted'
  start, stops = time.time(), []
  for attempt in range(_MAX_RESTARTS.value + 1):
    log = root / f'preempted_{attempt}.log'
    with open(log, 'w') as f:
      proc = subprocess.Popen(
        _command(workdir, data_dir, _STEPS.value), cwd=REPO, env=env, stdout=f, stderr=f
      )
    delay = _INTERVAL.value * rng.uniform(0.5, 1.5)
    while proc.poll() is None and 'Training steps' not in log.read_text(errors='replace'):
      time.sleep(0.1)
    try:
      code = proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGTERM)
      code = proc.wait()
    if code == 0:
      if not stops:
        raise SystemExit('The run finished before any SIGTERM: lower --interval_s.')
      break
    if code == -signal.SIGTERM:
      # Outside the loop (the final evaluation) the default action ends the process
      # at once; the last checkpoint is the final one, so the rerun only evaluates.
      stops.append('final evaluation')
    elif code == 128 + signal.SIGTERM:
      stops.append(_stopped_step(log))
    else:
      raise SystemExit(f'Run {attempt} exited with {code}; see {log}')
    print(f'run {attempt}: SIGTERM after {delay:.0f} s -> stopped at {stops[-1]}', flush=True)
  else:
    raise SystemExit(f'Not finished after {_MAX_RESTARTS.value} restarts.')
  preempted_s = time.time() - start

  config = schema.load_recipe('test').get_config()
  config.data.data_dir = str(data_dir)
  target = train.create_experiment(config, devices=jax.devices()[:1]).state
  got = checkpoints.Checkpointer(workdir).restore(target)
  want = checkpoints.Checkpointer(reference).restore(target)
  mismatched = []
  for (path, x), y in zip(
    jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
  ):
    if not np.array_equal(np.asarray(x), np.asarray(y)):
      mismatched.append(jax.tree_util.keystr(path))
  results = [json.loads((d / layout.RESULTS).read_text()) for d in (workdir, reference)]
  same_test = results[0]['test']['map_voc'] == results[1]['test']['map_voc']
  print(
    f'preempted: {len(stops)} SIGTERMs (stopped at {stops}), {_STEPS.value} steps in '
    f'{preempted_s:.0f} s; final step {int(got.step)} vs {int(want.step)}; '
    f'{len(jax.tree.leaves(got)) - len(mismatched)}/{len(jax.tree.leaves(got))} state arrays '
    f'bit-identical; test mAP {results[0]["test"]["map_voc"]:.6f} vs '
    f'{results[1]["test"]["map_voc"]:.6f}',
    flush=True,
  )
  if mismatched or not same_test or int(got.step) != _STEPS.value:
    raise SystemExit(f'MISMATCH: {mismatched[:10]}')
  print('OK: the preempted run ends in the same state as the uninterrupted one.')


if __name__ == '__main__':
  app.run(main)
