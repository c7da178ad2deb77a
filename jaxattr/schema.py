"""The config schema: every field of a run config, its default, its check, and whether a
resumed run may change it, declared together in `FIELDS`.

  config = schema.defaults()                     # what every recipe in configs/ starts from
  problems = schema.validate(config, num_devices=jax.device_count())
  config_validation.exit_if_problems(problems, 'jaxattr.main')   # exit code 2
  schema.fixed_reason('model.backbone', old, new)  # why a resumed run cannot change it
  test = schema.load_recipe('test')              # configs/test.py, loaded by its path

`validate` checks every field and returns one line per problem, `config.<field>:
<what it must be>, got <value>`, so a run with three bad values says all three at
once instead of dying on the first in a traceback minutes later. Choices come from
the modules that own them (backbones from the model registry, datasets from the TFDS
builders jaxattr registers, levels and aggregations from `jaxattr.models`, loss modes
from `jaxattr.losses`, optimizers and schedules from `jaxattr.optim`), so a new choice
there is valid here without an edit; they are imported only when a check runs, so
reading the schema (the tools, `jaxattr.run`) imports no model or training code.

Fields that a config file adds beyond `FIELDS` are not checked; fields it lacks are
reported as missing.
"""

import copy
import dataclasses
import functools
import importlib.util
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jaxattr.config_validation import (
  Check,
  batch,
  boolean,
  check_dir,
  check_int,
  choice,
  integer,
  is_int,
  is_number,
  number,
  problem_lines,
  string,
  then,
  tuple_of,
)

DTYPES = ('float32', 'bfloat16', 'float16')
SELECTION_METRICS = ('map', 'ma', 'f1')
AP_DEFINITIONS = ('voc', 'sklearn')
# The config argument that reports the peers' protocol beside jaxattr's (`apply_args`).
PEERS_PROTOCOL = 'peers_protocol'
# The config argument that takes Rethinking_of_PAR's input (`apply_args`).
RETHINKING_INPUT = 'rethinking'
# The config argument that freezes the backbone for the whole run (`apply_args`).
FROZEN_BACKBONE = 'frozen'
MISSING = '(absent)'  # The value of a field that one of two compared configs lacks.
# The named values of `model.pretrained`: the backbone's published ImageNet weights
# (`jaxattr.pretrained` resolves them), or random weights on purpose.
PUBLISHED, SCRATCH = 'published', 'scratch'
# Datasets made up by jaxattr, whose recipes train from scratch; every other is real data.
SYNTHETIC_DATASETS = ('synthetic_attributes',)
# The recipes (`configs/<name>.py`) of the repository this package is part of.
RECIPES = Path(__file__).resolve().parents[1] / 'configs'

_ABSENT = object()


# --- Checks ---------------------------------------------------------------------------
# The checks of one field (`config_validation.integer`, `choice`, ... and the functions
# below) are called as `check(name, value, config, num_devices)`. A check that reads
# another field reads it with `_get`: a missing field is reported by its own entry.


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  """The value of a dotted field, or `_ABSENT`."""
  node = config
  for part in field.split('.'):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      return _ABSENT
  return node


# --- The registries the choices come from ---------------------------------------------


def dataset_builders() -> dict[str, Any]:
  """The TFDS builder classes jaxattr defines, by name (no other TFDS dataset fits).

  Only the classes of `jaxattr.data` are looked at; TFDS's own catalogue (hundreds of
  names, which its error message lists) is never loaded. Shared bases that skip
  TFDS registration (`ManualDirBuilder`) have subclasses; the builders are the leaves.
  """
  import tensorflow_datasets as tfds

  from jaxattr.data import input_pipeline  # noqa: F401  (imports, so registers, every builder)

  found, todo = {}, [tfds.core.DatasetBuilder]
  while todo:
    cls = todo.pop()
    subclasses = cls.__subclasses__()
    todo.extend(subclasses)
    name = getattr(cls, 'name', None)
    ours = cls.__module__.startswith('jaxattr.')
    if ours and isinstance(name, str) and name and not subclasses:
      found[name] = cls
  return found


def _datasets() -> list[str]:
  return sorted(dataset_builders())


def _backbones() -> list[str]:
  from jaxattr.models import registry

  return list(registry.BACKBONES)


def _family(config: ml_collections.ConfigDict) -> str | None:
  """The family of `config.model.backbone`; None for an unknown one (its own check says so)."""
  from jaxattr.models import registry

  backbone = _get(config, 'model.backbone')
  return registry.get(backbone).family if backbone in registry.BACKBONES else None


