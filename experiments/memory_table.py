r"""XLA's compiled memory plan of the train step, per backbone, batch, dtype and remat.

  nice -n 5 python -m experiments.memory_table --table_out=experiments/results/memory_table.md
  python -m experiments.memory_table --backbones=clip_vit_l_14 --batches=32 \
      --dtypes=bfloat16 --remats=true --table_out=/tmp/one_row.md

For every combination of --backbones, --batches, --dtypes (compute dtype; parameters
stay float32) and --remats (model.remat off / on), the paper's model (attention at
stages 3 and 4, all losses, the history active: configs/default.py) at --image_size x
--image_size (224; --num_classes attributes, 14) is
traced with abstract shapes only (`jax.eval_shape` of the state's init,
`jax.ShapeDtypeStruct` batches: no parameter is allocated), its train step jitted as
`train.create_experiment` jits it (`bench_train.jit_train_step`) and compiled, and
`compiled.memory_analysis()` read: the arguments (state + batch), the outputs, the
donated bytes they share (aliases) and XLA's temporaries (activations kept for the
backward pass, gradients, workspace). The peak of one step on one device is about
arguments + outputs - aliases + temporaries.

The compile is for this machine's backend, the CPU, as a proxy for a GPU: buffer
sizes follow from the same HLO, but GPU compilers fuse and schedule differently
(and cuDNN asks for workspace), so read the numbers as +-20 % estimates and leave
headroom; the framework's own reserve (XLA's preallocation of 75 % of the GPU by
default) is not in them. Two places where the CPU is no proxy: XLA:CPU schedules
remat's recomputation early, so its plan with remat keeps more, not less (the
`residuals` column and `remat_estimate` give the GPU estimate instead), and it computes
bfloat16 by converting to float32, so its bfloat16 plans are no smaller.

Each row is appended to --table_out as soon as it is compiled, so an interrupted run
leaves the rows it finished; the header records the command, the commit and the machine.
"""

import datetime
import itertools
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments import bench_train
from jaxattr import sharding, train
from jaxattr.models import model as model_lib

_BACKBONE = flags.DEFINE_list(
  'backbones',
  ['resnet50', 'resnet101', 'vit_b_16', 'swin_b', 'clip_vit_b_16', 'clip_vit_l_14'],
  'Backbones (names of jaxattr.models.registry).',
)
_BATCH = flags.DEFINE_list('batches', ['32', '64'], 'Batch sizes (one device).')
_DTYPE = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
_REMAT = flags.DEFINE_list('remats', ['false', 'true'], 'model.remat values.')
# --image_size (224) and --num_classes (14, WIDER-Attribute) are bench_train's flags.
_IMAGE_SIZE = bench_train._IMAGE_SIZE
_NUM_CLASSES = bench_train._NUM_CLASSES
_OUT = flags.DEFINE_string('table_out', None, 'Markdown file the table goes to (rows appended).')
flags.mark_flag_as_required('table_out')

GB = 1e9
GPU_SIZES_GB = (24, 40, 80)
COLUMNS = (
  'backbone',
  'batch',
  'dtype',
  'remat',
  'arguments GB',
  'outputs GB',
  'aliased GB',
  'temporaries GB',
  'peak GB',
  'residuals GB',
  'est. GPU peak GB',
  'fits',
  'compile s',
)


def abstract_inputs(config, model, num_classes: int, mesh: jax.sharding.Mesh):
  """Shapes (with shardings) of the state and one train batch; nothing is allocated."""
  replicated = sharding.replicated(mesh)
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  shapes = jax.eval_shape(train.train_state_init(config, model, bench_train.NUM_TRAIN, num_classes))
  state = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes
  )
  batch, size = config.train.batch_size, config.data.image_size
  batch_shapes = {
    'image': jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8, sharding=data),
    'labels': jax.ShapeDtypeStruct((batch, num_classes), jnp.int8, sharding=data),
    'index': jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=data),
  }
  return state, batch_shapes


def residual_bytes(config, model, state, batch_shapes) -> int:
  """Bytes the forward pass keeps for the backward pass (`jax.vjp`'s residuals), from shapes.

  The activations (and the weights' compute-dtype copies) that live from the forward
  to the backward: what `model.remat` cuts to the blocks' inputs. Traced only, so it
  does not depend on a backend's scheduler.
  """
  del config

  def forward(params, batch_stats, images):
    out, _ = model.apply(
      {'params': params, 'batch_stats': batch_stats},
      images.astype(jnp.float32),
      train=True,
      mutable=['batch_stats'],
    )
    return out['logits']

  def vjp(params, batch_stats, images):
    return jax.vjp(lambda p: forward(p, batch_stats, images), params)[1]

  residuals = jax.eval_shape(vjp, state.params, state.batch_stats, batch_shapes['image'])
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(residuals))


def remat_estimate(
  fixed: float, temp_off: float, residuals_off: float, residuals_on: float
) -> float:
  """The peak of a step with remat on a memory-aware schedule, from the remat-off plan.

  The step holds its arguments and outputs (`fixed`) plus its temporaries, which are at
  least what the forward keeps for the backward (`residuals_on`), and at least the
  remat-off temporaries less what remat stops keeping; the larger of the two lower
  bounds is the estimate. (XLA fuses part of the traced residuals away, so
  `residuals_off` can exceed `temp_off`; the first bound then decides.)

  Args:
    fixed: argument + output - aliased bytes.
    temp_off: XLA's temporaries without remat.
    residuals_off: traced residual bytes without remat.
    residuals_on: traced residual bytes with remat.

  Returns:
    The estimated peak in bytes.
  """
  return fixed + max(residuals_on, temp_off - (residuals_off - residuals_on))


