r"""Speed of the real train and eval steps on this machine, and the method's overhead.

  python -m experiments.bench_train --backbone=resnet50 --batch=8 --image_size=224
  python -m experiments.bench_train --backbone=vit_b_16,swin_t,convnext_tiny,resnet50 \
      --batch=8 --image_size=224             # several backbones, one after another
  python -m experiments.bench_train --backbone=resnet50,clip_vit_b_16,clip_vit_l_14 \
      --batch=8 --image_size=224 --variants=full   # the CLIP towers beside ResNet-50
  python -m experiments.bench_train --backbone=resnet50 --batch=8 --image_size=224 \
      --compare_torch
  python -m experiments.bench_train --backbone=resnet50 --batch=8 --image_size=224 --pieces
  python -m experiments.bench_train --backbone=resnet18 --width=0.125 --image_size=112 \
      --batch=32 --steps=10       # the demo's model

Builds `train.train_step` / `evaluators.common.eval_step` exactly as `train.create_experiment`
does (same jit, shardings, donation, class weights, history), but feeds random
uint8 images and labels of the right shape, so no dataset is needed. Two variants
are measured in the same process: the full method (config defaults: attention at
stages 3 and 4, L_w, variance-weighted L_a with an active history) and the primary
network alone (no attention, plain BCE). Printed per variant: compile seconds,
every timed step, the median step time and images/s of the train and eval steps,
the minor page faults and system CPU time per train step, XLA's memory plan of
each step and the peak resident memory of the process; then
the full / primary step-time ratio (the method's overhead). The variants run in
alternating blocks of consecutive steps (see `time_in_blocks`), so load from other
processes falls on both alike.

Every registered backbone can be timed, the CLIP towers (clip_vit_b_16, clip_vit_l_14)
too. With --compare_torch the same architecture
(`tests/torch_reference.py`, NCHW, float32: the ResNets, DenseNets and ViT-B/16; Swin,
ConvNeXt and the CLIP towers have no PyTorch attribute model there and are skipped) is timed in
PyTorch with as many threads as CPUs: train step = forward + BCE on the aggregated
logits + backward + SGD (momentum, weight decay) step; eval = forward under
`torch.inference_mode`. Then the JAX / PyTorch step-time ratios.
"""

import functools
import os
import resource
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from jaxattr import inference, losses, optim, schema, sharding, train
from jaxattr.evaluators import common as evaluation
from jaxattr.models import attention as attention_lib
from jaxattr.models import model as model_lib

_BACKBONE = flags.DEFINE_list(
  'backbone',
  ['resnet50'],
  'Backbones (names of jaxattr.models.registry, comma-separated), timed one after another.',
)
flags.register_validator(
  'backbone',
  lambda names: set(names) <= set(model_lib.BACKBONES),
  f'--backbone takes names of {tuple(model_lib.BACKBONES)}.',
)
_BATCH = flags.DEFINE_integer('batch', 8, 'Global batch size (train and eval).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Square input size.')
_WIDTH = flags.DEFINE_float('width', 1.0, 'Channel multiplier of backbone and heads.')
_STEPS = flags.DEFINE_integer('steps', 6, 'Timed train (and eval) steps per variant.')
_BLOCK = flags.DEFINE_integer(
  'block', 3, 'Consecutive timed steps of one variant before the next takes over.'
)
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 14, 'Attributes (14 = WIDER-Attribute).')
_COMPARE_TORCH = flags.DEFINE_bool('compare_torch', False, 'Also time the PyTorch reference.')
_VARIANTS = flags.DEFINE_list('variants', ['full', 'primary'], 'Subset of: full, primary.')
_PIECES = flags.DEFINE_bool(
  'pieces',
  False,
  'Also time the attention pieces alone (mask branch, classifier, its full-spatial conv '
  'against the same contraction as one matmul), forward and forward+backward.',
)

NUM_TRAIN = 1024  # History rows; only the batch's rows are read and written per step.

# Variant name -> config changes (the full method is the default config).
VARIANTS = {
  'full': {},
  'primary': {'model.attention.levels': (), 'loss.primary': 'bce', 'loss.attention': 'bce'},
}