# Families whose two taps are one token grid (a ViT's blocks): no stride-2 aggregation.
_TOKEN_GRID_FAMILIES = ('vit', 'clip')


def _module_choices(module: str, attribute: str) -> Callable[[], tuple[Any, ...]]:
  """The choices `jaxattr.<module>.<attribute>`, imported when asked for."""

  def choices():
    return tuple(getattr(importlib.import_module(f'jaxattr.{module}'), attribute))

  return choices


# --- Checks of one field that read others ---------------------------------------------


def _builder_config(name, value, config, _):
  builders = dataset_builders()
  dataset = _get(config, 'data.name')
  if dataset not in builders or not value:
    return None
  configs = [b.name for b in builders[dataset].BUILDER_CONFIGS or ()]
  if value in configs:
    return None
  expected = ', '.join(map(repr, ["''", *configs])) if configs else "'' (it has none)"
  return f'{name}: {dataset} has configs {expected}; got {value!r}'


def _folder(must_exist: bool) -> Check:
  """A folder path, or '' for none."""
  return lambda name, value, *_: check_dir(name, value, must_exist) if value else None


def _crops(name, value, config, _):
  low, high, resize = (_get(config, f'data.{f}') for f in ('crop_min', 'crop_max', 'resize_size'))
  if not all(is_int(v) and v > 0 for v in (low, high, resize)) or low <= high <= resize:
    return None
  return (
    'config.data.crop_min, crop_max, resize_size: must satisfy crop_min <= crop_max <= '
    f'resize_size, got {low}, {high}, {resize}'
  )


def _is_hw(value: Any) -> bool:
  return (
    isinstance(value, tuple | list) and len(value) == 2 and all(is_int(v) and v > 0 for v in value)
  )


def _image_size(name, value, config, _):
  if is_int(value):
    problem = check_int(name, value, 1)
  elif _is_hw(value):
    problem = None
  else:
    return f'{name}: must be a positive integer or (height, width) of two, got {value!r}'
  if problem:
    return problem
  from jaxattr.models import vit  # ViT cuts the input into whole patches.

  spec = vit.VIT_SPECS.get(_get(config, 'model.backbone'))
  if spec is not None and any(side % spec.patch_size for side in size_hw(value)):
    return (
      f'{name}: {_get(config, "model.backbone")} needs multiples of its patch size '
      f'{spec.patch_size}, got {value!r}'
    )
  return None


def size_hw(size: int | Sequence[int]) -> tuple[int, int]:
  """(height, width) of an image size given as S (S x S) or (height, width).

  Args:
    size: `data.image_size` (a list where it was read back from JSON).

  Returns:
    `(height, width)` in pixels.

  Raises:
    ValueError: `size` is neither.
  """
  if is_int(size):
    return int(size), int(size)
  if not _is_hw(size):
    raise ValueError(f'image size: must be an int or (height, width), got {size!r}')
  return int(size[0]), int(size[1])


def image_hw(data_config: ml_collections.ConfigDict) -> tuple[int, int]:
  """The (height, width) of the model's input: `data.image_size` S is S x S.

  Args:
    data_config: `config.data` (or any ConfigDict with `image_size`).

  Returns:
    `(height, width)` in pixels.
  """
  return size_hw(data_config.image_size)


def pad_fill(data_config: ml_collections.ConfigDict) -> tuple[int, int, int] | None:
  """The uint8 pixel an image is padded with to image_size's aspect, or None (stretched).

  With `data.keep_aspect` it is the mean pixel, `data.mean` x 255 rounded, which
  normalises to (about) zero: what the convolutions' own zero padding reads beyond a
  border, so the padding carries no signal (black would sit 2 standard deviations off).

  Args:
    data_config: `config.data`.

  Returns:
    RGB in [0, 255], or None when `data.keep_aspect` is off (or absent).
  """
  if not data_config.get('keep_aspect', False):
    return None
  return tuple(min(max(round(255 * float(m)), 0), 255) for m in data_config.mean)


def _autotune(at_least: int, what: str) -> Check:
  """-1 (tf.data.AUTOTUNE) or an integer >= `at_least`."""

  def check(name, value, *_):
    if is_int(value) and (value == -1 or value >= at_least):
      return None
    return f'{name}: must be -1 (AUTOTUNE) or {what}, got {value!r}'

  return check


