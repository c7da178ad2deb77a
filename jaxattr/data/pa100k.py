"""PA-100K (Liu et al., ICCV 2017) from the user's manual download.

`<root>/data/000001.jpg ... 100000.jpg` and `<root>/annotation.mat` (top-level
variables `attributes` 26x1 cell, `{train,val,test}_images_name` cells and
`{train,val,test}_label` N x 26 matrices of 0/1). All 26 attributes; splits
train / validation / test (80,000 / 10,000 / 10,000) in the file's order.
Images are stored as JPEG, byte for byte when the source is an RGB JPEG;
`image_id` is `data/<file name>`.
"""

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from jaxattr.data import manual, matlab

# The 26 attributes of annotation.mat, in its order.
ATTRIBUTE_NAMES = (
  'Female',
  'AgeOver60',
  'Age18-60',
  'AgeLess18',
  'Front',
  'Side',
  'Back',
  'Hat',
  'Glasses',
  'HandBag',
  'ShoulderBag',
  'Backpack',
  'HoldObjectsInFront',
  'ShortSleeve',
  'LongSleeve',
  'UpperStride',
  'UpperLogo',
  'UpperPlaid',
  'UpperSplice',
  'LowerStripe',
  'LowerPattern',
  'LongCoat',
  'Trousers',
  'Shorts',
  'Skirt&Dress',
  'boots',
)
HOMEPAGE = 'https://github.com/xh-liu/HydraPlus-Net'
NUM_ATTRIBUTES = 26
# Split -> the prefix of its variables in annotation.mat.
_MAT_PREFIX = {'train': 'train', 'validation': 'val', 'test': 'test'}

_LAYOUT = """\
<manual_dir>/data/000001.jpg ... 100000.jpg
<manual_dir>/annotation.mat   (attributes, {train,val,test}_images_name, {train,val,test}_label)"""


class Pa100kSplit(NamedTuple):
  """One split of annotation.mat."""

  image_names: list[str]  # File names under <root>/data/.
  labels: np.ndarray  # int8 [N, 26] of 0/1.


class Pa100kAnnotation(NamedTuple):
  """The contents of annotation.mat."""

  attribute_names: list[str]
  splits: dict[str, Pa100kSplit]  # 'train' / 'validation' / 'test'.


def read_pa100k_mat(path: Path) -> Pa100kAnnotation:
  """Reads PA-100K's annotation.mat.

  Args:
    path: the annotation.mat file.

  Returns:
    The attribute names and, per split, image names and labels.

  Raises:
    DataError: naming the file and variable if anything is missing or malformed.
  """
  needed = ['attributes'] + [
    f'{p}_{k}' for p in _MAT_PREFIX.values() for k in ('images_name', 'label')
  ]
  contents = matlab.load_variables(path, needed)
  names = matlab.mat_strings(contents['attributes'], path, 'attributes')
  splits = {}
  for split, prefix in _MAT_PREFIX.items():
    image_names = matlab.mat_strings(
      contents[f'{prefix}_images_name'], path, f'{prefix}_images_name'
    )
    labels = matlab.mat_matrix(
      contents[f'{prefix}_label'], path, f'{prefix}_label', (len(image_names), len(names))
    )
    matlab.check_values(labels, (0, 1), path, f'{prefix}_label')
    splits[split] = Pa100kSplit(image_names, labels.astype(np.int8))
  return Pa100kAnnotation(names, splits)


class Pa100k(manual.ManualDirBuilder):
  """PA-100K, 26 attributes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Official train / val / test split, all 26 attributes.'}
  DISPLAY_NAME = 'PA-100K'
  SOURCE = f'PA-100K (HydraPlus-Net), {HOMEPAGE}'
  LAYOUT = _LAYOUT
  # The names are fixed by the release, so the builder states them before the
  # file is read (TFDS needs them at construction) and checks them after.
  ATTRIBUTE_NAMES = ATTRIBUTE_NAMES
  HOMEPAGE = HOMEPAGE
  CITATION = (
    '@inproceedings{liu2017hydraplus, title={HydraPlus-Net: Attentive Deep Features '
    'for Pedestrian Analysis}, author={Liu, Xihui and Zhao, Haiyu and Tian, Maoqing '
    'and Sheng, Lu and Shao, Jing and Yi, Shuai and Yan, Junjie and Wang, Xiaogang}, '
    'booktitle={ICCV}, year={2017}}'
  )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    root = self._manual_root(dl_manager)
    _, annotation = self._read_annotation(
      root, 'annotation.mat', 'data', 'folder of 000001.jpg ... 100000.jpg', read_pa100k_mat
    )
    self._require_images(
      root, [root / 'data' / n for s in annotation.splits.values() for n in s.image_names]
    )
    return {
      split: self._generate_examples(root, split, data) for split, data in annotation.splits.items()
    }

  def _generate_examples(self, root: Path, split: str, data: Pa100kSplit):
    rows = (
      (root / 'data' / name, f'data/{name}', labels)
      for name, labels in zip(data.image_names, data.labels, strict=True)
    )
    return self._stored_examples(split, rows)