def peak_rss_mb() -> float:
  """Peak resident memory of this process so far, in MB (Linux reports KB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_config(backbone: str, image_size: int, batch: int, width: float, variant: str):
  """The default (paper) config at the benchmark's size, for one variant."""
  config = schema.defaults()
  config.model.backbone = backbone
  config.model.width = width
  config.data.image_size = image_size
  config.train.batch_size = batch
  config.eval.batch_size = batch
  # History active from the first step, so the step pays for reading and writing it.
  config.history.start_epoch = 0
  config.update_from_flattened_dict(VARIANTS[variant])
  return config


def compiled_mb(compiled) -> float:
  """Memory XLA plans for one call: arguments + outputs (less donated aliases) + temporaries."""
  m = compiled.memory_analysis()
  if m is None:
    return float('nan')
  total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
  return (total + m.temp_size_in_bytes) / 2**20


def random_batch(rng: np.random.Generator, batch: int, size: int, num_classes: int) -> dict:
  """A batch as the input pipeline yields it (uint8 images, int8 labels, int32 indices)."""
  return {
    'image': rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
    'labels': rng.integers(0, 2, (batch, num_classes), dtype=np.int8),
    'index': rng.choice(NUM_TRAIN, batch, replace=False).astype(np.int32),
    'mask': np.ones((batch,), bool),
  }


def time_calls(fn: Callable[[], object], steps: int) -> list[float]:
  """Seconds of each of `steps` calls of `fn` (which must block until its result is ready)."""
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def jit_train_step(config, model, num_classes: int, mesh: jax.sharding.Mesh):
  """`train.train_step` jitted as `train.create_experiment` does (shardings, donation).

  The class weights come from random positive ratios (seed 0); the schedule is 100 steps
  per epoch.

  Returns:
    The jitted `step(state, batch) -> (state, metrics)`.
  """
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  ratios = np.random.default_rng(0).uniform(0.03, 0.6, num_classes)
  w_pos, w_neg = losses.class_weights(ratios, config.loss.class_weights)
  step_fn = functools.partial(
    train.train_step,
    model=model,
    config=config,
    w_pos=jnp.asarray(w_pos, jnp.float32),
    w_neg=jnp.asarray(w_neg, jnp.float32),
    lr_fn=optim.make_lr_fn(config, 100),
    steps_per_epoch=100,
    num_sources=train.num_history_sources(config),
    freeze_backbone=False,
  )
  return jax.jit(
    step_fn,
    in_shardings=(replicated, data_sharding),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )


def build_jax(config, num_classes: int) -> dict:
  """Compiles the jitted train and eval steps of one config on random data.

  Returns:
    `compile_train_s`, `compile_eval_s`, `xla_train_mb` and `xla_eval_mb` (XLA's
    memory plan of one step), and `train` / `eval`: callables that run one step
    and block until its result is ready.
  """
  mesh = sharding.create_mesh()
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  model = model_lib.create_model(config.model, num_classes)
  state = train.create_train_state(config, model, NUM_TRAIN, num_classes, replicated)
  rng = np.random.default_rng(0)
  p_train = jit_train_step(config, model, num_classes, mesh)
  p_eval = jax.jit(
    functools.partial(
      evaluation.eval_step,
      infer_fn=inference.make_infer_fn(model, config.data),
      levels=tuple(config.model.attention.levels),
    ),
    in_shardings=(replicated, data_sharding),
    out_shardings=replicated,
  )
  size, batch = config.data.image_size, config.train.batch_size
  host = random_batch(rng, batch, size, num_classes)
  batch_train = {k: jax.device_put(host[k], data_sharding) for k in ('image', 'labels', 'index')}
  batch_eval = {k: jax.device_put(v, data_sharding) for k, v in host.items()}

  out = {}
  start = time.perf_counter()
  train_compiled = p_train.lower(state, batch_train).compile()
  out['compile_train_s'] = time.perf_counter() - start
  start = time.perf_counter()
  eval_compiled = p_eval.lower(state.variables(), batch_eval).compile()
  out['compile_eval_s'] = time.perf_counter() - start
  out['xla_train_mb'] = compiled_mb(train_compiled)
  out['xla_eval_mb'] = compiled_mb(eval_compiled)
  holder = {'state': state}

  def one_train_step():
    holder['state'], metrics = train_compiled(holder['state'], batch_train)
    jax.block_until_ready((holder['state'], metrics))

  def one_eval_step():
    jax.block_until_ready(eval_compiled(holder['state'].variables(), batch_eval)['probs'])

  out['train'], out['eval'] = one_train_step, one_eval_step
  return out