def _pretrained(name, value, config, _):
  if value == PUBLISHED:
    sizes = {f: _get(config, f'model.{f}') for f in ('width', 'depth')}
    if all(v == 1.0 for v in sizes.values() if is_number(v)):
      return None
    got = ', '.join(f'model.{f}={v!r}' for f, v in sizes.items())
    return (
      f"{name}: '{PUBLISHED}' weights exist at model.width=1.0 and model.depth=1.0 only, "
      f"got {got}; use '{SCRATCH}' for a smaller model"
    )
  if value == SCRATCH:
    return None
  if not value:
    dataset = _get(config, 'data.name')
    if dataset in SYNTHETIC_DATASETS:
      return None
    return (
      f"{name}: '' on real data ({dataset}) starts the backbone from random weights "
      f"unasked; use '{PUBLISHED}' (its ImageNet weights; offline: docs/pretrained.md), "
      f"a converted folder, or '{SCRATCH}' to train from random weights on purpose"
    )
  if value.startswith('openai:'):  # OpenAI's CLIP files: `jaxattr.pretrained` checks the name.
    from jaxattr import pretrained

    names = pretrained.openai_names()
    arch = names.get(value[len('openai:') :])
    if arch is None:
      return f'{name}: {value}: unknown CLIP model; known: openai:{", openai:".join(names)}'
    backbone = _get(config, 'model.backbone')
    if arch != backbone:
      return f'{name}: {value} are weights of {arch}, but config.model.backbone is {backbone}'
    return None
  prefix = 'torchvision:'
  if not value.startswith(prefix):
    if Path(value).expanduser().exists():
      return None
    return (
      f'{name}: no such file or folder: {value} (a directory written by '
      f'`python -m jaxattr.convert`, or torchvision:ARCH)'
    )
  backbones = _backbones()
  backbone = _get(config, 'model.backbone')
  arch, _, weights = value[len(prefix) :].partition(':')
  if arch not in backbones:
    return f'{name}: {value}: unknown architecture {arch!r}; registered: {", ".join(backbones)}'
  if backbone in backbones and arch != backbone:
    return f'{name}: {value} are weights of {arch}, but config.model.backbone is {backbone}'
  if weights:
    try:
      from jaxattr import pretrained
    except ImportError:
      return None
    available = getattr(pretrained, 'available', None)
    if available is not None and weights not in available(arch):
      known = ', '.join(available(arch))
      return f'{name}: {value}: no weights {weights!r} for {arch}; known: {known}'
  return None


def _levels(name, value, *_):
  from jaxattr import models

  as_tuple = tuple(value) if isinstance(value, tuple | list) else value
  if as_tuple in models.LEVELS:
    return None
  return f'{name}: must be one of {", ".join(map(str, models.LEVELS))}; got {value!r}'


def _dtypes() -> tuple[str, ...]:
  # float64 only with `jax_enable_x64` (without it JAX computes float64 in float32): the
  # equivalence tests run in it (tests/conftest.py, FLOAT64).
  import jax

  return (*DTYPES, 'float64') if jax.config.jax_enable_x64 else DTYPES


def _param_dtype(name, value, *_):
  if value in ('float32', 'float64'):
    return None
  return (
    f"{name}: must be 'float32' (Adam's updates vanish when rounded to {value} parameters; "
    f"model.dtype='bfloat16' is the mixed-precision setting), got {value!r}"
  )


def _compute_dtype(name, value, *_):
  if value != 'float16':
    return None
  return (
    f"{name}: 'float16' needs loss scaling, which jaxattr has not; use 'bfloat16' "
    "(float32's range, no scaling needed)"
  )


def _freeze_needs_weights(name, value, config, _):
  pretrained = _get(config, 'model.pretrained')
  if not (is_number(value) and value > 0) or pretrained not in ('', SCRATCH):
    return None
  if _get(config, 'train.allow_frozen_scratch') is True:
    return None
  return (
    f'{name}: {value!r} freezes a randomly initialised backbone (config.model.pretrained='
    f"{pretrained!r}); start from weights ('{PUBLISHED}'), set 0, or allow it with "
    'config.train.allow_frozen_scratch=True'
  )


def _recipe(name, value, config, _):
  from jaxattr import recipes

  backbone, family = _get(config, 'model.backbone'), _family(config)
  if value == recipes.OWN or family is None:
    return None
  expected = recipes.recipe_of(family)
  if value == expected:
    return None
  return (
    f'{name}: {value!r} is not the recipe of {backbone} ({expected!r}); choose the backbone '
    f'by the config argument (--config=configs/<recipe>.py:{backbone}), or train with '
    f"this config's numbers as they are with --config.recipe={recipes.OWN}"
  )


