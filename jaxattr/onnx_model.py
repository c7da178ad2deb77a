"""The inference function as an ONNX model: conversion (jax2onnx) and running (ONNX Runtime).

`convert` turns `inference.make_infer_fn`'s function, with a run's variables baked in
as initializers, into one ONNX graph: uint8 images [B, S, S, 3] (B dynamic unless
fixed) -> 'probs' [B, C], then 'masks_<level>' and 'confidences_<level>' [B, h, w, C]
per attention level. The header (attribute names, thresholds, image size, levels,
source) is the model's metadata under the key 'jaxattr'.

The function is first traced to a jaxpr (plain JAX primitives), and jax2onnx converts
that. Handing jax2onnx the Flax modules instead makes it swap in its own versions of
`flax.linen` layers while tracing, some of which do not accept how jaxattr calls them
(`nn.max_pool` with a positional window and explicit padding pairs).

jax2onnx writes a max pool over NHWC as a 4-D MaxPool on [1, 1, N, H, W, C] (window
1 x k x k x 1), which ONNX Runtime refuses ('Unsupported pooling size': it pools over
at most 3 dimensions). `_max_pool_over_channels_last` rewrites each such pool as
Transpose -> 2-D MaxPool -> Transpose, the same maxima.

`OnnxPredictor` runs a file with ONNX Runtime and numpy only: importing this module
imports neither JAX nor TensorFlow, so `python -m jaxattr.predict --exported=x.onnx`
starts in well under a second.
"""

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from jaxattr.schema import size_hw

METADATA_KEY = 'jaxattr'
INPUT_NAME = 'images'

K = TypeVar('K')


class OnnxModelError(ValueError):
  """A file that is not a jaxattr ONNX model; the message names the file."""


def output_names(levels: Sequence[int]) -> list[str]:
  """The graph's outputs, in order: 'probs', then masks and confidences per level."""
  return (
    ['probs']
    + [f'masks_{level}' for level in levels]
    + [f'confidences_{level}' for level in levels]
  )


def convert(
  infer_fn: Callable,
  variables: Any,
  *,
  image_size: int | Sequence[int],
  levels: Sequence[int],
  header: dict[str, Any],
  batch_size: int = 0,
):
  """The ONNX model of `infer_fn(variables, images)`, its variables as initializers.

  Args:
    infer_fn: `fn(variables, uint8 [B,H,W,3]) -> {'probs', 'masks', 'confidences'}`
      (`inference.make_infer_fn`).
    variables: its first argument.
    image_size: S (S x S) or (H, W).
    levels: the attention levels (the order of 'masks' and 'confidences').
    header: stored as JSON in the metadata under `METADATA_KEY`.
    batch_size: 0 for a dynamic batch dimension, else this fixed batch size.

  Returns:
    The `onnx.ModelProto`.
  """
  import logging

  import jax
  import onnx

  # jax2onnx logs a warning per optional plugin whose library (Equinox, dm-pix) is absent,
  # and onnx_ir one per shape constant it writes without a type.
  for name in ('jax2onnx.plugins.plugin_system', 'onnx_ir.serde'):
    logging.getLogger(name).setLevel(logging.ERROR)
  from jax2onnx import to_onnx

  def flat(images):
    out = infer_fn(variables, images)
    return [out['probs'], *out['masks'], *out['confidences']]

  batch = batch_size or jax.export.symbolic_shape('batch')[0]
  spec = jax.ShapeDtypeStruct((batch, *size_hw(image_size), 3), np.uint8)
  closed = jax.make_jaxpr(flat)(spec)

  def primitives(images):
    return _evaluate(closed.jaxpr, closed.consts, images)

  model = to_onnx(
    primitives,
    [spec],
    model_name='jaxattr',
    input_names=[INPUT_NAME],
    output_names=output_names(levels),
    return_mode='proto',
  )
  _max_pool_over_channels_last(model.graph)
  onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(header)})
  onnx.checker.check_model(model)
  return model


def _evaluate(jaxpr, consts: Sequence[Any], *args: Any) -> list[Any]:
  """Runs a jaxpr primitive by primitive, inlining `jit` and `custom_jvp_call` bodies.

  A `pad` of a tensor with a dynamic (batch) dimension becomes a concatenation with
  constant blocks: jax2onnx's `pad` needs every dimension of its input to be known.
  """
  from jax.extend import core

  env: dict[Any, Any] = {}

  def read(v):
    return v.val if isinstance(v, core.Literal) else env[v]

  env.update(zip(jaxpr.constvars, consts, strict=True))
  env.update(zip(jaxpr.invars, args, strict=True))
  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name in ('jit', 'pjit'):
      outs = _evaluate(eqn.params['jaxpr'].jaxpr, eqn.params['jaxpr'].consts, *ins)
    elif name == 'custom_jvp_call':  # Inference needs no derivative rule.
      body = eqn.params['call_jaxpr']
      outs = _evaluate(body.jaxpr, body.consts, *ins)
    elif name == 'pad' and not all(isinstance(d, int) for d in eqn.invars[0].aval.shape):
      outs = [_pad_by_concatenation(*ins, eqn.params['padding_config'])]
    else:
      outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
      if not eqn.primitive.multiple_results:
        outs = [outs]
    for v, out in zip(eqn.outvars, outs, strict=True):
      if not isinstance(v, core.DropVar):
        env[v] = out
  return [read(v) for v in jaxpr.outvars]


