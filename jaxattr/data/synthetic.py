"""A procedurally drawn pedestrian-attribute dataset, jaxattr's embedded default.

No real attribute dataset can ship with jaxattr, so the demo and the tests use
drawn person crops (`jaxattr.data.pedestrians` draws them; its docstring says
what makes them hard). This module stores them as a TFDS dataset: three builder
configs of different sizes, each example a pure function of (seed, split, index),
so a config's splits are prefixes of a larger config's. The extra feature
`cue_boxes` gives where each drawn cue is, for the pointing game. One more config,
`cues`, holds the controlled localisation task of experiments/localisation.py
(`jaxattr.data.cues`): other attributes, same features.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from jaxattr.data import common
from jaxattr.data.cues import CUE_NAMES, generate_cues
from jaxattr.data.pedestrians import ATTRIBUTES, NUM_CLASSES, generate, generate_range

# `generate` is re-exported: callers that only need the examples (tests, tools)
# have read them from here.
__all__ = [
  'ATTRIBUTES',
  'NUM_CLASSES',
  'SyntheticAttributes',
  'SyntheticAttributesConfig',
  'generate',
]


@dataclasses.dataclass(eq=False)
class SyntheticAttributesConfig(tfds.core.BuilderConfig):
  """Split sizes and seed of a synthetic dataset.

  Attributes:
    num_train: examples in `train`.
    num_validation: examples in `validation`.
    num_test: examples in `test`.
    seed: seed of every example's generator.
    kind: 'pedestrians' (the 14 WIDER attributes, `pedestrians.draw_example`) or
      'cues' (the controlled localisation task, `cues.draw_cues_example`).
    image_size: side of the square images of kind 'cues'.
  """

  num_train: int = 6000
  num_validation: int = 1000
  num_test: int = 2000
  seed: int = 0
  kind: str = 'pedestrians'
  image_size: int = 112


class SyntheticAttributes(tfds.core.GeneratorBasedBuilder):
  """Drawn pedestrian crops with the 14 WIDER-Attribute attributes and cue boxes."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
    '1.0.0': 'First release.',
    '1.1.0': (
      'Cues visible at 112 px (taller sunglasses, larger logos and face masks, wider '
      'stripes), no dark face masks, hats contrast with the hair; the '
      '`cues` config of the localisation task.'
    ),
  }
  BUILDER_CONFIGS = [
    SyntheticAttributesConfig(
      name='tiny',
      description='128 / 64 / 64 examples, for unit tests.',
      num_train=128,
      num_validation=64,
      num_test=64,
    ),
    SyntheticAttributesConfig(
      name='small',
      description='6,000 / 1,000 / 2,000 examples: the CPU demo.',
      num_train=6000,
      num_validation=1000,
      num_test=2000,
    ),
    SyntheticAttributesConfig(
      name='large',
      description='40,000 / 5,000 / 10,000 examples, for experiments.',
      num_train=40_000,
      num_validation=5000,
      num_test=10_000,
    ),
    SyntheticAttributesConfig(
      name='cues',
      description=(
        'The controlled localisation task (experiments/localisation.py): 112x112 '
        'clutter with small coloured shapes, one attribute per (colour, shape) '
        'conjunction, distractors sharing colour or shape; 3,000 / 500 / 1,000.'
      ),
      num_train=3000,
      num_validation=500,
      num_test=1000,
      kind='cues',
      image_size=112,
    ),
  ]
  DEFAULT_CONFIG_NAME = 'small'

  def _info(self) -> tfds.core.DatasetInfo:
    if self.builder_config.kind == 'cues':
      return common.make_info(
        self,
        CUE_NAMES,
        description=(
          'Small coloured shapes on clutter; each attribute is one (colour, shape) '
          'conjunction, present exactly when it is drawn; `cue_boxes` give its box.'
        ),
        extra_features={
          'cue_boxes': tfds.features.Tensor(shape=(len(CUE_NAMES), 4), dtype=np.float32),
        },
      )
    return common.make_info(
      self,
      ATTRIBUTES,
      description=(
        'Procedurally drawn person crops with the 14 WIDER-Attribute attributes at '
        'their WIDER positive ratios, small cues, clutter, occluders and ~10% unknown '
        'labels; `cue_boxes` give the normalised [ymin, xmin, ymax, xmax] box of '
        'each drawn cue (zeros when absent).'
      ),
      extra_features={
        'cue_boxes': tfds.features.Tensor(shape=(NUM_CLASSES, 4), dtype=np.float32),
      },
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    sizes = {'train': cfg.num_train, 'validation': cfg.num_validation, 'test': cfg.num_test}
    return {split: self._generate_examples(split, n) for split, n in sizes.items()}

  def _generate_examples(self, split: str, num_examples: int):
    cfg = self.builder_config
    if cfg.kind == 'cues':
      for index in range(num_examples):
        yield index, generate_cues(split, index, cfg.seed, cfg.image_size)
      return
    for example in generate_range(split, num_examples, cfg.seed):
      yield example['index'], example