def time_in_blocks(benches: dict[str, dict], steps: int, block: int) -> None:
  """Times `steps` train then eval steps of every bench, in alternating blocks.

  Each variant runs `block` consecutive timed steps, after one untimed step, before
  the next variant takes over; the rounds repeat until `steps` steps are timed.
  Consecutive steps are what training runs. The untimed step after each switch
  matters on CPU: the first step after the other variant's re-faults XLA's buffers
  (about 0.35 s more at ResNet-50, batch 8), an artefact of the benchmark, not of
  training, that would be charged to whichever variant follows. Alternating blocks
  still spreads the load of other processes on a shared machine over the variants.
  Adds `train_steps`, `eval_steps` (seconds of every timed step), the medians
  `train_s`, `eval_s`, and the process's minor page faults and system CPU seconds
  per timed step (`train_faults`, `train_sys_s`, `eval_faults`, `eval_sys_s`) to
  each bench.
  """
  for kind in ('train', 'eval'):
    for b in benches.values():
      b[f'{kind}_steps'], b[f'{kind}_faults'], b[f'{kind}_sys_s'] = [], 0, 0.0
    while len(next(iter(benches.values()))[f'{kind}_steps']) < steps:
      for b in benches.values():
        n = min(block, steps - len(b[f'{kind}_steps']))
        time_calls(b[kind], 1)  # Untimed: the first step after a switch.
        before = resource.getrusage(resource.RUSAGE_SELF)
        b[f'{kind}_steps'] += time_calls(b[kind], n)
        after = resource.getrusage(resource.RUSAGE_SELF)
        b[f'{kind}_faults'] += after.ru_minflt - before.ru_minflt
        b[f'{kind}_sys_s'] += after.ru_stime - before.ru_stime
    for b in benches.values():
      b[f'{kind}_s'] = statistics.median(b[f'{kind}_steps'])
      b[f'{kind}_faults'] /= steps
      b[f'{kind}_sys_s'] /= steps


