"""What every jaxattr dataset shares: the canonical example and its metadata.

Every builder (synthetic, WIDER-Attribute, PETA, PA-100K, RAP v2, custom CSV)
produces the same example, so the input pipeline and the model never care which
dataset they read:

  image     uint8 [H, W, 3], the person crop (stored encoded)
  labels    int8 [C]: 1 = present, 0 = absent, -1 = unknown
  index     int64: stable position of the example within its split, 0..N-1
  image_id  source file name (plus the box number for WIDER)

The attribute names travel in `info.metadata['attribute_names']`.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds


class DataError(ValueError):
  """Bad or missing input data; the message names the file and what is wrong."""


def canonical_features(
  num_classes: int,
  extra: Mapping[str, tfds.features.FeatureConnector] | None = None,
  encoding_format: str = 'jpeg',
) -> tfds.features.FeaturesDict:
  """The features of the canonical example, plus dataset-specific extras.

  Args:
    num_classes: number of attributes C.
    extra: additional features (e.g. the synthetic `cue_boxes`).
    encoding_format: how images are stored ('jpeg' or 'png').

  Returns:
    A `tfds.features.FeaturesDict`.
  """
  features = {
    'image': tfds.features.Image(shape=(None, None, 3), encoding_format=encoding_format),
    'labels': tfds.features.Tensor(shape=(num_classes,), dtype=np.int8),
    'index': tfds.features.Scalar(dtype=np.int64),
    'image_id': tfds.features.Text(),
  }
  features.update(extra or {})
  return tfds.features.FeaturesDict(features)


def example(image: bytes, labels: np.ndarray, index: int, image_id: str) -> dict[str, Any]:
  """The canonical example (the module docstring's fields), image already encoded."""
  return {'image': image, 'labels': labels, 'index': index, 'image_id': image_id}


def make_info(
  builder: tfds.core.DatasetBuilder,
  attribute_names: Sequence[str],
  description: str,
  homepage: str = '',
  citation: str = '',
  extra_features: Mapping[str, tfds.features.FeatureConnector] | None = None,
  encoding_format: str = 'jpeg',
) -> tfds.core.DatasetInfo:
  """A `DatasetInfo` with the canonical features and the attribute names."""
  return tfds.core.DatasetInfo(
    builder=builder,
    description=description,
    features=canonical_features(len(attribute_names), extra_features, encoding_format),
    homepage=homepage,
    citation=citation,
    metadata=tfds.core.MetadataDict(attribute_names=list(attribute_names)),
  )


def attribute_names(info: tfds.core.DatasetInfo) -> list[str]:
  """The attribute names of a dataset built by a jaxattr builder."""
  return list(info.metadata['attribute_names'])
