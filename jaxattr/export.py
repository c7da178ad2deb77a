"""Exports a trained run's inference function as one self-contained file.

  python -m jaxattr.export --workdir=runs/demo --output=model.bin
  python -m jaxattr.predict --exported=model.bin person.jpg
  python -m jaxattr.export --workdir=runs/demo --format=onnx --output=model.onnx
  python -m jaxattr.predict --exported=model.onnx person.jpg

The function uint8 images [B, S, S, 3] -> {'probs' [B, C], 'masks' and
'confidences' (one [B, h, w, C] per attention level)} is exported with a dynamic
batch dimension (any B; `--batch_size` fixes it instead). Normalisation is inside
the function; the caller resizes the crop to S x S (bilinear, antialiased, as the
evaluation does).

--format=stablehlo (the default): `jax.export` (StableHLO) for the chosen platforms;
the parameters are passed to the function, not baked into the program, and stored
beside it. File layout (little-endian):

  8 bytes   magic b'JAXATTR1'
  8 bytes   n = length of the header; n bytes of JSON: attribute names, image size,
            thresholds, levels, batch size (null = symbolic), platforms, source
  8 bytes   m = length of the program; m bytes of `jax.export` serialisation
  the rest  a NumPy .npz (no pickle) of the parameter leaves p00000, p00001, ...,
            in the order of the program's first argument (a flat list)

`read` needs only numpy and jax; docs/tools.md shows a ten-line loader without jaxattr.

--format=onnx: an ONNX model (`jaxattr.onnx_model`) with the parameters as
initializers, the outputs 'probs', 'masks_<level>', 'confidences_<level>', and the
same header as JSON in its metadata under 'jaxattr'. ONNX Runtime runs it; so does
`jaxattr.predict` without JAX or TensorFlow."""

import io
import json
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags, logging

from jaxattr import schema

MAGIC = b'JAXATTR1'
FORMAT_VERSION = 1
FORMATS = ('stablehlo', 'onnx')
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program, so the tools can import one another.
  flags.DEFINE_string('workdir', None, 'Workdir of a trained run.')
  flags.DEFINE_string('output', None, 'The file to write (e.g. model.bin).')
  flags.DEFINE_enum('checkpoint', 'auto', ['auto', 'best', 'latest'], 'auto: best, else latest.')
  flags.DEFINE_integer('batch_size', 0, '0: symbolic batch dimension; > 0: this fixed batch size.')
  flags.DEFINE_enum('format', 'stablehlo', FORMATS, 'stablehlo (jax.export) or onnx.')
  flags.DEFINE_list(
    'platforms', ['cpu', 'cuda'], 'StableHLO: platforms to lower for (cpu, cuda, rocm, tpu).'
  )
  flags.DEFINE_bool('tuned_thresholds', True, "Ship the run's tuned thresholds if it has some.")


class ExportError(ValueError):
  """A file that is not a jaxattr export (or of another version)."""


