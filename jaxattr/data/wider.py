"""WIDER-Attribute (Li et al., ECCV 2016) from the user's manual download.

One example per annotated person box: the crop of the box (clipped to the image;
a box outside the image or with no area after clipping falls back to the whole
image, counted and logged per split), its 14 attributes mapped from the official
1 / -1 / 0 (positive / negative / unspecified) to the canonical 1 / 0 / -1, the
position of the box within the split in official order (images in JSON order,
boxes in target order) and the id `Image/<file_name>#<box number>`.

Splits: `train` and `validation` (subsets train and val of
`wider_attribute_trainval.json`), `test` (`wider_attribute_test.json`).
Crops are stored as JPEG (quality 95). Bounding boxes are in the stored pixel
grid of the JPEG; EXIF orientation is deliberately not applied.
"""

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from jaxattr.data import common, manual
from jaxattr.data.common import DataError
from jaxattr.data.images import encode_image, to_rgb
from jaxattr.data.wider_names import ATTRIBUTE_NAMES

# The official attribute_id_map misspells one name; we keep the canonical one.
_OFFICIAL_SPELLING = {'Tshiirt': 'Tshirt'}
# Official 1 / -1 / 0 -> canonical 1 / 0 / -1.
_LABEL_MAP = {1: 1, -1: 0, 0: -1}

HOMEPAGE = 'http://mmlab.ie.cuhk.edu.hk/projects/WIDERAttribute.html'
TRAINVAL_JSON = 'wider_attribute_trainval.json'
TEST_JSON = 'wider_attribute_test.json'
ANNOTATION_DIRS = ('wider_attribute_annotation', 'Anno', '')
_SUBSET_TO_SPLIT = {'train': 'train', 'val': 'validation'}

_LAYOUT = """\
<manual_dir>/Image/{train,val,test}/<scene_id>--<SceneName>/<file>.jpg
<manual_dir>/wider_attribute_annotation/wider_attribute_trainval.json
<manual_dir>/wider_attribute_annotation/wider_attribute_test.json
  (the two JSON files may also be in <manual_dir>/Anno/ or <manual_dir>/)"""


class Target(NamedTuple):
  """One annotated person box."""

  labels: np.ndarray  # int8 [14], canonical 1 / 0 / -1.
  bbox: tuple[float, float, float, float]  # x, y, w, h in pixels.


class WiderImage(NamedTuple):
  """One annotated image of a WIDER-Attribute JSON file."""

  file_name: str  # Relative to <root>/Image/, e.g. 'train/0--Parade/x.jpg'.
  targets: list[Target]


def read_wider_json(path: Path) -> list[WiderImage]:
  """Parses one official WIDER-Attribute annotation file.

  Args:
    path: `wider_attribute_trainval.json` or `wider_attribute_test.json`.

  Returns:
    The images in file order, each with its targets in file order.

  Raises:
    DataError: naming the file (and image entry) if it is unreadable or malformed.
  """
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except FileNotFoundError as e:
    raise DataError(f'{path}: annotation file is missing.') from e
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: cannot parse JSON ({e}).') from e
  if not isinstance(data, dict) or not isinstance(data.get('images'), list):
    raise DataError(f'{path}: expected a JSON object with a list "images".')
  id_map = data.get('attribute_id_map')
  if id_map is not None:
    try:
      names = [id_map[str(i)] for i in range(len(id_map))]
    except (KeyError, TypeError) as e:
      raise DataError(f'{path}: attribute_id_map should map "0".."13" to names.') from e
    names = [_OFFICIAL_SPELLING.get(n, n) for n in names]
    if tuple(names) != ATTRIBUTE_NAMES:
      raise DataError(
        f'{path}: attribute_id_map lists {names}, expected {list(ATTRIBUTE_NAMES)} '
        '(the official order).'
      )
  images = []
  for i, entry in enumerate(data['images']):
    where = f'{path}: images[{i}]'
    try:
      file_name = entry['file_name']
      raw_targets = entry['targets']
    except (KeyError, TypeError) as e:
      raise DataError(f'{where}: expected "file_name" and "targets".') from e
    where = f'{where} ({file_name})'
    targets = []
    for k, target in enumerate(raw_targets):
      try:
        attributes, bbox = target['attribute'], target['bbox']
      except (KeyError, TypeError) as e:
        raise DataError(f'{where} target {k}: expected "attribute" and "bbox".') from e
      if len(attributes) != len(ATTRIBUTE_NAMES):
        raise DataError(
          f'{where} target {k}: {len(attributes)} attribute values, '
          f'expected {len(ATTRIBUTE_NAMES)}.'
        )
      if any(v not in _LABEL_MAP for v in attributes):
        raise DataError(f'{where} target {k}: attribute values must be 1, -1 or 0: {attributes}.')
      if len(bbox) != 4:
        raise DataError(f'{where} target {k}: bbox must be [x, y, w, h], got {bbox}.')
      labels = np.array([_LABEL_MAP[v] for v in attributes], dtype=np.int8)
      targets.append(Target(labels, tuple(float(v) for v in bbox)))
    images.append(WiderImage(file_name, targets))
  return images


