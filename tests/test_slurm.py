"""jaxattr under Slurm: a real one-node cluster, and processes that cannot all meet.

`experiments/slurm_local.sh` starts a one-node Slurm cluster on this machine (installing
Debian's slurm-wlm and munge when missing), runs the 2-task job of
experiments/slurm/train.sbatch with `--config.distributed=True`, has Slurm preempt and requeue
it, and compares its test metrics with a 1-process, 2-device run. Its test here needs root
and either Slurm or apt-get (CI has both); elsewhere it is skipped, saying so.

The others need no Slurm: the processes of a run that cannot all join (a coordinator nobody
serves, one whose other process never comes, a port already taken) must stop within the join
timeout with one line naming the cause (`jaxattr/distributed.py`), not after JAX's 5 minutes
with a C++ abort.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from tests.conftest import REPO, free_port, tool_env

# Installing Slurm, three starts and two trainings: 4 min on 2 idle cores; a bound for a
# busy machine.
SCRIPT_TIMEOUT_S = 1800
JOIN_TIMEOUT_S = 5


def _jaxattr_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith('jaxattr')]


def _join(address: str, index: int) -> subprocess.CompletedProcess:
  """One process of a 2-process run calling `distributed.initialize` alone."""
  code = (
    'from jaxattr import distributed\n'
    f'distributed.initialize({address!r}, 2, {index}, timeout_s={JOIN_TIMEOUT_S})\n'
    'print("joined")\n'
  )
  return subprocess.run(
    [sys.executable, '-c', code], env=tool_env(1), capture_output=True, text=True, timeout=120
  )


def test_a_task_that_cannot_reach_its_coordinator_stops_with_one_line(tmp_path):
  # A Slurm task (the environment srun gives task 1 of 2) whose task 0 never started: JAX
  # derives the coordinator from the job (first node, port 61440 + job id % 4096).
  job_id = 4242
  port = 61440 + job_id % 4096
  slurm = dict(
    SLURM_JOB_ID=str(job_id),
    SLURM_STEP_NODELIST='localhost',
    SLURM_STEP_NUM_NODES='1',
    SLURM_NTASKS='2',
    SLURM_PROCID='1',
    SLURM_LOCALID='1',
  )
  with socket.socket() as s:  # Nothing may serve that port during the test.
    s.bind(('127.0.0.1', port))
    start = time.monotonic()
    proc = subprocess.run(
      [
        sys.executable,
        '-m',
        'jaxattr.main',
        '--config=configs/test.py',
        f'--workdir={tmp_path / "run"}',
        '--config.distributed=True',
        f'--join_timeout_s={JOIN_TIMEOUT_S}',
      ],
      cwd=REPO,
      env=tool_env(1, **slurm),
      capture_output=True,
      text=True,
      timeout=240,
    )
    elapsed = time.monotonic() - start
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert _jaxattr_lines(proc.stderr) == [
    f'jaxattr: process 1 of 2: cannot reach the coordinator at localhost:{port} within '
    f'{JOIN_TIMEOUT_S} s (is process 0 running, and are its address and port right?)'
  ]
  assert 'Check failure stack trace' not in proc.stderr  # Not JAX's abort.
  # Start-up (TensorFlow, JAX) plus the join timeout; JAX alone would wait 300 s.
  assert elapsed < 200
  assert not (tmp_path / 'run').exists()


def test_a_coordinator_whose_other_process_never_comes_stops_with_one_line():
  address = f'127.0.0.1:{free_port()}'
  proc = _join(address, 0)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'joined' not in proc.stdout
  assert _jaxattr_lines(proc.stderr) == [
    f'jaxattr: process 0 of 2: not every process joined the coordinator at {address} within '
    f'{JOIN_TIMEOUT_S} s (did every task start, with the same process count and coordinator?)'
  ]


def test_a_coordinator_whose_port_is_taken_stops_with_one_line():
  with socket.socket(socket.AF_INET6) as s:
    s.bind(('::', 0))
    s.listen()
    port = s.getsockname()[1]
    proc = _join(f'127.0.0.1:{port}', 0)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert _jaxattr_lines(proc.stderr) == [
    f'jaxattr: process 0 of 2: cannot serve the coordinator on [::]:{port}: the port is taken '
    '(another job on this host?); pick another port (under Slurm: JAX_COORDINATOR_PORT).'
  ]


def _slurm_installable() -> bool:
  if os.geteuid() != 0:
    return False
  tools = ('slurmctld', 'slurmd', 'sbatch', 'munged')
  return all(shutil.which(t) for t in tools) or bool(shutil.which('apt-get'))


def _alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie, dead but not yet reaped, does not count)."""
  try:
    stat = Path(f'/proc/{pid}/stat').read_text()
  except OSError:
    return False
  return stat.rsplit(')', 1)[1].split()[0] != 'Z'