def export_run(
  workdir: str | Path,
  output: str | Path,
  *,
  format: str = 'stablehlo',  # noqa: A002  (the flag's name)
  checkpoint: str = 'auto',
  batch_size: int = 0,
  platforms: Sequence[str] = ('cpu', 'cuda'),
  tuned_thresholds: bool = True,
) -> dict[str, Any]:
  """Writes a run's inference function, parameters and metadata to `output`.

  Args:
    workdir: the run's workdir.
    output: the file to write.
    format: 'stablehlo' (`jax.export`) or 'onnx'.
    checkpoint: 'best', 'latest' or 'auto' (best, else latest).
    batch_size: 0 for a dynamic batch dimension, else a fixed batch size.
    platforms: `jax.export` platforms to lower for (StableHLO only).
    tuned_thresholds: ship the run's tuned thresholds of that checkpoint if any,
      else `config.eval.threshold`.

  Returns:
    The header written.
  """
  import jax

  from jaxattr import inference
  from jaxattr.models import model as model_lib
  from jaxattr.run import files, restore

  if format not in FORMATS:
    raise ValueError(f'format must be one of {", ".join(FORMATS)}, not {format!r}.')
  config = files.load_config(workdir)
  ref = restore.resolve_checkpoint(workdir, checkpoint)
  names, _ = files.load_attributes(workdir)
  variables = restore.restore_variables(workdir, ref)
  thresholds = files.load_thresholds(workdir, names, ref) if tuned_thresholds else None
  if thresholds is None:
    thresholds = np.full(len(names), float(config.eval.threshold))
  model = model_lib.create_model(config.model, len(names))
  infer = inference.make_infer_fn(model, config.data)
  hw = schema.image_hw(config.data)
  fill = schema.pad_fill(config.data)
  levels = [int(level) for level in config.model.attention.levels]
  header = {
    'format': 'jaxattr-exported',
    'version': FORMAT_VERSION,
    'attribute_names': list(names),
    # S for a square input (as before non-square input existed), else [H, W].
    'image_size': hw[0] if hw[0] == hw[1] else list(hw),
    # The pixel a crop is padded with to H:W before the resize; None: stretched.
    'pad_fill': None if fill is None else list(fill),
    'thresholds': [float(t) for t in thresholds],
    'levels': levels,
    'batch_size': int(batch_size) or None,
    'input': (
      f'uint8 [B, {hw[0]}, {hw[1]}, 3] RGB, the crop '
      + ('padded with pad_fill to that aspect, then ' if fill else '')
      + f'resized to {hw[0]} x {hw[1]} (bilinear, antialiased)'
    ),
    'outputs': {
      'probs': 'float32 [B, C], sigmoid of the aggregated logits',
      'masks': 'per level float32 [B, h, w, C], spatial softmax a',
      'confidences': 'per level float32 [B, h, w, C], confidence s',
    },
    'source': {
      'workdir': str(Path(workdir).absolute()),
      'checkpoint': ref.which,
      'step': ref.step,
      'backbone': config.model.backbone,
      'width': float(config.model.width),
      'depth': float(config.model.get('depth', 1.0)),
    },
  }
  if format == 'onnx':
    from jaxattr import onnx_model

    proto = onnx_model.convert(
      infer, variables, image_size=hw, levels=levels, header=header, batch_size=batch_size
    )
    _write_atomically(output, [proto.SerializeToString()])
    return header

  exported, leaves = to_stablehlo(infer, variables, hw, batch_size, platforms)
  header['platforms'] = list(exported.platforms)
  params = io.BytesIO()
  np.savez(params, **{f'p{i:05d}': np.asarray(x) for i, x in enumerate(jax.device_get(leaves))})
  header_bytes = json.dumps(header, indent=1).encode()
  program = bytes(exported.serialize())
  parts = [MAGIC]
  for part in (header_bytes, program):
    parts += [struct.pack('<Q', len(part)), part]
  _write_atomically(output, [*parts, params.getvalue()])
  return header


def to_stablehlo(
  infer: Any,
  variables: Any,
  image_size: int | Sequence[int],
  batch_size: int,
  platforms: Sequence[str],
) -> tuple[Any, list]:
  """`jax.export` of `infer(variables, images)` with the variables as a flat first argument.

  Args:
    infer: `inference.make_infer_fn`'s function.
    variables: its first argument.
    image_size: S (S x S) or (H, W) of the uint8 [B, H, W, 3] input.
    batch_size: 0 for a symbolic batch dimension, else this fixed one.
    platforms: `jax.export` platforms to lower for.

  Returns:
    (the `jax.export.Exported`, the variables' leaves: its first argument).
  """
  import jax

  leaves, treedef = jax.tree.flatten(variables)

  def infer_flat(params: list, images: jax.Array) -> dict[str, Any]:
    return infer(jax.tree.unflatten(treedef, params), images)

  if batch_size:
    batch = batch_size
  else:
    (batch,) = jax.export.symbolic_shape('b')
  args = (
    [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves],
    jax.ShapeDtypeStruct((batch, *schema.size_hw(image_size), 3), np.uint8),
  )
  return jax.export.export(jax.jit(infer_flat), platforms=tuple(platforms))(*args), leaves