def clip_box(
  bbox: tuple[float, float, float, float], width: int, height: int
) -> tuple[int, int, int, int] | None:
  """Pixel bounds of a box clipped to the image.

  Args:
    bbox: x, y, w, h (pixels, top-left origin).
    width: image width.
    height: image height.

  Returns:
    (left, top, right, bottom) with right/bottom exclusive, covering every pixel
    the box touches, or None if nothing of the box lies inside the image.
  """
  x, y, w, h = bbox
  left = max(0, math.floor(x))
  top = max(0, math.floor(y))
  right = min(width, math.ceil(x + w))
  bottom = min(height, math.ceil(y + h))
  if right <= left or bottom <= top:
    return None
  return left, top, right, bottom


class WiderAttribute(manual.ManualDirBuilder):
  """WIDER-Attribute: one example per annotated person box."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Crops of the official boxes, canonical labels.'}
  DISPLAY_NAME = 'WIDER-Attribute'
  SOURCE = f'WIDER-Attribute, {HOMEPAGE}'
  LAYOUT = _LAYOUT
  ATTRIBUTE_NAMES = ATTRIBUTE_NAMES
  HOMEPAGE = HOMEPAGE
  CITATION = (
    '@inproceedings{li2016human, title={Human Attribute Recognition by Deep '
    'Hierarchical Contexts}, author={Li, Yining and Huang, Chen and Loy, Chen Change '
    'and Tang, Xiaoou}, booktitle={ECCV}, year={2016}}'
  )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    root = self._manual_root(dl_manager)
    missing = []
    if not (root / 'Image').is_dir():
      missing.append(f'{root / "Image"} (folder of images)')
    jsons = {}
    for name in (TRAINVAL_JSON, TEST_JSON):
      found = manual.find_first(root, [str(Path(d) / name) for d in ANNOTATION_DIRS])
      if found is None:
        missing.append(f'{name} (looked in {", ".join(str(root / d) for d in ANNOTATION_DIRS)})')
      jsons[name] = found
    if missing:
      raise self._error(root, missing)

    splits: dict[str, list[WiderImage]] = {'train': [], 'validation': [], 'test': []}
    for image in read_wider_json(jsons[TRAINVAL_JSON]):
      subset = image.file_name.split('/', 1)[0]
      if subset not in _SUBSET_TO_SPLIT:
        raise DataError(
          f'{jsons[TRAINVAL_JSON]}: {image.file_name} is in subset {subset!r}; '
          'trainval images must be under train/ or val/.'
        )
      splits[_SUBSET_TO_SPLIT[subset]].append(image)
    splits['test'] = read_wider_json(jsons[TEST_JSON])

    self._require_images(
      root, [root / 'Image' / im.file_name for images in splits.values() for im in images]
    )
    return {split: self._generate_examples(root, split, images) for split, images in splits.items()}

  def _generate_examples(self, root: Path, split: str, images: list[WiderImage]):
    index = 0
    fallbacks = []
    for image in images:
      if not image.targets:
        continue
      path = root / 'Image' / image.file_name
      relative = f'Image/{image.file_name}'
      loaded = self._read_image(split, path, relative)
      if loaded is None:
        continue
      # Decode once, cut every box of the image from the same pixels.
      pixels = to_rgb(loaded[1])
      for k, target in enumerate(image.targets):
        box = clip_box(target.bbox, pixels.width, pixels.height)
        if box is None:
          fallbacks.append(f'{relative}#{k}')
          crop = pixels
        else:
          crop = pixels.crop(box)
        image_id = f'{relative}#{k}'
        yield index, common.example(encode_image(crop, 'jpeg'), target.labels, index, image_id)
        index += 1
    logging.info(
      'wider_attribute %s: %d boxes; %d outside the image or empty after clipping, '
      'stored as the whole image%s',
      split,
      index,
      len(fallbacks),
      (': ' + ', '.join(fallbacks[:20]) + (' ...' if len(fallbacks) > 20 else ''))
      if fallbacks
      else '',
    )
    self._report_bad_images(split, index)
