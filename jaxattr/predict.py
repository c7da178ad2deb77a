r"""Predicts the attributes of person images with a trained run or an exported model.

  python -m jaxattr.predict --workdir=runs/demo person.jpg
  python -m jaxattr.predict --workdir=runs/demo photos/ --json > predictions.jsonl
  python -m jaxattr.predict --workdir=runs/demo street.jpg --box=120,40,80,200 \
      --attention=street_attention.png
  python -m jaxattr.predict --exported=model.bin person.jpg
  python -m jaxattr.predict --exported=model.onnx person.jpg

Each argument is an image or a folder (all its images, sorted by name). Images are
decoded and resized exactly as the evaluation pipeline does, then run through the
model in batches padded to `--batch_size` (one compilation, whatever the number of
images). The model is the run's best checkpoint (the latest if no epoch finished),
or an exported file (`python -m jaxattr.export`, no model code needed).

An ONNX file (`--format=onnx` export) runs with ONNX Runtime, and neither JAX nor
TensorFlow is imported: images are decoded by PIL and resized by `resize`, the
evaluation's antialiased bilinear filter in numpy (equal to TensorFlow's up to
float rounding, so a pixel may differ by one level). PNGs decode to the same pixels;
JPEGs do not quite: TensorFlow's decoder uses libjpeg's fast integer DCT, PIL the
accurate one (about one level apart on average, a few at most), which moves the
demo model's probabilities by up to ~0.01.

Decisions are `p > threshold`: the run's tuned thresholds for that checkpoint
(`python -m jaxattr.evaluate --tune_thresholds`) if there are any, else
`config.eval.threshold` (0.5); an exported file carries its own.

A missing file, a file that is not an image or a box outside an image is reported
on stderr as one line naming the file; the other images are still processed and
the exit status is 1.
"""

import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from absl import app, flags, logging

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm')

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program, so the tools can import one another.
  flags.DEFINE_string('workdir', None, 'Workdir of a trained run (or use --exported).')
  flags.DEFINE_string('exported', None, 'A model file written by `python -m jaxattr.export`.')
  flags.DEFINE_enum('checkpoint', 'auto', ['auto', 'best', 'latest'], 'auto: best, else latest.')
  flags.DEFINE_string('box', None, 'x,y,w,h in pixels: crop every image to this box first.')
  flags.DEFINE_bool('json', False, 'One JSON object per image on stdout instead of a table.')
  flags.DEFINE_string(
    'attention',
    None,
    'Write attention figures: FILE.png for one image; for several, FILE_<i>.png (i = position '
    'in the expanded list of inputs), or a directory (no .png suffix): DIR/<i>_<name>.png.',
  )
  flags.DEFINE_integer('top_k', 3, 'Attributes (highest probability first) drawn in --attention.')
  flags.DEFINE_enum(
    'mask', 'attention', ['attention', 'weighted'], 'Draw a (spatial softmax) or a * s.'
  )
  flags.DEFINE_integer('batch_size', 32, 'Fixed inference batch size (the last batch is padded).')
  flags.DEFINE_bool('tuned_thresholds', True, "Use the run's tuned thresholds if it has some.")


class ImageError(Exception):
  """An input that cannot be predicted; the message names the file."""


def parse_box(text: str | None) -> tuple[int, int, int, int] | None:
  """'x,y,w,h' -> (x, y, w, h) with w, h > 0.

  Args:
    text: the flag value, or None.

  Returns:
    The box, or None.
  """
  if text is None:
    return None
  try:
    x, y, w, h = (int(v) for v in text.split(','))
  except ValueError:
    raise ValueError(f'--box must be four integers x,y,w,h, got {text!r}.') from None
  if w <= 0 or h <= 0:
    raise ValueError(f'--box width and height must be positive, got {text!r}.')
  return x, y, w, h