def _pad_by_concatenation(x, value, padding_config):
  """`lax.pad` with non-negative edge padding and no interior padding, as concatenations."""
  from jax import lax

  for axis, (low, high, interior) in enumerate(padding_config):
    if interior or low < 0 or high < 0:
      raise NotImplementedError(f'pad {padding_config} of a dynamically shaped tensor.')
    parts = []
    for size in (low, None, high):
      if size is None:
        parts.append(x)
      elif size:
        shape = (*x.shape[:axis], int(size), *x.shape[axis + 1 :])
        parts.append(lax.broadcast_in_dim(lax.convert_element_type(value, x.dtype), shape, ()))
    if len(parts) > 1:
      x = lax.concatenate(parts, axis)
  return x


def _max_pool_over_channels_last(graph) -> None:
  """Rewrites Unsqueeze, Unsqueeze, MaxPool (window 1 x ... x 1), Squeeze as 2-D pools.

  jax2onnx pools an NHWC tensor by making it [1, 1, N, H, W, C] and pooling over the
  last four axes with a window of 1 on N and C; this pools over H, W in NCHW instead.
  """
  import onnx

  producer = {out: node for node in graph.node for out in node.output}
  consumers: dict[str, list] = {}
  for node in graph.node:
    for name in node.input:
      consumers.setdefault(name, []).append(node)
  replace: dict[int, list] = {}  # id of the Squeeze -> its replacement nodes
  drop: set[int] = set()
  for pool in graph.node:
    if pool.op_type != 'MaxPool':
      continue
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pool.attribute}
    kernel, rank = list(attrs['kernel_shape']), len(attrs['kernel_shape'])
    strides = list(attrs.get('strides', [1] * rank))
    pads = list(attrs.get('pads', [0] * 2 * rank))
    edges = (0, rank - 1)
    unsq1 = producer.get(pool.input[0])
    unsq0 = producer.get(unsq1.input[0]) if unsq1 is not None else None
    users = consumers.get(pool.output[0], [])
    if (
      rank < 3
      or any(kernel[i] != 1 or strides[i] != 1 or pads[i] or pads[rank + i] for i in edges)
      or any(d != 1 for d in attrs.get('dilations', []))
      or attrs.get('ceil_mode', 0)
      or unsq1 is None
      or unsq0 is None
      or (unsq1.op_type, unsq0.op_type) != ('Unsqueeze', 'Unsqueeze')
      or len(users) != 1
      or users[0].op_type != 'Squeeze'
    ):
      continue
    x, y, n = unsq0.input[0], users[0].output[0], rank
    to_first, to_last = [0, n - 1, *range(1, n - 1)], [0, *range(2, n), 1]
    spatial = slice(1, n - 1)
    make = onnx.helper.make_node
    replace[id(users[0])] = [
      make('Transpose', [x], [f'{y}_nchw_in'], perm=to_first),
      make(
        'MaxPool',
        [f'{y}_nchw_in'],
        [f'{y}_nchw_out'],
        kernel_shape=kernel[spatial],
        strides=strides[spatial],
        pads=pads[spatial] + pads[rank + 1 : 2 * rank - 1],
      ),
      make('Transpose', [f'{y}_nchw_out'], [y], perm=to_last),
    ]
    drop |= {id(unsq1), id(pool)}
    if len(consumers[unsq0.output[0]]) == 1:
      drop.add(id(unsq0))
  if not replace:
    return
  nodes = []
  for node in graph.node:
    if id(node) in replace:
      nodes += replace[id(node)]
    elif id(node) not in drop:
      nodes.append(node)
  del graph.node[:]
  graph.node.extend(nodes)
  used = {name for node in graph.node for name in node.input}
  kept = [init for init in graph.initializer if init.name in used]  # The dropped axes.
  del graph.initializer[:]
  graph.initializer.extend(kept)