def fits(peak_gb: float) -> str:
  """The GPU sizes (GB) the step's peak fits in, with 10 % left for the runtime."""
  sizes = [f'{g}' for g in GPU_SIZES_GB if peak_gb <= 0.9 * g]
  return ', '.join(sizes) if sizes else 'none'


def measure(
  backbone: str, batch: int, dtype: str, remat: bool, without_remat: dict | None = None
) -> dict[str, object]:
  """Compiles one train step from abstract shapes and reads its memory analysis.

  Args:
    backbone, batch, dtype, remat: the setting.
    without_remat: the row of the same setting with remat off (for the estimate).

  Returns:
    The row; `_peak` and `_residuals` (bytes) for the remat-on row's estimate.
  """
  config = bench_train.bench_config(backbone, _IMAGE_SIZE.value, batch, 1.0, 'full')
  config.model.dtype = dtype
  config.model.remat = remat
  mesh = sharding.create_mesh(jax.devices()[:1])
  model = model_lib.create_model(config.model, _NUM_CLASSES.value)
  state, batch_shapes = abstract_inputs(config, model, _NUM_CLASSES.value, mesh)
  step = bench_train.jit_train_step(config, model, _NUM_CLASSES.value, mesh)
  start = time.perf_counter()
  compiled = step.lower(state, batch_shapes).compile()
  seconds = time.perf_counter() - start
  m = compiled.memory_analysis()
  peak_bytes = (
    m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
  )
  peak = peak_bytes / GB
  residuals = residual_bytes(config, model, state, batch_shapes)
  # XLA:CPU schedules the recomputation early, so its plan with remat saves nothing (it
  # keeps more); a memory-aware GPU schedule frees what remat stops keeping.
  fixed = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
  estimate = peak_bytes
  if remat and without_remat is not None:
    estimate = remat_estimate(fixed, without_remat['_temp'], without_remat['_residuals'], residuals)
  return {
    'backbone': backbone,
    'batch': batch,
    'dtype': dtype,
    'remat': 'on' if remat else 'off',
    'arguments GB': f'{m.argument_size_in_bytes / GB:.2f}',
    'outputs GB': f'{m.output_size_in_bytes / GB:.2f}',
    'aliased GB': f'{m.alias_size_in_bytes / GB:.2f}',
    'temporaries GB': f'{m.temp_size_in_bytes / GB:.2f}',
    'peak GB': f'{peak:.2f}',
    'residuals GB': f'{residuals / GB:.2f}',
    'est. GPU peak GB': f'{estimate / GB:.2f}',
    'fits': fits(estimate / GB),
    'compile s': f'{seconds:.0f}',
    '_temp': m.temp_size_in_bytes,
    '_residuals': residuals,
  }


def _commit() -> str:
  try:
    out = subprocess.run(
      ['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def _header() -> str:
  cpu = platform.processor() or platform.machine()
  started = datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M')
  return '\n'.join(
    [
      '# Train-step memory by backbone (XLA memory analysis, compiled for CPU as a proxy)',
      '',
      f'Command: `{" ".join(["python -m experiments.memory_table", *sys.argv[1:]])}`  ',
      f"XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '')}` (LLVM's level changes compile time, "
      'not the buffer plan)  ',
      f'Commit: {_commit()}; JAX {jax.__version__}; compiled for {jax.devices()[0].platform} '
      f'({cpu}, {os.cpu_count()} CPUs); started {started} UTC.',
      '',
      "The paper's model (attention at stages 3 and 4, all losses, history on), "
      f'{_IMAGE_SIZE.value}x{_IMAGE_SIZE.value}, {_NUM_CLASSES.value} attributes, SGD '
      'state, one device; parameters float32, `dtype` the compute dtype. peak = arguments + '
      'outputs - aliased (donated) + temporaries, as XLA:CPU plans it. residuals: what the '
      'forward keeps for the backward (`jax.vjp` residuals, traced: activations and the '
      "weights' compute-dtype copies). est. GPU peak: the peak, and with remat "
      '`remat_estimate` (arguments + outputs - aliased + the larger of the remat residuals '
      'and the remat-off temporaries less the residuals remat drops): the remat plan of '
      'XLA:CPU saves nothing, it schedules the recomputation early. `fits`: the GPU sizes '
      '(GB) whose 90 % holds the '
      "estimate. A CPU compile is a proxy for a GPU's: read +-20 %.",
      '',
      '| ' + ' | '.join(COLUMNS) + ' |',
      '|' + '---|' * len(COLUMNS),
    ]
  )


def main(argv):
  del argv
  out = Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(_header() + '\n')
  combos = itertools.product(
    [int(b) for b in _BATCH.value],
    _BACKBONE.value,
    _DTYPE.value,
    [r.lower() in ('1', 'true', 'on') for r in _REMAT.value],
  )
  without_remat = None
  for batch, backbone, dtype, remat in combos:
    row = measure(backbone, batch, dtype, remat, without_remat)
    without_remat = None if remat else row
    line = '| ' + ' | '.join(str(row[c]) for c in COLUMNS) + ' |'
    print(line, flush=True)
    with out.open('a') as f:
      f.write(line + '\n')


if __name__ == '__main__':
  app.run(main)
