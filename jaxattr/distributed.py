"""Joins the processes of a multi-host run: `jax.distributed.initialize`, bounded and explained.

When the processes of a run cannot all meet, JAX (0.10) is slow and unclear about it: a
process whose coordinator is not up, or a coordinator some of whose processes never arrive,
waits `initialization_timeout` (5 min by default) and then aborts the interpreter from C++
(exit 134, a stack trace, and "another task died", which is not what happened); there is no
Python exception to catch. A coordinator whose port is taken raises, but the half-started
service then crashes the interpreter now and then (segmentation fault) before the error is
printed. `initialize` waits at most `timeout_s`, checks the port before JAX binds it, and ends
the process with one line saying which of these it was and exit code 1, like any other error
of `jaxattr.main` (under `srun --kill-on-bad-exit=1` that ends the job's other tasks too).

Every process of a run calls it, before anything else touches JAX; see docs/multihost.md.
"""

import errno
import os
import socket
import sys
import threading
from typing import NoReturn

import jax

EXIT_CODE = 1
# JAX's own deadline comes this much after ours, so the line below is what the user sees.
_JAX_MARGIN_S = 60
_PROBE_TIMEOUT_S = 2.0


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  timeout_s: float = 300.0,
) -> None:
  """Starts JAX's distributed runtime, or ends the process with one line within `timeout_s`.

  Args:
    coordinator_address: host:port of process 0's coordinator; None reads it (and every other
      argument left None) from the cluster's environment (Slurm, Open MPI, Cloud TPU), as
      `jax.distributed.initialize` does.
    num_processes: number of processes of the run, or None.
    process_id: this process's index in [0, num_processes), or None.
    timeout_s: seconds to wait for every process to join the coordinator.

  Raises:
    SystemExit: distributed was asked for, but no cluster environment was found (one line).
      A join that does not complete within `timeout_s` and a taken coordinator port end the
      process at once instead (one line, `EXIT_CODE`): JAX blocks in C++ until its own deadline,
      and a failed start leaves native state that can crash a normal exit.
  """
  address, count, index = _resolve(coordinator_address, num_processes, process_id, timeout_s)
  if address is None or count is None or index is None:
    raise SystemExit(
      'jaxattr: --config.distributed=True found no cluster environment (Slurm, Open MPI, Cloud '
      'TPU) to read the coordinator from; pass --coordinator_address, --num_processes and '
      '--process_id.'
    )
  who = f'process {index} of {count}'
  bind = os.environ.get('JAX_COORDINATOR_BIND_ADDRESS') or f'[::]:{address.rpartition(":")[2]}'
  if index == 0 and _in_use(bind):
    _exit(
      f'{who}: cannot serve the coordinator on {bind}: the port is taken (another job on this '
      'host?); pick another port (under Slurm: JAX_COORDINATOR_PORT).'
    )

  joined = threading.Event()
  watchdog = threading.Thread(
    target=_watch,
    args=(joined, timeout_s, who, address, index),
    name='jaxattr-join-watchdog',
    daemon=True,
  )
  watchdog.start()
  try:
    jax.distributed.initialize(
      coordinator_address=address,
      num_processes=count,
      process_id=index,
      initialization_timeout=int(timeout_s) + _JAX_MARGIN_S,
    )
  finally:
    joined.set()


def _resolve(
  address: str | None, count: int | None, index: int | None, timeout_s: float
) -> tuple[str | None, int | None, int | None]:
  """Fills the arguments left None from the cluster's environment, as JAX would."""
  address = address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if None not in (address, count, index):
    return address, count, index
  # JAX's detection of Slurm, Open MPI and Cloud TPU environments is private; resolving here
  # (once: JAX is then given the values) lets the checks and the messages name them.
  from jax._src import clusters

  address, count, index, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
    address, count, index, None, None, int(timeout_s)
  )
  return address, count, index


def _watch(joined: threading.Event, timeout_s: float, who: str, address: str, index: int):
  """Ends the process with one line unless `joined` is set within `timeout_s`."""
  if joined.wait(timeout_s):
    return
  if index != 0 and not _reachable(address):
    reason = f'cannot reach the coordinator at {address}'
    hint = 'is process 0 running, and are its address and port right?'
  else:
    reason = f'not every process joined the coordinator at {address}'
    hint = 'did every task start, with the same process count and coordinator?'
  _exit(f'{who}: {reason} within {timeout_s:g} s ({hint})')


def _exit(message: str) -> NoReturn:
  """Prints `jaxattr: <message>` and ends the process at once with `EXIT_CODE`.

  Not `SystemExit`: the watchdog runs beside a main thread blocked in C++ (only the process's
  end stops it), and none of JAX's native state needs an orderly teardown here.
  """
  sys.stdout.flush()
  sys.stderr.write(f'jaxattr: {message}\n')
  sys.stderr.flush()
  os._exit(EXIT_CODE)


def _split(address: str) -> tuple[str, int]:
  host, _, port = address.rpartition(':')
  return host.strip('[]'), int(port)


def _in_use(bind: str) -> bool:
  """Whether something already listens on the host:port the coordinator would bind."""
  host, port = _split(bind)
  family = socket.AF_INET6 if ':' in host else socket.AF_INET
  try:
    with socket.socket(family, socket.SOCK_STREAM) as s:
      # As gRPC does: a port left in TIME_WAIT by the previous run (a requeued job reuses
      # its port) is free; only a live listener holds it.
      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      s.bind((host, port))
  except OSError as e:
    return e.errno == errno.EADDRINUSE
  return False


def _reachable(address: str) -> bool:
  """Whether a TCP connection to host:port opens (the coordinator is listening)."""
  try:
    with socket.create_connection(_split(address), timeout=_PROBE_TIMEOUT_S):
      return True
  except (OSError, ValueError):
    return False
