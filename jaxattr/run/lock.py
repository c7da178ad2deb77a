"""The workdir's lock (`run.lock`): one run writes a run folder at a time."""

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from absl import logging

from jaxattr.run import layout


class RunLocked(layout.RunError):
  """Another live run holds the workdir's lock."""


def _holder_text(holder: dict[str, Any]) -> str:
  return (
    f'pid {holder.get("pid", "?")} on host {holder.get("host", "?")} since '
    f'{holder.get("since", "?")}'
  )


class WorkdirLock:
  """The lock that makes a run the only writer of its workdir.

  `workdir/run.lock` is locked with `fcntl.flock` and holds a JSON record of the
  holder (host, pid, start time, command). The kernel releases a flock when its
  process dies, however it dies, so the lock itself is never stale: a record left
  behind by a killed run (SIGKILL, power loss) sits in an unlocked file, and the
  next run takes it over with a log line naming the dead holder. A clean release
  empties the record. The file is never deleted: unlinking a locked file would let
  a later run lock a new file of the same name while another still holds the old.

  On a file system without flock (some Lustre mounts, old NFS), the record alone
  decides: a holder on this host whose pid is gone is stale; a holder elsewhere is
  trusted until its record is removed by hand (the error message says so).

  Only process 0 of a multi-process run takes the lock (see `jaxattr.main`); the
  tools that only read (`evaluate`, `predict`, `export`) never do.
  """

  def __init__(self, workdir: str | Path):
    self.path = Path(workdir) / layout.LOCK
    self._fd: int | None = None

  def _record(self, fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 1 << 16)
    try:
      record = json.loads(data) if data.strip() else {}
    except ValueError:
      record = {'unreadable': data[:80].decode(errors='replace')}
    return record if isinstance(record, dict) else {}

  def acquire(self) -> dict[str, Any]:
    """Takes the lock.

    Returns:
      The record of a previous holder that died without releasing it ({} if none).

    Raises:
      RunLocked: another live run holds it (the message names it).
      layout.RunError: the lock file cannot be written.
    """
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise layout.RunError(f'{self.path}: cannot create the lock file: {e.strerror}.') from e
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        raise self._locked(self._record(fd)) from None
      except OSError as e:  # No flock on this file system: the record decides.
        logging.warning('%s: no file locks here (%s); relying on the holder record.', self.path, e)
        previous = self._record(fd)
        if previous.get('pid') and _alive(previous):
          raise self._locked(previous) from None
      else:
        previous = self._record(fd)
      record = {
        'host': socket.gethostname(),
        'pid': os.getpid(),
        'since': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
        'command': ' '.join(sys.argv),
      }
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(record) + '\n').encode(), 0)
      os.fsync(fd)
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd
    if previous.get('pid'):
      logging.warning(
        'Took over the lock of %s left by a run that ended without releasing it (%s); '
        'its process is gone.',
        self.path.parent,
        _holder_text(previous),
      )
    return previous

  def _locked(self, holder: dict[str, Any]) -> RunLocked:
    return RunLocked(
      f'{self.path.parent}: in use by another run ({_holder_text(holder)}); wait for it to '
      f'end or use another --workdir. If that run is certainly gone, delete {self.path}.'
    )

  def release(self) -> None:
    """Empties the record and releases the lock (idempotent)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
      pass  # Closing releases the lock anyway.
    finally:
      os.close(fd)

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _alive(holder: dict[str, Any]) -> bool:
  """Whether a lock holder may still run (unknowable for another host: assumed yes)."""
  if holder.get('host') != socket.gethostname():
    return True
  try:
    os.kill(int(holder['pid']), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError, TypeError):
    return True
  return True
