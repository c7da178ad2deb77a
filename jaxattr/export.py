"""Exports a trained run's inference function as one self-contained file.

  python -m jaxattr.export --workdir=runs/demo --output=model.bin
  python -m jaxattr.predict --exported=model.bin person.jpg

The function uint8 images [B, S, S, 3] -> {'probs' [B, C], 'masks' and
'confidences' (one [B, h, w, C] per attention level)} is serialised with
`jax.export` (StableHLO) for the chosen platforms, with a symbolic batch dimension
(any B; `--batch_size` fixes it instead). Normalisation is inside the function; the
caller resizes the crop to S x S (bilinear, antialiased, as the evaluation does).
The parameters are passed to the function, not baked into the program, and stored
beside it.

File layout (little-endian):

  8 bytes   magic b'JAXATTR1'
  8 bytes   n = length of the header; n bytes of JSON: attribute names, image size,
            thresholds, levels, batch size (null = symbolic), platforms, source
  8 bytes   m = length of the program; m bytes of `jax.export` serialisation
  the rest  a NumPy .npz (no pickle) of the parameter leaves p00000, p00001, ...,
            in the order of the program's first argument (a flat list)

`read` needs only numpy and jax; docs/tools.md shows a ten-line loader without jaxattr.
"""

import io
import json
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging

MAGIC = b'JAXATTR1'
FORMAT_VERSION = 1

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program, so the tools can import one another.
  flags.DEFINE_string('workdir', None, 'Workdir of a trained run.')
  flags.DEFINE_string('output', None, 'The file to write (e.g. model.bin).')
  flags.DEFINE_enum('checkpoint', 'auto', ['auto', 'best', 'latest'], 'auto: best, else latest.')
  flags.DEFINE_integer('batch_size', 0, '0: symbolic batch dimension; > 0: this fixed batch size.')
  flags.DEFINE_list('platforms', ['cpu', 'cuda'], 'Platforms to lower for (cpu, cuda, rocm, tpu).')
  flags.DEFINE_bool('tuned_thresholds', True, "Ship the run's tuned thresholds if it has some.")


class ExportError(ValueError):
  """A file that is not a jaxattr export (or of another version)."""


def export_run(
  workdir: str | Path,
  output: str | Path,
  *,
  checkpoint: str = 'auto',
  batch_size: int = 0,
  platforms: Sequence[str] = ('cpu', 'cuda'),
  tuned_thresholds: bool = True,
) -> dict[str, Any]:
  """Writes a run's inference function, parameters and metadata to `output`.

  Args:
    workdir: the run's workdir.
    output: the file to write.
    checkpoint: 'best', 'latest' or 'auto' (best, else latest).
    batch_size: 0 for a symbolic batch dimension, else a fixed batch size.
    platforms: `jax.export` platforms to lower for.
    tuned_thresholds: ship the run's tuned thresholds of that checkpoint if any,
      else `config.eval.threshold`.

  Returns:
    The header written.
  """
  from jaxattr import inference
  from jaxattr.models import model as model_lib
  from jaxattr.run import files, restore

  config = files.load_config(workdir)
  ref = restore.resolve_checkpoint(workdir, checkpoint)
  names, _ = files.load_attributes(workdir)
  variables = restore.restore_variables(workdir, ref)
  thresholds = files.load_thresholds(workdir, names, ref) if tuned_thresholds else None
  if thresholds is None:
    thresholds = np.full(len(names), float(config.eval.threshold))
  model = model_lib.create_model(config.model, len(names))
  infer = inference.make_infer_fn(model, config.data)
  leaves, treedef = jax.tree.flatten(variables)

  def infer_flat(params: list, images: jax.Array) -> dict[str, Any]:
    return infer(jax.tree.unflatten(treedef, params), images)

  size = int(config.data.image_size)
  if batch_size:
    batch = batch_size
  else:
    (batch,) = jax.export.symbolic_shape('b')
  args = (
    [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves],
    jax.ShapeDtypeStruct((batch, size, size, 3), np.uint8),
  )
  exported = jax.export.export(jax.jit(infer_flat), platforms=tuple(platforms))(*args)
  header = {
    'format': 'jaxattr-exported',
    'version': FORMAT_VERSION,
    'attribute_names': list(names),
    'image_size': size,
    'thresholds': [float(t) for t in thresholds],
    'levels': [int(level) for level in config.model.attention.levels],
    'batch_size': int(batch_size) or None,
    'platforms': list(exported.platforms),
    'input': 'uint8 [B, S, S, 3] RGB, the crop resized to S x S (bilinear, antialiased)',
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
  params = io.BytesIO()
  np.savez(params, **{f'p{i:05d}': np.asarray(x) for i, x in enumerate(jax.device_get(leaves))})
  header_bytes = json.dumps(header, indent=1).encode()
  program = bytes(exported.serialize())
  output = Path(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  tmp = output.with_name(output.name + '.tmp')
  with open(tmp, 'wb') as f:
    f.write(MAGIC)
    for part in (header_bytes, program):
      f.write(struct.pack('<Q', len(part)))
      f.write(part)
    f.write(params.getvalue())
  tmp.replace(output)  # A reader never sees half a file.
  return header


def read(path: str | Path) -> tuple[dict[str, Any], jax.export.Exported, list[np.ndarray]]:
  """Reads an exported file.

  Args:
    path: the file.

  Returns:
    (header, the deserialised `jax.export.Exported`, the parameter leaves).

  Raises:
    ExportError: if the file is not a jaxattr export of this version.
    OSError: if it cannot be read.
  """
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
  """An `inference.Predictor` that runs an exported file (no model code involved).

  Args:
    path: the exported file.
    batch_size: the fixed batch size the predictor pads to (ignored when the file
      has a fixed batch size: that one is used).

  Returns:
    The predictor.
  """
  from jaxattr import inference

  header, exported, leaves = read(path)
  return inference.Predictor(
    exported.call,
    leaves,
    names=header['attribute_names'],
    image_size=header['image_size'],
    levels=header['levels'],
    thresholds=np.asarray(header['thresholds']),
    batch_size=header['batch_size'] or batch_size,
    description=f'{path} (exported from {header["source"]["workdir"]}, '
    f'{header["source"]["checkpoint"]} step {header["source"]["step"]})',
  )


def main(argv: Sequence[str]) -> int:
  # A command-line tool: warnings and errors only, unless --verbosity asks for more.
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Before TensorFlow is first imported.
  from jaxattr.run import layout

  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from jaxattr import config_validation  # Every bad flag, one line each; exit code 2.

  config_validation.exit_if_problems(config_validation.export_flags(FLAGS), 'jaxattr.export')
  try:
    header = export_run(
      FLAGS.workdir,
      FLAGS.output,
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
  logging.info('Wrote %s (%d bytes).', FLAGS.output, size)
  print(
    f'Wrote {FLAGS.output}: {len(header["attribute_names"])} attributes, '
    f'{header["image_size"]}x{header["image_size"]} input, batch {batch}, '
    f'platforms {",".join(header["platforms"])}, {size / 1e6:.1f} MB.'
  )
  return 0


if __name__ == '__main__':
  _define_flags()
  app.run(main)
