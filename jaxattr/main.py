"""Trains and evaluates a jaxattr model.

  python -m jaxattr.main --config=configs/demo.py --workdir=runs/demo
  python -m jaxattr.main --config=configs/wider.py:resnet50 --workdir=runs/wider \
      --config.data.manual_dir=/data/wider_attribute

Re-running the same command resumes from the latest checkpoint in the workdir.

Several processes (one per host, or per GPU; see docs/multihost.md): either name
the coordinator explicitly,

  python -m jaxattr.main ... --coordinator_address=10.0.0.1:1234 \
      --num_processes=4 --process_id=$RANK

or pass `--config.distributed=True` alone and let `jax.distributed.initialize()`
read the cluster's environment (SLURM, Open MPI, Cloud TPU pods, GKE).

Exit codes: 0 = finished (results written); 143 / 130 = stopped by SIGTERM /
SIGINT after checkpointing (run the same command again to resume); 1 = error
(a data error prints one line naming the file or image).
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
config_flags.DEFINE_config_file('config', None, 'Run configuration.', lock_config=True)
flags.DEFINE_string(
  'coordinator_address', None, 'Multi-host: host:port of process 0 (implies distributed).'
)
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
flags.DEFINE_bool(
  'orbax_logs',
  False,
  "Keep Orbax's INFO lines (about 20 per checkpoint save); its warnings and errors are "
  'always shown.',
)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  # TensorFlow only feeds the input pipeline: keep it off the accelerators.
  import tensorflow as tf

  tf.config.set_visible_devices([], 'GPU')

  if not FLAGS.orbax_logs:
    from jaxattr import checkpoints

    checkpoints.quiet_orbax_logs()

  import jax

  if FLAGS.config.distributed or FLAGS.coordinator_address:
    # Flags left unset (None) are read from the cluster's environment by JAX.
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
    )
  logging.info(
    'JAX process %d of %d, %d local / %d global devices (%s).',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  from jaxattr import train
  from jaxattr.data.common import DataError

  try:
    train.train_and_evaluate(FLAGS.config, os.path.expanduser(FLAGS.workdir))
  except DataError as e:  # The message names the data at fault; a traceback adds nothing.
    logging.error('Stopped: %s', e)
    raise SystemExit(f'jaxattr.main: process {jax.process_index()}: {e}') from e


if __name__ == '__main__':
  app.run(main)