class OnnxPredictor:
  """Runs a jaxattr ONNX model with ONNX Runtime (the interface of `inference.Predictor`).

  Attributes:
    names: attribute names, in model order.
    image_size: (height, width) of the uint8 input.
    pad_fill: the uint8 pixel a crop is padded with to the input's aspect before it is
      resized, or None: crops are stretched.
    levels: attention levels, the order of `masks` and `confidences`.
    thresholds: per-attribute decision thresholds [C] (`p > t` is a positive).
    batch_size: the largest batch run at once (the file's, if it fixes one).
    description: where the model comes from (for messages).
  """

  def __init__(self, path: str | Path, batch_size: int = 32, threads: int = 0):
    """Loads a model written by `python -m jaxattr.export --format=onnx`.

    Args:
      path: the .onnx file.
      batch_size: the largest batch run at once (ignored when the file fixes one).
      threads: ONNX Runtime's intra-op threads; 0 = one per core.

    Raises:
      OnnxModelError: if the file is missing, not ONNX, or not from jaxattr.
      ImportError: if onnxruntime is not installed.
    """
    try:
      import onnxruntime as ort
    except ImportError:
      raise ImportError(
        f"{path}: running an ONNX model needs onnxruntime: pip install 'jaxattr[onnx]'."
      ) from None
    if batch_size < 1:
      raise ValueError(f'batch_size must be positive, not {batch_size}.')
    if not Path(path).is_file():
      raise OnnxModelError(f'{path}: no such file.')
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # Errors only: a command-line tool's stderr stays clean.
    try:
      self._session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    except Exception as e:  # noqa: BLE001  (ORT raises its own exception types)
      raise OnnxModelError(f'{path}: not a readable ONNX model ({e}).') from None
    text = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
      raise OnnxModelError(f'{path}: an ONNX model without jaxattr metadata.')
    header = json.loads(text)
    self.header = header
    self.names = list(header['attribute_names'])
    self.image_size = size_hw(header['image_size'])
    fill = header.get('pad_fill')
    self.pad_fill = None if fill is None else tuple(int(v) for v in fill)
    self.levels = tuple(int(level) for level in header['levels'])
    self.thresholds = np.asarray(header['thresholds'], np.float64)
    self.batch_size = int(header['batch_size'] or batch_size)
    self._fixed = bool(header['batch_size'])
    self._outputs = output_names(self.levels)
    source = header['source']
    self.description = (
      f'{path} (ONNX, exported from {source["workdir"]}, '
      f'{source["checkpoint"]} step {source["step"]})'
    )

  def _run(self, images: np.ndarray) -> dict[str, Any]:
    """Outputs for up to `batch_size` images, each tree leaf [n, ...]."""
    n = len(images)
    if images.shape[1:] != (*self.image_size, 3) or images.dtype != np.uint8:
      height, width = self.image_size
      raise ValueError(
        f'images must be uint8 [N,{height},{width},3], got {images.dtype} {images.shape}.'
      )
    if self._fixed and n < self.batch_size:
      images = np.concatenate(
        [images, np.zeros((self.batch_size - n, *images.shape[1:]), np.uint8)]
      )
    out = self._session.run(self._outputs, {INPUT_NAME: images})
    k = len(self.levels)
    return {
      'probs': out[0][:n],
      'masks': tuple(x[:n] for x in out[1 : 1 + k]),
      'confidences': tuple(x[:n] for x in out[1 + k :]),
    }

  def run(self, items: Iterable[tuple[K, np.ndarray]]) -> Iterator[tuple[K, dict[str, Any]]]:
    """Predictions for a stream of (key, image), in order, `batch_size` at a time.

    Args:
      items: (key, uint8 [H,W,3]) pairs.

    Yields:
      (key, {'probs': float32 [C], 'masks': ([h,w,C] per level), 'confidences': (...)}).
    """
    keys: list[K] = []
    images: list[np.ndarray] = []

    def finish():
      out = self._run(np.stack(images))
      for i, key in enumerate(keys):
        yield (
          key,
          {
            'probs': out['probs'][i],
            'masks': tuple(m[i] for m in out['masks']),
            'confidences': tuple(c[i] for c in out['confidences']),
          },
        )

    for key, image in items:
      keys.append(key)
      images.append(np.asarray(image))
      if len(images) == self.batch_size:
        yield from finish()
        keys, images = [], []
    if images:
      yield from finish()

  def __call__(self, images: np.ndarray) -> dict[str, Any]:
    """Predictions for a stack of images uint8 [N,H,W,3] (see `inference.Predictor`)."""
    images = np.asarray(images)
    if not len(images):
      raise ValueError('no images.')
    outs = [
      self._run(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)
    ]
    return {
      'probs': np.concatenate([o['probs'] for o in outs]),
      'masks': tuple(np.concatenate(xs) for xs in zip(*(o['masks'] for o in outs), strict=True)),
      'confidences': tuple(
        np.concatenate(xs) for xs in zip(*(o['confidences'] for o in outs), strict=True)
      ),
    }

  def decisions(self, probs: np.ndarray) -> np.ndarray:
    """`probs > thresholds` (strict, as the metrics), per attribute."""
    return np.asarray(probs) > self.thresholds