def _write_atomically(output: str | Path, parts: Sequence[bytes]) -> None:
  output = Path(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  tmp = output.with_name(output.name + '.tmp')
  with open(tmp, 'wb') as f:
    for part in parts:
      f.write(part)
  tmp.replace(output)  # A reader never sees half a file.


def is_stablehlo_file(path: str | Path) -> bool:
  """Whether a file starts as a StableHLO export does (else it is taken to be ONNX)."""
  try:
    with open(path, 'rb') as f:
      return f.read(len(MAGIC)) == MAGIC
  except OSError:
    return False


def read(path: str | Path) -> tuple[dict[str, Any], Any, list[np.ndarray]]:
  """Reads an exported file.

  Args:
    path: the file.

  Returns:
    (header, the deserialised `jax.export.Exported`, the parameter leaves).

  Raises:
    ExportError: if the file is not a jaxattr export of this version.
    OSError: if it cannot be read.
  """
  import jax

  try:
    data = Path(path).read_bytes()
  except FileNotFoundError:
    raise ExportError(f'{path}: no such file.') from None
  if data[:8] != MAGIC:
    raise ExportError(f'{path}: not a jaxattr exported model (bad magic).')
  try:
    offset = 8
    parts = []
    for _ in range(2):
      (n,) = struct.unpack_from('<Q', data, offset)
      parts.append(data[offset + 8 : offset + 8 + n])
      offset += 8 + n
    header = json.loads(parts[0])
    with np.load(io.BytesIO(data[offset:]), allow_pickle=False) as npz:
      leaves = [npz[k] for k in sorted(npz.files)]
  except (struct.error, ValueError, OSError) as e:
    raise ExportError(f'{path}: truncated or corrupt jaxattr export ({e}).') from None
  if header.get('version') != FORMAT_VERSION:
    raise ExportError(f'{path}: format version {header.get("version")}, need {FORMAT_VERSION}.')
  return header, jax.export.deserialize(bytearray(parts[1])), leaves


def load(path: str | Path, batch_size: int = 32):
  """A predictor that runs an exported file (no model code involved).

  A file that does not start with `MAGIC` and is named *.onnx is an ONNX model, run by
  `onnx_model.OnnxPredictor` (ONNX Runtime; JAX is not imported).

  Args:
    path: the exported file.
    batch_size: the batch size the predictor runs at once (ignored when the file
      has a fixed batch size: that one is used).

  Returns:
    An `inference.Predictor` (StableHLO) or an `onnx_model.OnnxPredictor`.
  """
  if Path(path).suffix.lower() == '.onnx' and not is_stablehlo_file(path):
    from jaxattr import onnx_model

    return onnx_model.OnnxPredictor(path, batch_size=batch_size)
  from jaxattr import inference

  header, exported, leaves = read(path)
  return inference.Predictor(
    exported.call,
    leaves,
    names=header['attribute_names'],
    image_size=schema.size_hw(header['image_size']),
    pad_fill=header.get('pad_fill'),
    levels=header['levels'],
    thresholds=np.asarray(header['thresholds']),
    batch_size=header['batch_size'] or batch_size,
    description=f'{path} (exported from {header["source"]["workdir"]}, '
    f'{header["source"]["checkpoint"]} step {header["source"]["step"]})',
  )


def export_flags(flags: Any) -> list[str]:
  """Problems of the flags (--workdir, --output, --batch_size, --platforms), one line each."""
  from jaxattr import config_validation

  problems = [config_validation.run_folder('--workdir', flags.workdir)]
  if not flags.output:
    problems.append('--output: required')
  else:
    output = Path(flags.output).expanduser()
    if output.is_dir():
      problems.append(f'--output: {flags.output} is a folder; give a file name')
    elif not output.parent.is_dir():
      problems.append(f'--output: no such folder: {output.parent}')
  problems.append(config_validation.check_int('--batch_size', flags.batch_size, 0))
  unknown = [p for p in flags.platforms or () if p not in PLATFORMS]
  if unknown or not flags.platforms:
    problems.append(
      f'--platforms: each must be one of {", ".join(PLATFORMS)}; got '
      f'{",".join(flags.platforms or ()) or "nothing"}'
    )
  return [p for p in problems if p]


def main(argv: Sequence[str]) -> int:
  # A command-line tool: warnings and errors only, unless --verbosity asks for more.
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Before TensorFlow is first imported.
  from jaxattr.run import layout

  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from jaxattr import config_validation  # Every bad flag, one line each; exit code 2.

  config_validation.exit_if_problems(export_flags(FLAGS), 'jaxattr.export')
  try:
    header = export_run(
      FLAGS.workdir,
      FLAGS.output,
      format=FLAGS.format,
      checkpoint=FLAGS.checkpoint,
      batch_size=FLAGS.batch_size,
      platforms=FLAGS.platforms,
      tuned_thresholds=FLAGS.tuned_thresholds,
    )
  except layout.RunError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  size = Path(FLAGS.output).stat().st_size
  batch = header['batch_size'] or 'any'
  target = 'ONNX' if FLAGS.format == 'onnx' else 'platforms ' + ','.join(header['platforms'])
  logging.info('Wrote %s (%d bytes).', FLAGS.output, size)
  print(
    f'Wrote {FLAGS.output}: {len(header["attribute_names"])} attributes, '
    f'{"x".join(map(str, schema.size_hw(header["image_size"])))} input, batch {batch}, '
    f'{target}, {size / 1e6:.1f} MB.'
  )
  return 0


if __name__ == '__main__':
  _define_flags()
  app.run(main)
