r"""CPU inference speed: jaxattr (jit), its StableHLO export, ONNX Runtime and PyTorch.

  python -m experiments.bench_infer                      # ResNet-50 and ViT-B/16, 224x224
  python -m experiments.bench_infer --backbone=resnet50 --batch=1,32 --steps=5,2

One model per backbone: the paper's heads (configs/default.py: attention at stages 3
and 4, confidence weighting) with 14 attributes, random weights drawn in PyTorch
(`tests/torch_reference.AttributeModelTorch`) and carried to Flax by
`jaxattr.convert.torch_to_flax`, so all four paths compute the same function of the
same weights. Every path takes uint8 [B, 224, 224, 3] images and returns the
probabilities; normalisation is inside each timed call:

  jaxattr      `inference.make_infer_fn` under `jax.jit`, variables on the device
  stablehlo    `export.to_stablehlo` serialised, deserialised and called (jitted)
  onnx         `onnx_model.convert`, run by ONNX Runtime's CPU provider
  pytorch      eager `torch.inference_mode()`, NHWC -> NCHW inside the call

Threads: all cores for each (XLA's and ONNX Runtime's defaults, `torch.set_num_threads
(os.cpu_count())`). Before timing, the four outputs are compared (max |p - p_jaxattr|
is printed). Per batch size the paths run in turns (one untimed call, then the
timed calls of one path, then the next), so load from other processes falls on all
of them; the median call time gives images/s and ms per image. Printed last: each
path's time over PyTorch's, per backbone and batch size.
"""

import os
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from jaxattr import convert, export, inference, onnx_model, schema
from jaxattr.models import model as model_lib

_BACKBONE = flags.DEFINE_list('backbone', ['resnet50', 'vit_b_16'], 'Backbones, in turn.')
_BATCH = flags.DEFINE_list('batch', ['1', '32'], 'Batch sizes.')
_STEPS = flags.DEFINE_list('steps', ['6', '3'], 'Timed calls per path, per batch size.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Square input size.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 14, 'Attributes (14 = WIDER-Attribute).')

PATHS = ('jaxattr', 'stablehlo', 'onnx', 'pytorch')


def build(backbone: str, size: int, num_classes: int) -> dict:
  """The four callables `fn(uint8 [B,S,S,3]) -> probs [B,C]` of one model, and build times."""
  import onnxruntime as ort
  import torch

  from tests import torch_reference

  config = schema.defaults()
  config.model.backbone = backbone
  config.data.image_size = size
  attention = config.model.attention
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  ref = torch_reference.AttributeModelTorch(
    num_classes,
    backbone,
    (size, size),
    levels=attention.levels,
    mask_channels=attention.mask_channels,
    classifier_channels=attention.classifier_channels,
  ).eval()
  model = model_lib.create_model(config.model, num_classes)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32), train=False)
  )
  state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  variables = jax.device_put(convert.torch_to_flax(state, shapes))
  infer = inference.make_infer_fn(model, config.data)
  times = {}

  jitted = jax.jit(infer)

  def run_jaxattr(images):
    return np.asarray(jitted(variables, images)['probs'])

  start = time.perf_counter()
  exported, leaves = export.to_stablehlo(infer, variables, size, 0, ('cpu',))
  exported = jax.export.deserialize(exported.serialize())
  call = jax.jit(exported.call)
  leaves = jax.device_put(leaves)
  times['stablehlo export s'] = time.perf_counter() - start

  def run_stablehlo(images):
    return np.asarray(call(leaves, images)['probs'])

  start = time.perf_counter()
  proto = onnx_model.convert(infer, variables, image_size=size, levels=attention.levels, header={})
  times['onnx convert s'] = time.perf_counter() - start
  start = time.perf_counter()
  session = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
  times['onnx session s'] = time.perf_counter() - start
  del proto

  def run_onnx(images):
    return session.run(['probs'], {onnx_model.INPUT_NAME: images})[0]

  mean = torch.tensor(config.data.mean).view(1, 3, 1, 1) * 255
  std = torch.tensor(config.data.std).view(1, 3, 1, 1) * 255

  def run_pytorch(images):
    with torch.inference_mode():
      x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - mean) / std
      return torch.sigmoid(ref(x)['logits']).numpy()

  fns = dict(zip(PATHS, (run_jaxattr, run_stablehlo, run_onnx, run_pytorch), strict=True))
  return {'fns': fns, 'times': times}


def bench_backbone(backbone: str) -> list[tuple[str, int, str, float]]:
  """Times the four paths of one backbone at every batch size; prints and returns rows."""
  size, num_classes = _IMAGE_SIZE.value, _NUM_CLASSES.value
  start = time.perf_counter()
  built = build(backbone, size, num_classes)
  print(
    f'\n{backbone} at {size}x{size}, {num_classes} attributes, paper heads; built in '
    f'{time.perf_counter() - start:.0f} s ('
    + ', '.join(f'{k} {v:.1f}' for k, v in built['times'].items())
    + ')',
    flush=True,
  )
  rng = np.random.default_rng(0)
  rows = []
  for batch, steps in zip(map(int, _BATCH.value), map(int, _STEPS.value), strict=True):
    images = rng.integers(0, 256, (batch, size, size, 3), np.uint8)
    outputs = {}
    for path, fn in built['fns'].items():
      start = time.perf_counter()
      outputs[path] = fn(images)  # Also the compile / warm-up call.
      first = time.perf_counter() - start
      print(f'  batch {batch} {path}: first call {first:.2f} s', flush=True)
    diffs = {p: float(np.abs(o - outputs['jaxattr']).max()) for p, o in outputs.items()}
    print(f'  batch {batch} max |p - p_jaxattr|: {diffs}', flush=True)
    for path, fn in built['fns'].items():
      fn(images)  # Untimed: the first call after another path's.
      calls = []
      for _ in range(steps):
        start = time.perf_counter()
        fn(images)  # Every path returns a numpy array: the call has finished.
        calls.append(time.perf_counter() - start)
      seconds = statistics.median(calls)
      rows.append((backbone, batch, path, seconds))
      print(
        f'  batch {batch} {path:9s}: {seconds * 1e3:9.1f} ms per call, '
        f'{batch / seconds:7.2f} images/s, {seconds / batch * 1e3:8.1f} ms per image',
        flush=True,
      )
  return rows


def main(argv):
  del argv
  print(f'{os.cpu_count()} CPUs; load average {os.getloadavg()}', flush=True)
  rows = []
  for backbone in _BACKBONE.value:
    rows += bench_backbone(backbone)
  print(f'\nload average {os.getloadavg()}')
  print('\n| backbone | batch | path | ms / call | images/s | ms / image | time / PyTorch |')
  print('|---|---:|---|---:|---:|---:|---:|')
  torch_s = {(b, n): s for b, n, p, s in rows if p == 'pytorch'}
  for backbone, batch, path, seconds in rows:
    print(
      f'| {backbone} | {batch} | {path} | {seconds * 1e3:.1f} | {batch / seconds:.2f} | '
      f'{seconds / batch * 1e3:.1f} | {seconds / torch_s[backbone, batch]:.2f} |'
    )


if __name__ == '__main__':
  app.run(main)
