"""Trains and evaluates a jaxattr model.

  python -m jaxattr.main --config=configs/demo.py --workdir=runs/demo
  python -m jaxattr.main --config=configs/wider.py:resnet50 --workdir=runs/wider \
      --config.data.manual_dir=/data/wider_attribute

Re-running the same command resumes from the latest checkpoint in the workdir.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
config_flags.DEFINE_config_file('config', None, 'Run configuration.', lock_config=True)
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  # TensorFlow only feeds the input pipeline: keep it off the accelerators.
  import tensorflow as tf

  tf.config.set_visible_devices([], 'GPU')

  import jax

  if FLAGS.config.distributed or FLAGS.coordinator_address:
    # Without arguments JAX reads SLURM / TPU-pod / Open MPI environments itself.
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

  train.train_and_evaluate(FLAGS.config, os.path.expanduser(FLAGS.workdir))


if __name__ == '__main__':
  app.run(main)