def _layer_decay(name, value, config, _):
  from jaxattr import optim

  family = _family(config)
  if not 0 < value < 1 or family is None or family in optim.LAYER_DECAY_FAMILIES:
    return None
  backbone = _get(config, 'model.backbone')
  return f'{name}: layer-wise lr decay is defined for ViT backbones, not {backbone}, got {value!r}'


def _evals(name, value, config, _):
  from jaxattr import evaluators  # Each evaluator type checks its own options.

  return evaluators.validate(config)


def _aggregation_fits_levels(name, value, config, _):
  from jaxattr import models

  levels = _get(config, 'model.attention.levels')
  levels = tuple(levels) if isinstance(levels, tuple | list) else levels
  if levels not in models.LEVELS:
    return None  # Reported by the levels' own check.
  try:
    models.validate_attention(levels, value)
  except ValueError as e:
    return f'{name}: {e}'
  if value == 'feature_strided_conv' and _family(config) in _TOKEN_GRID_FAMILIES:
    backbone = _get(config, 'model.backbone')
    return f"{name}: {backbone}'s two taps share one grid, which a stride-2 conv cannot halve"
  return None


def _drop_path_backbone(name, value, config, _):
  from jaxattr import models

  family = _family(config)
  if value == 0 or family is None or family in models.STOCHASTIC_DEPTH_FAMILIES:
    return None
  backbone, families = _get(config, 'model.backbone'), ', '.join(models.STOCHASTIC_DEPTH_FAMILIES)
  return f'{name}: {backbone} has no stochastic depth (only {families} do); use 0, got {value!r}'


def _micro_batches_divide(name, value, config, num_devices):
  size = _get(config, 'train.batch_size')
  devices = num_devices or 1
  if is_int(size) and size > 0 and size % devices == 0 and size % (value * devices):
    return (
      f'{name}: config.train.batch_size ({size}) must split into {value} micro-batches '
      f'over {devices} device(s) (a multiple of {value * devices}), got {value!r}'
    )
  return None


def _min_lr_below_lr(name, value, config, _):
  lr, schedule = _get(config, 'optimizer.learning_rate'), _get(config, 'schedule.name')
  if is_number(lr) and lr > 0 and value > lr and schedule != 'constant':
    return f'{name}: must be <= config.optimizer.learning_rate ({lr!r}), got {value!r}'
  return None


def _increasing(name, value, *_):
  if list(value) != sorted(value):
    return f'{name}: must be increasing, got {value!r}'
  return None


def _warmup_within_training(name, value, config, _):
  epochs = _get(config, 'train.num_epochs')
  if is_number(epochs) and epochs > 0 and value > epochs:
    return f'{name}: must be <= config.train.num_epochs ({epochs!r}), got {value!r}'
  return None


# --- Why a resumed run cannot change a field ---------------------------------------------

_DATA_ORDER = (
  'the data order of the steps still to come follows from it (a new seed would repeat or '
  'skip examples)'
)
_DATASET = (
  "the model's classes, the class weights and the prediction history belong to this dataset"
)
_ARCHITECTURE = "the checkpoint holds this architecture's parameters"
_HISTORY_SHAPE = "the checkpoint's prediction history has this shape"
_SELECTION = 'the best checkpoint so far was chosen by this metric'


def _depth_fixed(old: Any, new: Any) -> str | None:
  """A config.json without `model.depth` ran at the full depth: 1.0 resumes it."""
  return None if old is MISSING and new == 1.0 else _ARCHITECTURE


def _momentum_fixed(old: Any, new: Any) -> str | None:
  """SGD keeps a momentum state only when momentum > 0."""
  if MISSING in (old, new) or bool(old) == bool(new):
    return None
  state = 'one' if old else 'none'
  return f"SGD keeps a momentum state only when momentum > 0; the checkpoint's state has {state}"


def _ema_fixed(old: Any, new: Any) -> str | None:
  """A config.json without `train.ema_decay` ran without EMA: 0 resumes it."""
  if old == new or (old is MISSING and new == 0):
    return None
  return (
    "the checkpoint's EMA of the weights was averaged with this decay (or is absent at 0); "
    'a new decay would mix two averages'
  )