@pytest.mark.skipif(
  not _slurm_installable(), reason='needs root and Slurm or apt-get (CI has both)'
)
@pytest.mark.slow
def test_slurm_preempts_and_requeues_a_job_that_ends_like_an_uninterrupted_run():
  env = dict(
    os.environ,
    PYTHON=sys.executable,
    JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
    JAXATTR_SLURM_TIMEOUT_S=str(SCRIPT_TIMEOUT_S // 2),
  )
  start = time.monotonic()
  proc = subprocess.Popen(
    ['bash', str(REPO / 'experiments' / 'slurm_local.sh')],
    cwd='/',
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  try:
    out, _ = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    proc.terminate()  # Its trap cancels the job and stops the daemons (KillWait is 120 s).
    out, _ = proc.communicate(timeout=300)
    pytest.fail(f'slurm_local.sh took over {SCRIPT_TIMEOUT_S} s:\n{out[-6000:]}')
  assert proc.returncode == 0, out[-6000:]
  print(f'slurm_local.sh: {time.monotonic() - start:.0f} s')

  # The preemption and the requeue, in the job's log and in Slurm's record of the job.
  assert 'CANCELLED AT' in out and 'DUE TO PREEMPTION' in out
  assert re.search(r'job \d+ starts \(restart 0\)', out)
  assert re.search(r'job \d+ starts \(restart 1\)', out)
  assert re.search(r'^\s*Requeue=1 Restarts=1 ', out, re.M)
  assert 'urgent job' in out
  # Both tasks checkpointed at one step on SIGTERM, and the requeued job resumed there.
  stops = set(re.findall(r'^([01]): .*Stopped at step (\d+) after', out, re.M))
  assert {task for task, _ in stops} == {'0', '1'} and len({step for _, step in stops}) == 1, out
  step = stops.pop()[1]
  assert re.search(rf'^0: .*Restoring latest checkpoint of step {step} ', out, re.M)

  # The comparison: every headline test metric equal to 1e-5, read from the printed table.
  rows = re.findall(r'^(\w+) +(-?[\d.]+) +(-?[\d.]+)$', out, re.M)
  table = {name: (float(a), float(b)) for name, a, b in rows}
  assert set(table) >= {'map_voc', 'map_sklearn', 'ma', 'f1', 'num_examples'}, out
  for name, (slurm, single) in table.items():
    assert slurm == pytest.approx(single, abs=1e-5), name
  assert table['num_examples'] == (64.0, 64.0)
  assert re.search(r'^OK: \d+ metrics \(test', out, re.M)

  # Nothing of the cluster is left: its daemons, their job steps, the temporary folder.
  started = dict(re.findall(r'started (munged|slurmctld|slurmd) \(pid (\d+)\)', out))
  assert set(started) == {'munged', 'slurmctld', 'slurmd'}
  assert not [name for name, pid in started.items() if _alive(int(pid))]
  folder = re.search(r'temporary folder (\S+)', out)[1]
  assert not Path(folder).exists()
  mark = f'JAXATTR_SLURM_LOCAL={folder}'.encode()
  left = []
  for environ in Path('/proc').glob('[0-9]*/environ'):
    try:
      if mark in environ.read_bytes().split(b'\0') and _alive(int(environ.parent.name)):
        left.append(environ.parent.name)
    except OSError:  # Gone meanwhile.
      continue
  assert not left