def expand_inputs(paths: Sequence[str]) -> list[Path]:
  """Files and folders -> a list of files (a folder: its images, sorted by name).

  Missing paths are kept, so they are reported in order with the others.

  Args:
    paths: command-line arguments.

  Returns:
    The list of files.
  """
  files = []
  for arg in paths:
    path = Path(arg)
    if path.is_dir():
      files += sorted(
        (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.name,
      )
    else:
      files.append(path)
  return files


def _read(path: Path) -> bytes:
  """The file's bytes, refused before decoding if the image is too large; raises ImageError."""
  from jaxattr.data import images

  try:
    data = path.read_bytes()
  except FileNotFoundError:
    raise ImageError(f'{path}: no such file.') from None
  except OSError as e:
    raise ImageError(f'{path}: cannot read ({e.strerror or e}).') from None
  if too_large := images.oversize_error(data, path):  # Before decoding anything.
    raise ImageError(too_large)
  return data


def _decode_pil(path: Path, data: bytes) -> np.ndarray:
  """uint8 [H, W, 3] decoded by PIL."""
  import io

  from PIL import Image, UnidentifiedImageError

  try:
    with Image.open(io.BytesIO(data)) as image:
      return np.asarray(image.convert('RGB'))
  except (UnidentifiedImageError, OSError, ValueError):
    raise ImageError(f'{path}: not a readable image.') from None


def _decode(path: Path) -> np.ndarray:
  """uint8 [H, W, 3]: TensorFlow's decoder (the pipeline's), PIL for other formats."""
  import tensorflow as tf

  from jaxattr.data import input_pipeline

  data = _read(path)
  try:
    return input_pipeline.decode(tf.constant(data)).numpy()
  except (tf.errors.InvalidArgumentError, ValueError):
    return _decode_pil(path, data)


def crop(image: np.ndarray, box: tuple[int, int, int, int] | None, path: Path) -> np.ndarray:
  """The box (x, y, w, h in pixels) of the image; it must lie inside the image.

  Args:
    image: uint8 [H, W, 3].
    box: the box, or None for the whole image.
    path: the image's file, for the error message.

  Returns:
    uint8 [h, w, 3].
  """
  if box is None:
    return image
  x, y, w, h = box
  height, width = image.shape[:2]
  if x < 0 or y < 0 or x + w > width or y + h > height:
    raise ImageError(f'{path}: box x={x},y={y},w={w},h={h} is outside the {width}x{height} image.')
  return image[y : y + h, x : x + w]


class _Resizer:
  """The evaluation resize (`input_pipeline.eval_preprocess`), traced once for any size."""

  def __init__(self, data_config):
    import tensorflow as tf

    from jaxattr.data import input_pipeline

    self._fn = tf.function(
      lambda image: input_pipeline.eval_preprocess(image, data_config),
      input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
    )

  def __call__(self, image: np.ndarray) -> np.ndarray:
    return self._fn(image).numpy()


def _resize_weights(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of the antialiased bilinear filter along one axis.

  TensorFlow's `scale_and_translate` rule: output pixel i samples the input at
  (i + 0.5) * in / out; a triangle of half-width max(in / out, 1) (wider when the axis
  shrinks: the antialiasing) weighs the input pixels by their centres; the weights
  of each output pixel are normalised to sum to 1.
  """
  scale = in_size / out_size
  width = max(scale, 1.0)
  sample = (np.arange(out_size) + 0.5) * scale
  centres = np.arange(in_size) + 0.5
  weights = np.maximum(0.0, 1.0 - np.abs(centres[None, :] - sample[:, None]) / width)
  return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def resize(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
  """The evaluation resize (`input_pipeline.eval_preprocess`) in numpy: uint8 [h, w, 3].

  Args:
    image: uint8 [H, W, 3].
    size: the output side S (S x S), or (h, w).

  Returns:
    The resized image, rounded half up as the pipeline does.
  """
  from jaxattr.schema import size_hw

  height, width = size_hw(size)
  rows = _resize_weights(image.shape[0], height)
  cols = _resize_weights(image.shape[1], width)
  out = np.einsum('ph,hwc->pwc', rows, image.astype(np.float32))
  out = np.einsum('qw,pwc->pqc', cols, out)
  return np.clip(out + 0.5, 0.0, 255.0).astype(np.uint8)


def pad_to_aspect(image: np.ndarray, hw: Sequence[int], fill: Sequence[int]) -> np.ndarray:
  """`input_pipeline.pad_to_aspect` in numpy: the image padded with `fill` to h:w.

  A crop taller than h:w gets columns on the left and right, a wider one rows above
  and below, the odd pixel after (`data.keep_aspect`).

  Args:
    image: uint8 [H, W, 3].
    hw: the target (h, w).
    fill: the padding pixel, uint8 RGB.

  Returns:
    uint8 [H', W', 3] with H' / W' = h / w to the nearest pixel.
  """
  src_h, src_w = image.shape[:2]
  pad_h = pad_w = 0
  if src_h * hw[1] > src_w * hw[0]:
    pad_w = max(int(np.round(src_h * hw[1] / hw[0])) - src_w, 0)
  else:
    pad_h = max(int(np.round(src_w * hw[0] / hw[1])) - src_h, 0)
  out = np.empty((src_h + pad_h, src_w + pad_w, 3), np.uint8)
  out[...] = np.asarray(fill, np.uint8)
  out[pad_h // 2 : pad_h // 2 + src_h, pad_w // 2 : pad_w // 2 + src_w] = image
  return out


def load_image(path: Path, box, resize, decode=_decode, pad=None) -> tuple[np.ndarray, np.ndarray]:
  """(the crop, the crop resized for the model) of one file; raises ImageError.

  `pad`, when given, pads the crop first (`pad_to_aspect`): the crop returned is the
  padded one, the frame the model's masks cover.
  """
  image = crop(decode(path), box, path)
  if pad is not None:
    image = pad(image)
  return image, resize(image)


def _image_config(size: tuple[int, int]):
  import ml_collections

  # Only `image_size` is read by eval_preprocess (the padding happens before, in numpy).
  return ml_collections.ConfigDict({'image_size': size})


def attention_path(target: str, index: int, path: Path, total: int) -> Path:
  """Where the attention figure of input `index` (of `total`) goes; see --attention."""
  target_path = Path(target)
  if target_path.suffix.lower() != '.png':
    return target_path / f'{index}_{path.stem}.png'
  if total == 1:
    return target_path
  return target_path.with_name(f'{target_path.stem}_{index}.png')


def _format_table(path: Path, box, probs, decided, thresholds, names) -> str:
  width = max(len(n) for n in names)
  where = f'  (box {",".join(map(str, box))})' if box else ''
  lines = [f'{path}{where}']
  for name, p, d, t in zip(names, probs, decided, thresholds, strict=True):
    lines.append(f'  {name:<{width}}  {p:.6f}  {"yes" if d else "no ":3}  (> {t:.4g})')
  return '\n'.join(lines)


def predict(
  predictor,
  inputs: Sequence[str],
  *,
  box: tuple[int, int, int, int] | None = None,
  as_json: bool = False,
  attention: str | None = None,
  top_k: int = 3,
  mask: str = 'attention',
  out: TextIO = sys.stdout,
  err: TextIO = sys.stderr,
) -> int:
  """Predicts every input and prints the results; the library form of the CLI.

  Args:
    predictor: an `inference.Predictor` (from a workdir or an exported file).
    inputs: image files and folders.
    box: crop every image to (x, y, w, h) first.
    as_json: one JSON object per line instead of a table.
    attention: where to write attention figures (see the --attention flag), or None.
    top_k: attributes drawn in the attention figures.
    mask: 'attention' (a) or 'weighted' (a * s).
    out: where results go.
    err: where the one-line errors go.

  Returns:
    The number of inputs that failed (0 = all predicted).
  """
  from jaxattr import onnx_model

  files = expand_inputs(inputs)
  size, fill = predictor.image_size, predictor.pad_fill
  if isinstance(predictor, onnx_model.OnnxPredictor):  # Neither TensorFlow nor JAX.
    resizer, decode = lambda image: resize(image, size), lambda p: _decode_pil(p, _read(p))
  else:
    resizer, decode = _Resizer(_image_config(size)), _decode
  pad = None if fill is None else lambda image: pad_to_aspect(image, size, fill)
  crops: dict[int, np.ndarray] = {}
  failures = 0
  if not files:
    err.write('error: no images given (folders are searched for ' + ', '.join(IMAGE_SUFFIXES))
    err.write(').\n')
    return 1

  def items() -> Iterator[tuple[int, np.ndarray]]:
    nonlocal failures
    for i, path in enumerate(files):
      try:
        image, resized = load_image(path, box, resizer, decode, pad)
      except ImageError as e:
        failures += 1
        err.write(f'error: {e}\n')
        err.flush()
        continue
      if attention:
        crops[i] = image
      yield i, resized

  for i, result in predictor.run(items()):
    path = files[i]
    probs = np.asarray(result['probs'], np.float64)
    decided = predictor.decisions(probs)
    if as_json:
      record: dict[str, Any] = {
        'path': str(path),
        'box': list(box) if box else None,
        'probabilities': {n: float(p) for n, p in zip(predictor.names, probs, strict=True)},
        'predicted': [n for n, d in zip(predictor.names, decided, strict=True) if d],
      }
      out.write(json.dumps(record) + '\n')
    else:
      out.write(
        _format_table(path, box, probs, decided, predictor.thresholds, predictor.names) + '\n'
      )
    out.flush()
    if attention:
      from jaxattr import visualize  # matplotlib: imported only when figures are drawn.

      masks = result['masks']
      if mask == 'weighted':
        masks = [a * s for a, s in zip(masks, result['confidences'], strict=True)]
      png = visualize.attention_figure(
        crops.pop(i),
        dict(zip(predictor.levels, masks, strict=True)),
        probs,
        predictor.names,
        top_k,
        thresholds=predictor.thresholds,
        title=f'{path.name}  ({"a*s" if mask == "weighted" else "a"}, max-normalised)',
      )
      target = attention_path(attention, i, path, len(files))
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(png)
      logging.info('Wrote %s', target)
  return failures


def predict_flags(flags: Any, inputs: Sequence[str]) -> list[str]:
  """Problems of the flags and inputs (the images are checked one by one later)."""
  from jaxattr import config_validation

  problems = []
  if bool(flags.workdir) == bool(flags.exported):
    problems.append('--workdir, --exported: give exactly one of them')
  elif flags.workdir:
    problems.append(config_validation.check_dir('--workdir', flags.workdir))
  elif not Path(flags.exported).expanduser().is_file():
    problems.append(f'--exported: no such file: {flags.exported}')
  problems.append(config_validation.check_int('--batch_size', flags.batch_size, 1))
  problems.append(config_validation.check_int('--top_k', flags.top_k, 1))
  if not inputs:
    problems.append('inputs: give at least one image or folder after the flags')
  return [p for p in problems if p]


def main(argv: Sequence[str]) -> int:
  # A command-line tool: warnings and errors only, unless --verbosity asks for more.
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Before TensorFlow is first imported.
  from jaxattr import config_validation

  inputs = argv[1:]
  # Every bad flag, one line each; exit code 2.
  config_validation.exit_if_problems(predict_flags(FLAGS, inputs), 'jaxattr.predict')
  # Imported only for the model that needs them: an ONNX model needs neither JAX nor
  # TensorFlow, whose imports would take most of a one-image prediction's time.
  errors: tuple[type[Exception], ...] = (ValueError, OSError, ImportError)
  try:
    box = parse_box(FLAGS.box)
    if FLAGS.exported:
      from jaxattr import export

      predictor = export.load(FLAGS.exported, batch_size=FLAGS.batch_size)
    else:
      from jaxattr import inference
      from jaxattr.run import layout

      errors += (layout.RunError,)
      predictor = inference.Predictor.from_workdir(
        FLAGS.workdir,
        FLAGS.checkpoint,
        batch_size=FLAGS.batch_size,
        tuned_thresholds=FLAGS.tuned_thresholds,
      )
  except errors as e:
    sys.stderr.write(f'error: {e}\n')
    return 2
  logging.info('Model: %s', predictor.description)
  failures = predict(
    predictor,
    inputs,
    box=box,
    as_json=FLAGS.json,
    attention=FLAGS.attention,
    top_k=FLAGS.top_k,
    mask=FLAGS.mask,
  )
  return 1 if failures else 0


if __name__ == '__main__':
  _define_flags()
  app.run(main)