# --- The fields ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Field:
  """One field of the config.

  Attributes:
    default: its value in `defaults()`.
    check: its `Check`, or None.
    fixed: why a resumed run cannot change it (a text, or a function of the old and new
      values returning the text or None); None: a resumed run may change it.
  """

  default: Any
  check: Check | None = None
  fixed: str | Callable[[Any, Any], str | None] | None = None


FIELDS: dict[str, Field] = {
  'seed': Field(0, integer(0, 2**32 - 1), _DATA_ORDER),
  # The recipe the optimisation fields hold: 'paper' (the dataset's recipe, chosen for
  # ResNets and DenseNets), a family's recipe of `jaxattr.recipes` ('transformer'), or
  # 'own' (the numbers as they are, with any backbone). A backbone whose family trains
  # with another recipe is refused: config arguments apply the family's recipe, a
  # --config.model.backbone override does not.
  'recipe': Field('paper', then(string(nonempty=True), _recipe)),
  # --- Data ---------------------------------------------------------------------------
  # TFDS builder name (registered by importing jaxattr.data) and builder config.
  'data.name': Field('synthetic_attributes', choice(_datasets), _DATASET),
  'data.builder_config': Field('', then(string(), _builder_config), _DATASET),  # '': default.
  # TFDS data_dir; '' = TFDS default (~/tensorflow_datasets). It may not exist yet.
  'data.data_dir': Field('', then(string(), _folder(must_exist=False))),
  'data.manual_dir': Field('', then(string(), _folder(must_exist=True))),  # The user's download.
  'data.train_split': Field(
    'train', string(nonempty=True), "the prediction history is indexed by this split's examples"
  ),
  # Model selection happens here, never on test.
  'data.eval_split': Field(
    'validation',
    string(nonempty=True),
    'the best checkpoint and the plateau schedule compared validation metrics of this split',
  ),
  # Evaluated once at the end, with the best checkpoint.
  'data.test_split': Field('test', string(nonempty=True)),
  # S (S x S) or (height, width). Declared of any type so that an override parses either
  # form (`--config.data.image_size=(256, 192)`).
  'data.image_size': Field(
    ml_collections.FieldReference(224, field_type=object),
    _image_size,
    "the attention classifiers' full-spatial convolutions are sized for this input",
  ),
  # Train augmentation: 'paper' or 'rethinking' (`input_pipeline.AUGMENTATIONS`).
  'data.augment': Field('paper', choice(_module_choices('data.input_pipeline', 'AUGMENTATIONS'))),
  # Paper augmentation: resize to resize_size², random square crop with side in
  # [crop_min, crop_max] (pixels of the resized image), resize to image_size, flip. For a
  # (height, width) image_size the three count along the height, and the resize and the
  # crop take image_size's aspect (the same square recipe when height == width).
  'data.resize_size': Field(256, integer(1)),
  'data.crop_min': Field(128, integer(1)),
  'data.crop_max': Field(224, then(integer(1), _crops)),
  'data.random_flip': Field(True, boolean()),
  # Rethinking_of_PAR's augmentation: resize to image_size, pad this many pixels of zeros
  # on every side, crop image_size back at a random position, flip.
  'data.crop_padding': Field(10, integer(0)),
  # Pad each image with the mean pixel to image_size's aspect before resizing (train,
  # eval, predict), instead of stretching it.
  'data.keep_aspect': Field(False, boolean()),
  # ImageNet statistics of the torchvision weights.
  'data.mean': Field((0.485, 0.456, 0.406), tuple_of(3, is_number, 'numbers')),
  'data.std': Field(
    (0.229, 0.224, 0.225), tuple_of(3, lambda v: is_number(v) and v > 0, 'positive numbers')
  ),
  # Unknown labels (-1): 'negative' (the literature) or 'ignore' (masked in the loss).
  # Evaluation always ignores them.
  'data.unknown_label': Field('negative', choice(_module_choices('losses', 'UNKNOWN_MODES'))),
  'data.num_parallel_calls': Field(-1, _autotune(1, 'a positive integer')),  # -1: AUTOTUNE.
  'data.prefetch': Field(2, _autotune(0, 'an integer >= 0')),
  # At train time a corrupt image is reported with its id and skipped ('skip'), or stops
  # the run ('fail').
  'data.on_bad_image': Field(
    'fail', choice(_module_choices('data.input_pipeline', 'BAD_IMAGE_MODES'))
  ),
  # Images with more pixels (width x height) are refused, naming the file: far above any
  # person crop, and such an image still decodes in about 0.3 GB.
  'data.max_image_pixels': Field(100_000_000, integer(1)),
  # --- Model --------------------------------------------------------------------------
  # Any name of the backbone registry (`jaxattr/models/registry.py`): resnet18/34/50/101/152,
  # densenet121/161/169/201, vit_b_16, swin_t/s/b, convnext_tiny/small/base.
  'model.backbone': Field('resnet101', choice(_backbones), _ARCHITECTURE),
  # Channel multiplier of backbone and heads (1.0 = the paper's model). Tiny CPU variants
  # of the same architecture use e.g. 0.125.
  'model.width': Field(1.0, number(0, open_low=True), _ARCHITECTURE),
  # Block multiplier of the backbone's stages (1.0 = torchvision's architecture; the first
  # blocks of each stage are kept, `models.resnet.scale_blocks`). Test-size transformers
  # use e.g. 0.25; pretrained weights need 1.0.
  'model.depth': Field(1.0, number(0, 1, open_low=True), _depth_fixed),
  # Compute dtype ('bfloat16': mixed precision).
  'model.dtype': Field('float32', then(choice(_dtypes), _compute_dtype)),
  # Recompute each backbone block's activations in the backward pass (`nn.remat`): the same
  # gradients in less memory, for about one more forward pass (docs: memory_table.md).
  'model.remat': Field(False, boolean()),
  'model.param_dtype': Field(
    'float32', then(choice(_dtypes), _param_dtype), 'the checkpoint holds parameters of this dtype'
  ),
  # Stochastic depth in training: the last block's drop rate (0 = off); Swin and ConvNeXt.
  'model.drop_path_rate': Field(0.0, then(number(0, below=1), _drop_path_backbone)),
  # 'published' (the backbone's ImageNet weights), 'scratch' (random, on purpose), a
  # directory written by `python -m jaxattr.convert`, or torchvision:ARCH[:WEIGHTS]; ''
  # (random) only on synthetic data.
  'model.pretrained': Field(
    PUBLISHED, then(string(), _pretrained), 'pretrained weights are loaded only when a run starts'
  ),
  # () primary only; (4,) single scale; (3, 4) multi-scale.
  'model.attention.levels': Field((3, 4), _levels, _ARCHITECTURE),
  # 'score' | 'feature_upsample' | 'feature_maxpool' | 'feature_strided_conv'.
  'model.attention.aggregation': Field(
    'score',
    then(choice(_module_choices('models', 'AGGREGATIONS')), _aggregation_fits_levels),
    _ARCHITECTURE,
  ),
  'model.attention.confidence_weighting': Field(True, boolean(), _ARCHITECTURE),
  # C256-C256 of the mask branch (times width).
  'model.attention.mask_channels': Field(256, integer(1), _ARCHITECTURE),
  # C256-C512-C512 (times width).
  'model.attention.classifier_channels': Field(
    (256, 512, 512),
    tuple_of(3, lambda v: is_int(v) and v > 0, 'positive integers'),
    _ARCHITECTURE,
  ),
  # --- Loss ---------------------------------------------------------------------------
  # 'bce' | 'weighted_bce' | 'weighted_focal'.
  'loss.primary': Field('weighted_focal', choice(_module_choices('losses', 'PRIMARY_LOSSES'))),
  # 'bce' | 'variance_weighted'.
  'loss.attention': Field(
    'variance_weighted', choice(_module_choices('losses', 'ATTENTION_LOSSES'))
  ),
  # 'vespa' | 'paper_literal' | 'none'.
  'loss.class_weights': Field('vespa', choice(_module_choices('losses', 'CLASS_WEIGHT_MODES'))),
  'loss.gamma': Field(0.5, number(0)),
  # Over attributes: 'sum' (the paper's Eqs. 3-4) or 'mean' (the authors' released code,
  # with which the paper's lr and weight decay were tuned; docs/method.md, "Losses"). Each
  # recipe sets it and says why.
  'loss.attribute_reduction': Field(
    'sum', choice(_module_choices('losses', 'ATTRIBUTE_REDUCTIONS'))
  ),
  # --- Prediction-variance history (Active Bias) ------------------------------------------
  'history.length': Field(5, integer(1), _HISTORY_SHAPE),  # K most recent epochs.
  'history.start_epoch': Field(2, integer(0)),  # Burn-in: written from this (0-based) epoch on.
  # 'attention' (per level) | 'aggregate'.
  'history.source': Field(
    'attention', choice(_module_choices('history', 'SOURCES')), _HISTORY_SHAPE
  ),
  # --- Optimisation -----------------------------------------------------------------------
  # 'sgd' | 'adam' | 'adamw'.
  'optimizer.name': Field(
    'sgd',
    choice(_module_choices('optim', 'OPTIMIZERS')),
    "the checkpoint holds this optimizer's state",
  ),
  'optimizer.learning_rate': Field(1e-3, number(0, open_low=True)),
  'optimizer.momentum': Field(0.9, number(0, below=1), _momentum_fixed),
  'optimizer.nesterov': Field(False, boolean()),
  'optimizer.weight_decay': Field(5e-4, number(0)),  # optax.add_decayed_weights, not the loss.
  'optimizer.grad_clip_norm': Field(0.0, number(0)),  # 0 = off.
  # The backbone's learning rate is learning_rate * backbone_lr_scale (the heads' is
  # learning_rate); e.g. 0.1 for fine-tuning a pretrained transformer.
  'optimizer.backbone_lr_scale': Field(1.0, number(0)),
  # ViT only: layer-wise lr decay of the backbone (`optim.layer_scales`); 0 or 1 = off.
  'optimizer.layer_decay': Field(0.0, then(number(0, 1), _layer_decay)),
  # 'plateau' (on the validation metric) | 'step' | 'cosine' | 'constant'.
  'schedule.name': Field('plateau', choice(_module_choices('optim', 'SCHEDULES'))),
  'schedule.factor': Field(0.1, number(0, open_low=True, below=1)),
  'schedule.patience': Field(2, integer(0)),  # Epochs without gain before lr *= factor.
  'schedule.min_lr': Field(1e-5, then(number(0), _min_lr_below_lr)),
  # 'step': the epochs at which lr *= factor.
  'schedule.step_epochs': Field(
    (30, 60),
    then(tuple_of(None, lambda v: is_number(v) and v >= 0, 'epochs >= 0'), _increasing),
  ),
  # 'cosine' (and a linear warm-up for any schedule).
  'schedule.warmup_epochs': Field(0.0, then(number(0), _warmup_within_training)),
  # --- Training loop ----------------------------------------------------------------------
  # Global batch, over all devices and processes.
  'train.batch_size': Field(
    32, batch(), 'the data order and the epoch boundaries are counted in steps of this batch'
  ),
  'train.num_epochs': Field(30, number(0, open_low=True)),
  # Stage 1: heads only, backbone frozen.
  'train.freeze_backbone_epochs': Field(3, then(number(0), _freeze_needs_weights)),
  # Freezing a randomly initialised backbone is refused unless this is True (the synthetic
  # configs do it to exercise both stages).
  'train.allow_frozen_scratch': Field(False, boolean()),
  'train.log_every_steps': Field(50, integer(1)),
  'train.checkpoint_every_steps': Field(1000, integer(1)),
  'train.keep_checkpoints': Field(2, integer(1)),  # Latest k, plus the best.
  'train.max_steps': Field(0, integer(0)),  # > 0 stops early (tests, benchmarks).
  # EMA of the parameters and BatchNorm statistics (0 = off): evaluated, selected, exported.
  'train.ema_decay': Field(0.0, number(0, below=1), _ema_fixed),
  # Micro-batches per step: gradients averaged over them, one optimizer update.
  'train.grad_accum_steps': Field(1, then(integer(1), _micro_batches_divide)),
  # --- Evaluation -------------------------------------------------------------------------
  'eval.batch_size': Field(64, batch()),
  # Selection metric on data.eval_split: 'map' (WIDER-like) | 'ma' | 'f1' (PETA-like).
  'eval.metric': Field('map', choice(SELECTION_METRICS), _SELECTION),
  'eval.ap': Field('voc', choice(AP_DEFINITIONS), _SELECTION),  # Headline AP: 'voc' | 'sklearn'.
  'eval.threshold': Field(0.5, number(0, 1)),
  'eval.every_epochs': Field(1, integer(1)),
  'eval.attention_grid': Field(False, boolean()),  # A PNG of attention masks at the end.
  # `config.evals.<name> = dict(type=..., split=..., every_epochs=..., at_end=..., <options>)`,
  # types and options in `jaxattr.evaluators`. Empty: validation every `eval.every_epochs`
  # epochs (selecting by `eval.metric`) and test at the end on the selected checkpoint.
  'evals': Field(ml_collections.ConfigDict(), _evals),
  # Multi-host: initialise jax.distributed (coordinator from flags or environment).
  'distributed': Field(False, boolean()),
}


