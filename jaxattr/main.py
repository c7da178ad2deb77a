r"""Trains and evaluates a jaxattr model.

  python -m jaxattr.main --config=configs/demo.py --workdir=runs/demo
  python -m jaxattr.main --config=configs/wider.py:resnet50 --workdir=runs/wider \
      --config.data.manual_dir=/data/wider_attribute

Before any work the config is checked (`schema.validate`): every problem is
printed on one line and the run stops with exit code 2, leaving the workdir
untouched. Pretrained weights (`model.pretrained`) are then fetched, checked and
converted (`pretrained.resolve`), also before the workdir is touched: a failure
stops with one line and exit code 2 as well. Then the run takes the workdir's lock
(one writer per folder; a second run on the folder stops naming the first) and
compares its config with the one the folder records:

  * no run there yet: a fresh start;
  * the same config: it resumes from the newest readable checkpoint;
  * another config: it stops, listing the fields that differ (old -> new), unless
    `--allow_config_change`; then the change and the step it takes effect at go to
    config_history.jsonl and results.md says so. Fields a resumed run cannot change
    (architecture, dataset and split, image size, history length, ...) are refused
    even with the flag, with the reason.

Several processes (one per host, or per GPU; see docs/multihost.md): either name
the coordinator explicitly,

  python -m jaxattr.main ... --coordinator_address=10.0.0.1:1234 \
      --num_processes=4 --process_id=$RANK

or pass `--config.distributed=True` alone and let `jax.distributed.initialize()`
read the cluster's environment (SLURM, Open MPI, Cloud TPU pods, GKE).

Multi-process runs: process 0 alone takes the lock and compares the configs (the
workdir is on a file system all hosts share) and tells the others its verdict; the
others wait for it in that collective, so either all start or all stop.

Exit codes: 0 = finished (results written); 143 / 130 = stopped by SIGTERM /
SIGINT after checkpointing (run the same command again to resume); 2 = refused to
start, nothing trained (an invalid config, weights that cannot be fetched or fail
their checksum, a changed config, a workdir in use by another run or not writable);
1 = error (a data error or a damaged checkpoint prints one line naming the file).
"""

import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from jaxattr.run import layout

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
config_flags.DEFINE_config_file('config', None, 'Run configuration.', lock_config=True)
flags.DEFINE_string(
  'coordinator_address', None, 'Multi-host: host:port of process 0 (implies distributed).'
)
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
flags.DEFINE_integer(
  'join_timeout_s',
  300,
  'Multi-host: seconds to wait for every process to join the coordinator; then exit 1 with '
  'one line saying why.',
)
flags.DEFINE_bool(
  'orbax_logs',
  False,
  "Keep Orbax's INFO lines (about 20 per checkpoint save); its warnings and errors are "
  'always shown.',
)
flags.DEFINE_bool(
  'allow_config_change',
  False,
  f"Resume although the config differs from the workdir's {layout.CONFIG} (the change is "
  f'recorded in {layout.CONFIG_HISTORY}); fields that fix the model or the data still refuse.',
)
flags.mark_flags_as_required(['config', 'workdir'])

REFUSED = 2  # Exit code of a run that refuses to start (see the module docstring).


def _claim_workdir(workdir: Path, config, allow_change: bool):
  """Process 0: creates and locks the workdir, checks the config against it.

  Returns:
    (the held lock or None, the problem text or '' when the run may go on).
  """
  from jaxattr.run import lock, resume

  held = None
  try:
    layout.create_workdir(workdir)
    held = lock.WorkdirLock(workdir)
    held.acquire()
    changes = resume.check_resume(workdir, config, allow_change)
  except layout.RunError as e:
    if held is not None:
      held.release()
    return None, str(e)
  if changes:
    logging.warning(
      'Starting with a config that differs from %s in: %s', layout.CONFIG, list(changes)
    )
  return held, ''


def _resolve_weights_or_refuse(config) -> None:
  """Fetches, checks and converts `model.pretrained` before the workdir is touched.

  Every process does it (each host has its own cache; processes on one host take
  turns). A wrong spec, a failed download or a checksum mismatch refuses the run like
  an invalid config: one line, exit code 2, nothing written to the workdir. The
  training loop's own `pretrained.resolve` then finds the converted weights cached.
  """
  if not config.model.pretrained:
    return
  from jaxattr import pretrained

  model = config.model
  try:
    pretrained.resolve(model.pretrained, model.backbone, model.width, model.depth)
  except pretrained.PretrainedError as e:
    sys.stderr.write(f'jaxattr.main: {e}\n')
    sys.stderr.flush()
    raise SystemExit(REFUSED) from e


def main(argv):
  del argv
  # TensorFlow only feeds the input pipeline: keep it off the accelerators.
  import tensorflow as tf

  tf.config.set_visible_devices([], 'GPU')

  if not FLAGS.orbax_logs:
    from jaxattr.run import logs

    logs.quiet_orbax_logs()

  import jax

  if FLAGS.config.distributed or FLAGS.coordinator_address:
    from jaxattr import distributed

    # Flags left unset (None) are read from the cluster's environment by JAX.
    distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
      timeout_s=FLAGS.join_timeout_s,
    )
  logging.info(
    'JAX process %d of %d, %d local / %d global devices (%s).',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  from jaxattr import config_validation, schema

  # Every process checks (they hold the same config), before the workdir is touched.
  problems = schema.validate(FLAGS.config, num_devices=jax.device_count())
  config_validation.exit_if_problems(problems, 'jaxattr.main')
  _resolve_weights_or_refuse(FLAGS.config)

  workdir = Path(os.path.expanduser(FLAGS.workdir))
  held, refusal = None, ''
  if jax.process_index() == 0:
    held, refusal = _claim_workdir(workdir, FLAGS.config, FLAGS.allow_config_change)
  if jax.process_count() > 1:  # The others wait here for process 0's verdict.
    import numpy as np
    from jax.experimental import multihost_utils

    refused = bool(multihost_utils.broadcast_one_to_all(np.int32(bool(refusal))))
    if refused and not refusal:
      refusal = 'process 0 refused to start (its log says why).'
  if refusal:
    sys.stderr.write(f'jaxattr.main: {refusal}\n')
    sys.stderr.flush()
    raise SystemExit(REFUSED)

  from jaxattr import checkpoints, train
  from jaxattr.data.common import DataError

  try:
    train.train_and_evaluate(FLAGS.config, str(workdir))
  except (DataError, checkpoints.CheckpointError) as e:
    # The message names the data or checkpoint at fault; a traceback adds nothing.
    logging.error('Stopped: %s', e)
    raise SystemExit(f'jaxattr.main: process {jax.process_index()}: {e}') from e
  finally:
    if held is not None:
      held.release()


if __name__ == '__main__':
  app.run(main)
