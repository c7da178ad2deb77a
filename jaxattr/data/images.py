"""Image files: a safe decode with errors that name the file, and the stored encoding.

Used by the builders (every image of a manual download goes through
`read_image`) and by `jaxattr.predict` (`oversize_error`).

The pixel limit. A PNG of 20,000 x 20,000 pixels compresses to 48 KB and decodes
to 1.2 GB (and the float32 resize that follows to four times that); a larger one
takes the process down. Images above `MAX_PIXELS` are refused, with one line
naming the file, before anything is decoded. The default, 100 megapixels, is far
above any person crop (the datasets' largest source images are a few megapixels)
and above what cameras and phones write by default (12-50 MP), while such an image
still decodes in 0.3 GB (1.2 GB as float32). A limit above PIL's own (twice
`PIL.Image.MAX_IMAGE_PIXELS`, 179 MP) also needs `PIL.Image.MAX_IMAGE_PIXELS`
raised; PIL refuses such images itself, and its refusal is reported the same way.
"""

import io
import os
import warnings

from PIL import Image

# Refuse images with more pixels than this (width x height); see the module doc.
MAX_PIXELS = 100_000_000
JPEG_QUALITY = 95
_PIL_FORMATS = {'jpeg': 'JPEG', 'png': 'PNG'}


def oversize_error(data: bytes, name: object, max_pixels: int = MAX_PIXELS) -> str | None:
  """The one-line refusal of an image with more than `max_pixels` pixels, else None.

  Only the header is parsed (nothing is decoded), so a small file that would
  decode to gigabytes costs nothing here. Data PIL cannot parse passes: the
  decoder that follows names it.

  Args:
    data: the encoded image (the file's bytes).
    name: what to call it in the message (its path).
    max_pixels: the limit, width x height.

  Returns:
    The message naming `name`, or None if the image is within the limit.
  """
  try:
    # Our limit supersedes PIL's warning (Image.MAX_IMAGE_PIXELS, 89 MP); PIL's own
    # error (above twice that) still stops the largest ones, reported below.
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
  except Image.DecompressionBombError as e:
    return f'{name}: image too large to decode safely ({e}).'
  except Exception:  # noqa: BLE001  (not an image PIL knows: left to the decoder)
    return None
  if width * height > max_pixels:
    return (
      f'{name}: image of {width}x{height} pixels ({width * height / 1e6:.0f} megapixels) is '
      f'over the limit of {max_pixels / 1e6:g} megapixels for a safe decode '
      '(max_image_pixels raises it).'
    )
  return None


def read_image(path: os.PathLike | str, max_pixels: int = MAX_PIXELS) -> tuple[bytes, Image.Image]:
  """Reads and fully decodes one image file.

  Args:
    path: the image file.
    max_pixels: images with more pixels are refused before decoding
      (`oversize_error`).

  Returns:
    The file's bytes and the decoded PIL image (any mode; `format` is set).

  Raises:
    DataError: naming the path, if the file is missing, too large or cannot be
      decoded.
  """
  # Here, not at the top: `oversize_error` (predict) stays free of TFDS's import.
  from jaxattr.data.common import DataError

  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except FileNotFoundError as e:
    raise DataError(f'{path}: image file is missing.') from e
  except OSError as e:
    raise DataError(f'{path}: cannot read image file ({e}).') from e
  too_large = oversize_error(raw, path, max_pixels)
  if too_large:
    raise DataError(too_large)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)  # Checked above.
      image = Image.open(io.BytesIO(raw))
      # open() only parses the header; load() decodes every pixel, which is what
      # catches truncated or corrupt data here rather than in the training loop.
      image.load()
  # PIL reports malformed files with many exception types (OSError,
  # SyntaxError, ValueError, struct.error, ...).
  except Exception as e:  # noqa: BLE001
    raise DataError(f'{path}: corrupt or unreadable image ({type(e).__name__}: {e}).') from e
  if image.width < 1 or image.height < 1:
    raise DataError(f'{path}: image has no pixels ({image.width}x{image.height}).')
  return raw, image


def to_rgb(image: Image.Image) -> Image.Image:
  """The image as 8-bit RGB (grayscale, palette, CMYK and alpha images converted)."""
  return image if image.mode == 'RGB' else image.convert('RGB')


def encode_image(image: Image.Image, encoding_format: str) -> bytes:
  """Encodes an image as `encoding_format` ('jpeg' or 'png') after converting to RGB."""
  buffer = io.BytesIO()
  if encoding_format == 'jpeg':
    to_rgb(image).save(buffer, format='JPEG', quality=JPEG_QUALITY)
  elif encoding_format == 'png':
    to_rgb(image).save(buffer, format='PNG')
  else:
    raise ValueError(f"encoding_format must be 'jpeg' or 'png', got {encoding_format!r}.")
  return buffer.getvalue()


def stored_bytes(raw: bytes, image: Image.Image, encoding_format: str) -> bytes:
  """What to store for a whole source image.

  The original bytes are kept when they already are an RGB image in the stored
  format (no generation loss, no work); anything else (another format, grayscale,
  palette, alpha, CMYK) is converted to RGB and encoded.

  Args:
    raw: the file's bytes.
    image: the decoded image (from `read_image`).
    encoding_format: the dataset's storage format, 'jpeg' or 'png'.

  Returns:
    Encoded image bytes.
  """
  if image.format == _PIL_FORMATS.get(encoding_format) and image.mode == 'RGB':
    return raw
  return encode_image(image, encoding_format)