def defaults() -> ml_collections.ConfigDict:
  """Every field of `FIELDS` at its default: what the recipes in configs/ start from.

  Not itself a paper recipe (its data is the synthetic set; configs/wider.py and
  configs/peta.py are the paper's recipes).
  """
  config = ml_collections.ConfigDict()
  for field, spec in FIELDS.items():
    *parents, leaf = field.split('.')
    node = config
    for part in parents:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
    node[leaf] = copy.deepcopy(spec.default)  # A ConfigDict default is not shared.
  return config


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> list[str]:
  """Every problem of a resolved run config, one line each (empty: the config is fine).

  Reads nothing but the config, the registries and the paths it names (pretrained
  weights, manual_dir); writes nothing.

  Args:
    config: the resolved config (`defaults()` and a recipe's changes and overrides).
    num_devices: devices of the run (the global batches must divide over them);
      None skips that check.

  Returns:
    Lines `config.<field>: must be ..., got ...`, in the order of `FIELDS`.
  """
  problems = []
  for field, spec in FIELDS.items():
    value = _get(config, field)
    if value is _ABSENT:
      problems.append(f'config.{field}: missing')
    elif spec.check is not None:
      problems.extend(problem_lines(spec.check(f'config.{field}', value, config, num_devices)))
  return problems