def time_pieces(config, num_classes: int, steps: int) -> list[tuple[str, float, float]]:
  """Median seconds (forward, forward+backward) of the attention pieces at each tap.

  The taps' shapes come from the real backbone (`jax.eval_shape`); inputs are random.
  The classifier's last conv has a kernel as large as its input, so it is one
  contraction over (H, W, channels): it is timed both as a VALID convolution (what
  `nn.Conv` would run) and as the reshape + matmul the model runs
  (`attention.FullSpatialConv`), which computes the same numbers.

  Returns:
    (name, forward seconds, forward+backward seconds) per piece.
  """
  m, batch = config.model, config.train.batch_size
  size = config.data.image_size
  backbone = model_lib.create_backbone(m.backbone, m.width)
  taps = jax.eval_shape(
    lambda: backbone.init_with_output(jax.random.key(0), jnp.zeros((batch, size, size, 3)), False)
  )[0]
  mask_ch = model_lib.scale_channels(m.attention.mask_channels, m.width)
  clf_ch = tuple(model_lib.scale_channels(c, m.width) for c in m.attention.classifier_channels)
  rng = np.random.default_rng(0)
  rows = []

  def timed(name, fn, *args):
    forward = jax.jit(fn)
    grad = jax.jit(
      jax.grad(lambda *a: jnp.sum(jnp.square(fn(*a))), argnums=tuple(range(len(args))))
    )
    fwd = statistics.median(
      time_calls(lambda: jax.block_until_ready(forward(*args)), steps + 1)[1:]
    )
    bwd = statistics.median(time_calls(lambda: jax.block_until_ready(grad(*args)), steps + 1)[1:])
    rows.append((name, fwd, bwd))

  def module_fn(module, x):
    variables = module.init(jax.random.key(0), x, train=False)

    def fn(params, x):
      out, _ = module.apply(
        {'params': params, 'batch_stats': variables['batch_stats']},
        x,
        train=True,
        mutable=['batch_stats'],
      )
      return jnp.concatenate([o.reshape(-1) for o in (out if isinstance(out, tuple) else (out,))])

    return fn, variables['params']

  for level, tap in ((3, taps['k1']), (4, taps['k2'])):
    b, h, w, _ = tap.shape
    x = jnp.asarray(rng.normal(size=tap.shape), jnp.float32)
    fn, params = module_fn(attention_lib.AttentionMask(num_classes, mask_ch), x)
    timed(f'stage {level} mask branch on {h}x{w}x{tap.shape[-1]}', fn, params, x)
    u = jnp.asarray(rng.uniform(size=(b, h, w, num_classes)) / (h * w), jnp.float32)
    fn, params = module_fn(attention_lib.AttentionClassifier(num_classes, clf_ch), u)
    timed(f'stage {level} attention classifier', fn, params, u)
    c_in, c_out = clf_ch[1], clf_ch[2]
    y = jnp.asarray(rng.normal(size=(b, h, w, c_in)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(h, w, c_in, c_out)) / np.sqrt(h * w * c_in), jnp.float32)

    def conv(k, y):
      return jax.lax.conv_general_dilated(
        y, k, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
      )

    def matmul(k, y):
      return (y.reshape(y.shape[0], -1) @ k.reshape(-1, k.shape[-1])).reshape(-1, 1, 1, k.shape[-1])

    np.testing.assert_allclose(
      jax.jit(conv)(kernel, y), jax.jit(matmul)(kernel, y), rtol=1e-3, atol=1e-3
    )
    timed(f'stage {level} {h}x{w} full-spatial conv {c_in}->{c_out} as conv', conv, kernel, y)
    timed(f'stage {level} {h}x{w} full-spatial conv {c_in}->{c_out} as matmul', matmul, kernel, y)
  return rows


def build_torch(config, num_classes: int) -> dict:
  """The same architecture in PyTorch (float32, NCHW, all CPU threads).

  Returns:
    `train` / `eval`: callables that run one step (they return when it is done).
  """
  import torch

  from tests import torch_reference

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  size, batch = config.data.image_size, config.train.batch_size
  model = torch_reference.AttributeModelTorch(
    num_classes,
    backbone=config.model.backbone,
    image_size=(size, size),
    width=config.model.width,
    levels=tuple(config.model.attention.levels),
    confidence_weighting=config.model.attention.confidence_weighting,
    mask_channels=config.model.attention.mask_channels,
    classifier_channels=tuple(config.model.attention.classifier_channels),
  )
  opt = torch.optim.SGD(
    model.parameters(),
    lr=config.optimizer.learning_rate,
    momentum=config.optimizer.momentum,
    weight_decay=config.optimizer.weight_decay,
  )
  rng = np.random.default_rng(0)
  # Normalised float input as the JAX step computes it from uint8 (the conversion is in both).
  images_u8 = torch.from_numpy(rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8))
  mean = torch.tensor(config.data.mean).view(1, 3, 1, 1)
  std = torch.tensor(config.data.std).view(1, 3, 1, 1)
  labels = torch.from_numpy(rng.integers(0, 2, (batch, num_classes)).astype(np.float32))

  def one_train_step():
    model.train()
    x = (images_u8.float() / 255.0 - mean) / std
    out = model(x)
    branch_logits = torch.cat([out['primary_logits'][None], out['attention_logits']])
    loss = sum(
      torch.nn.functional.binary_cross_entropy_with_logits(y, labels, reduction='sum') / batch
      for y in branch_logits
    )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  def one_eval_step():
    model.eval()
    with torch.inference_mode():
      x = (images_u8.float() / 255.0 - mean) / std
      torch.sigmoid(model(x)['logits'])

  return {'train': one_train_step, 'eval': one_eval_step}


