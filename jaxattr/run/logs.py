"""Logging of a run: the full log in the workdir, a quiet console, the metrics writer."""

import contextlib
import logging as std_logging
import os
from pathlib import Path

import jax
from absl import logging

from jaxattr import metrics
from jaxattr.run import layout


class DropLibraryInfo(std_logging.Filter):
  """Drops log records below WARNING that come from inside the given packages."""

  def __init__(self, packages: tuple[str, ...]):
    super().__init__()
    self._parts = tuple(f'{os.sep}{p}{os.sep}' for p in packages)

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
      p in record.pathname for p in self._parts
    )


def quiet_orbax_logs() -> None:
  """Hides Orbax's INFO lines (about 20 per save) from absl's log; keeps its warnings."""
  logging.get_absl_handler().addFilter(DropLibraryInfo(('orbax',)))


# Libraries whose INFO lines go to the log file only (TFDS writes four per evaluation).
QUIET_LIBRARIES = ('tensorflow_datasets', 'tensorflow', 'jax', 'orbax')


@contextlib.contextmanager
def logging_to(workdir: str | Path):
  """While active: every log line also goes to `layout.log_path`; the console shows the run.

  The console (absl's handler) drops the INFO lines of `QUIET_LIBRARIES`, so it
  shows progress, metrics and checkpoints; their warnings and errors still show.

  Args:
    workdir: the run's workdir.

  Yields:
    Nothing; the handlers are removed on exit.
  """
  console = logging.get_absl_handler()
  to_file = std_logging.FileHandler(layout.log_path(workdir, jax.process_index()))
  to_file.setFormatter(logging.PythonFormatter())
  quiet = DropLibraryInfo(QUIET_LIBRARIES)
  std_logging.getLogger().addHandler(to_file)
  console.addFilter(quiet)
  try:
    yield
  finally:
    console.removeFilter(quiet)
    std_logging.getLogger().removeHandler(to_file)
    to_file.close()


class MetricsWriter:
  """The training loop's scalars: clu's writer (TensorBoard + log) and `metrics.jsonl`.

  Process 0 writes both; the others only log.
  """

  def __init__(self, workdir: str | Path):
    from clu import metric_writers  # Imports TensorFlow: only the loop writes.

    self.is_main = jax.process_index() == 0
    self.clu = metric_writers.create_default_writer(str(workdir), just_logging=not self.is_main)
    self.jsonl = open(layout.metrics_path(workdir), 'a') if self.is_main else None  # noqa: SIM115

  def scalars(self, step: int, scalars: dict[str, float]) -> None:
    """Writes `scalars` of `step` to both."""
    scalars = {k: float(v) for k, v in scalars.items()}
    self.clu.write_scalars(step, scalars)
    if self.jsonl:
      self.jsonl.write(metrics.to_json({'step': step, **scalars}) + '\n')
      self.jsonl.flush()

  def close(self) -> None:
    """Flushes and closes both."""
    self.clu.close()
    if self.jsonl:
      self.jsonl.close()