def fixed_reason(field: str, old: Any, new: Any) -> str | None:
  """Why `field` cannot change from `old` to `new` in a resumed run (None: it can).

  Args:
    field: a dotted field name.
    old: its value in the run's config.json (`MISSING` if absent there).
    new: its value in the new config (`MISSING` if absent).

  Returns:
    The reason, or None.
  """
  spec = FIELDS.get(field)
  if spec is None or spec.fixed is None:
    return None
  return spec.fixed(old, new) if callable(spec.fixed) else spec.fixed


def apply_args(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies config-file arguments, e.g. `configs/wider.py:resnet50`.

  `arg` is a comma-separated list of tokens; a backbone name selects the backbone, and
  `peers_protocol` adds the test split every epoch, reported beside the validation-selected
  result as the peers' protocol (`evaluators.add_peers_protocol`; it never selects).
  `rethinking` takes Rethinking_of_PAR's input (`configs/pedes_baseline/*.yaml`, HEIGHT
  256 and WIDTH 192; `dataset/augmentation.py`: resize to 256x192, pad 10 px of zeros,
  random 256x192 crop, flip; their ImageNet mean and std are the recipes' own), so a recipe
  trains on what their tables were made with. Then the backbone's family recipe, if it has
  one (`recipes.apply`), replaces the config's optimisation fields; `frozen` then keeps the
  backbone frozen for the whole run (only the heads train, as the CLIP-based PAR methods
  do: `recipes.CLIP`).

  Args:
    config: the config to change in place.
    arg: the text after ':' in `--config=path:arg`, or None.

  Returns:
    The same config.
  """
  backbones = tuple(_backbones())
  for token in filter(None, (arg or '').split(',')):
    if token in backbones:
      config.model.backbone = token
    elif token == PEERS_PROTOCOL:
      from jaxattr import evaluators

      evaluators.add_peers_protocol(config)
    elif token == RETHINKING_INPUT:
      config.data.image_size = (256, 192)
      config.data.augment = 'rethinking'
      config.data.crop_padding = 10
      config.data.keep_aspect = False
    elif token != FROZEN_BACKBONE:
      expected = (*backbones, PEERS_PROTOCOL, RETHINKING_INPUT, FROZEN_BACKBONE)
      raise ValueError(f'Unknown config argument {token!r}; expected one of {expected}.')
  from jaxattr import recipes

  recipes.apply(config)
  if FROZEN_BACKBONE in (arg or '').split(','):
    config.train.freeze_backbone_epochs = config.train.num_epochs
  return config


@functools.cache
def load_recipe(name: str) -> types.ModuleType:
  """The recipe `configs/<name>.py` of this repository, loaded by its path as `--config` does.

  Args:
    name: the file's name without `.py`, e.g. 'test'.

  Returns:
    The module; `load_recipe('test').get_config()` is the config of `--config=configs/test.py`.

  Raises:
    FileNotFoundError: there is no such recipe (the message names the path).
  """
  path = RECIPES / f'{name}.py'
  if not path.is_file():
    raise FileNotFoundError(f'{path}: no such recipe.')
  spec = importlib.util.spec_from_file_location(f'jaxattr_recipe_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