def _report(name: str, batch: int, r: dict[str, float]) -> None:
  compile_text = ''
  if 'compile_train_s' in r:
    compile_text = (
      f'compile train {r["compile_train_s"]:.1f} s, eval {r["compile_eval_s"]:.1f} s; '
      f'XLA memory plan train {r["xla_train_mb"]:.0f} MB, eval {r["xla_eval_mb"]:.0f} MB; '
    )
  print(
    f'{name}: {compile_text}'
    f'train {r["train_s"]:.3f} s/step = {batch / r["train_s"]:.1f} img/s '
    f'(steps {", ".join(f"{t:.3f}" for t in r["train_steps"])}); '
    f'eval {r["eval_s"]:.3f} s/step = {batch / r["eval_s"]:.1f} img/s '
    f'(steps {", ".join(f"{t:.3f}" for t in r["eval_steps"])}); '
    f'per train step {r["train_faults"] / 1e3:.0f}k minor page faults and '
    f'{r["train_sys_s"]:.2f} s system CPU',
    flush=True,
  )


def bench_backbone(backbone: str) -> None:
  """Times one backbone's variants (and PyTorch's with --compare_torch); prints the results."""
  batch, size, steps = _BATCH.value, _IMAGE_SIZE.value, _STEPS.value
  print(
    f'{backbone} width {_WIDTH.value} at {size}x{size}, batch {batch}, '
    f'{_NUM_CLASSES.value} attributes; {jax.device_count()} {jax.devices()[0].platform} '
    f'device(s), {os.cpu_count()} CPUs; median of {steps} timed steps per variant, in '
    f'alternating blocks of {_BLOCK.value} consecutive steps, each after 1 untimed step.',
    flush=True,
  )
  configs = {v: bench_config(backbone, size, batch, _WIDTH.value, v) for v in _VARIANTS.value}
  jax_benches = {}
  for variant, config in configs.items():
    logging.info('Compiling JAX %s...', variant)
    jax_benches[variant] = build_jax(config, _NUM_CLASSES.value)
  time_in_blocks(jax_benches, steps, _BLOCK.value)
  rss = peak_rss_mb()
  for variant, r in jax_benches.items():
    _report(f'JAX {variant}', batch, r)
  # Cumulative: with several backbones, the largest so far.
  print(f'JAX process peak RSS: {rss:.0f} MB', flush=True)
  if 'full' in jax_benches and 'primary' in jax_benches:
    for kind in ('train', 'eval'):
      ratio = jax_benches['full'][f'{kind}_s'] / jax_benches['primary'][f'{kind}_s']
      print(
        f'full / primary {kind} step time: {ratio:.3f} (method overhead {100 * (ratio - 1):+.1f}%)'
      )
  if _PIECES.value:
    config = bench_config(backbone, size, batch, _WIDTH.value, 'full')
    for name, fwd, both in time_pieces(config, _NUM_CLASSES.value, steps):
      print(f'{name}: forward {1e3 * fwd:.1f} ms, forward+backward {1e3 * both:.1f} ms', flush=True)
  if _COMPARE_TORCH.value:
    from tests import torch_reference

    if backbone not in torch_reference.ARCHS:
      print(f'No PyTorch reference for {backbone} (tests/torch_reference.py).', flush=True)
      return
    torch_benches = {v: build_torch(c, _NUM_CLASSES.value) for v, c in configs.items()}
    time_in_blocks(torch_benches, steps, _BLOCK.value)
    for variant, r in torch_benches.items():
      _report(f'PyTorch {variant}', batch, r)
    print(f'process peak RSS after PyTorch: {peak_rss_mb():.0f} MB', flush=True)
    for variant, r in torch_benches.items():
      for kind in ('train', 'eval'):
        ratio = jax_benches[variant][f'{kind}_s'] / r[f'{kind}_s']
        print(f'JAX / PyTorch {variant} {kind} step time: {ratio:.3f}')


def main(argv):
  del argv
  for backbone in _BACKBONE.value:
    bench_backbone(backbone)


if __name__ == '__main__':
  app.run(main)
