"""The attribute model: backbone, primary classifier, attention, aggregation.

Top-level parameters (and batch_stats) of `AttributeModel`:

  backbone              the backbone's whole tree, torchvision names, no ImageNet
                        head (the converter and the frozen stage rely on this name);
                        any entry of `registry.BACKBONES`
  classifier            primary Dense(C) on the backbone's `pooled` vector, what its
                        ImageNet head reads (ResNet / DenseNet: the global average of
                        k2; ViT: the class token) (Glorot init)
  attention3/4          score-level heads, each `mask` + `classifier`
                        (`aggregation='score'`, one per entry of `levels`)
  mask3, mask4          feature-level variants: the two mask branches ...
  downsample            ... the stride-2 conv ('feature_strided_conv' only) ...
  attention_classifier  ... and the one classifier on the summed weighted masks

The output is a dict of float32 arrays (float64 with float64 compute): `logits` (the
mean of primary and attention logits), `primary_logits`, `attention_logits` [L, B, C],
and the tuples `masks` and `confidences` ([B, Hi, Wi, C] per entry of `levels`) for the
tools that draw them.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxattr.models.attention import (
  AttentionClassifier,
  AttentionHead,
  AttentionMask,
  StridedConvDown,
  at_least_float32,
  max_pool_to,
  upsample_to,
)
from jaxattr.models.registry import BACKBONES, backbone_tap_channels, create_backbone
from jaxattr.models.resnet import scale_channels

Array = jax.Array
Dtype = Any

__all__ = [
  'AGGREGATIONS',
  'BACKBONES',
  'LEVELS',
  'STOCHASTIC_DEPTH_FAMILIES',
  'AttributeModel',
  'backbone_tap_channels',
  'create_backbone',
  'create_model',
  'validate_attention',
]

LEVELS = ((), (3,), (4,), (3, 4))
AGGREGATIONS = ('score', 'feature_upsample', 'feature_maxpool', 'feature_strided_conv')
# The backbone families with stochastic depth (their `stochastic_depth_prob`); torchvision's
# ViT, ResNet and DenseNet have none.
STOCHASTIC_DEPTH_FAMILIES = ('swin', 'convnext')


def validate_attention(levels: Sequence[int], aggregation: str) -> tuple[int, ...]:
  """Checks an attention configuration.

  Args:
    levels: attention levels, one of (), (3,), (4,), (3, 4).
    aggregation: one of `AGGREGATIONS`; the feature-level ones need levels (3, 4).

  Returns:
    `levels` as a tuple.

  Raises:
    ValueError: for an unknown or meaningless combination.
  """
  levels = tuple(levels)
  if levels not in LEVELS:
    raise ValueError(f'attention.levels must be one of {LEVELS}, got {levels}.')
  if aggregation not in AGGREGATIONS:
    raise ValueError(f'attention.aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.')
  if aggregation != 'score' and levels != (3, 4):
    raise ValueError(
      f'attention.aggregation={aggregation!r} sums the masks of two levels and needs '
      f'attention.levels=(3, 4), got {levels}.'
    )
  return levels


class AttributeModel(nn.Module):
  """Backbone + primary classifier + attention heads, aggregated at score or feature level.

  Attributes:
    num_classes: number of attributes C.
    backbone_name: a key of `BACKBONES`.
    width: channel multiplier of backbone and heads.
    depth: block multiplier of the backbone's stages (1.0 = torchvision).
    levels: attention levels: (), (3,), (4,) or (3, 4).
    aggregation: one of `AGGREGATIONS`.
    confidence_weighting: use the confidence branch (else s = 1).
    mask_channels: hidden width of the mask branch (before `width`).
    classifier_channels: conv widths of the attention classifier (before `width`).
    remat: rematerialise each backbone block in the backward pass (less memory, about
      one more forward pass of compute; same parameters and gradients).
    dtype: compute dtype.
    param_dtype: parameter dtype.
    drop_path_rate: the backbone's stochastic depth in training (0 = off; a family of
      `STOCHASTIC_DEPTH_FAMILIES`), drawn from the 'dropout' RNG stream.
  """

  num_classes: int
  backbone_name: str = 'resnet101'
  width: float = 1.0
  depth: float = 1.0
  levels: Sequence[int] = (3, 4)
  aggregation: str = 'score'
  confidence_weighting: bool = True
  mask_channels: int = 256
  classifier_channels: Sequence[int] = (256, 512, 512)
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, images: Array, train: bool, freeze_backbone: bool = False) -> dict[str, Any]:
    """Runs the model.

    Args:
      images: float [B, H, W, 3], already normalised.
      train: BatchNorm uses (and updates) batch statistics if True.
      freeze_backbone: the backbone's BatchNorm uses its running averages (its
        batch_stats stay unchanged) and no gradient reaches its parameters; the
        heads still follow `train`.

    Returns:
      A dict: `logits` [B, C] (mean of primary and attention logits),
      `primary_logits` [B, C], `attention_logits` [L, B, C], `masks` and
      `confidences` (tuples over `levels` of [B, Hi, Wi, C]); all float32.
    """
    levels = validate_attention(self.levels, self.aggregation)
    dt, pdt = self.dtype, self.param_dtype
    backbone = create_backbone(
      self.backbone_name,
      width=self.width,
      dtype=dt,
      param_dtype=pdt,
      module_name='backbone',
      depth=self.depth,
      **({'stochastic_depth_prob': self.drop_path_rate} if self.drop_path_rate else {}),
      remat=self.remat,
    )
    taps = backbone(images, train=train and not freeze_backbone)
    if freeze_backbone:
      taps = jax.lax.stop_gradient(taps)
    features = {3: taps['k1'], 4: taps['k2']}

    # The vector the backbone's ImageNet head reads (ResNet: the average of k2; ViT:
    # the class token), so the primary classifier sits where that head sat.
    pooled = at_least_float32(taps['pooled'])
    primary = nn.Dense(
      self.num_classes,
      kernel_init=nn.initializers.xavier_uniform(),
      bias_init=nn.initializers.zeros,
      dtype=dt,
      param_dtype=pdt,
      name='classifier',
    )(pooled)
    primary = at_least_float32(primary)

    mask_channels = scale_channels(self.mask_channels, self.width)
    classifier_channels = tuple(scale_channels(c, self.width) for c in self.classifier_channels)
    attention_logits, masks, confidences = [], [], []
    if self.aggregation == 'score':
      for level in levels:
        logits, a, s = AttentionHead(
          self.num_classes,
          mask_channels,
          classifier_channels,
          self.confidence_weighting,
          dt,
          pdt,
          name=f'attention{level}',
        )(features[level], train)
        attention_logits.append(logits)
        masks.append(a)
        confidences.append(s)
    else:
      weighted = {}
      for level in levels:
        a, s, weighted[level] = AttentionMask(
          self.num_classes,
          mask_channels,
          self.confidence_weighting,
          dt,
          pdt,
          name=f'mask{level}',
        )(features[level], train)
        masks.append(a)
        confidences.append(s)
      u3, u4 = weighted[3], weighted[4]
      if u3.shape[1:3] == u4.shape[1:3] and self.aggregation != 'feature_strided_conv':
        # One grid for both taps (ViT): resizing either onto the other is the identity.
        u = u3 + u4
      elif self.aggregation == 'feature_upsample':
        u = u3 + upsample_to(u4, u3.shape[1:3])
      elif self.aggregation == 'feature_maxpool':
        u = u4 + max_pool_to(u3, u4.shape[1:3])
      else:
        u = u4 + StridedConvDown(self.num_classes, dt, pdt, name='downsample')(u3, u4.shape[1:3])
      attention_logits.append(
        AttentionClassifier(
          self.num_classes, classifier_channels, dt, pdt, name='attention_classifier'
        )(u, train)
      )

    if attention_logits:
      stacked = jnp.stack(attention_logits)
    else:
      stacked = jnp.zeros((0, *primary.shape), primary.dtype)
    return {
      'logits': jnp.mean(jnp.concatenate([primary[None], stacked]), axis=0),
      'primary_logits': primary,
      'attention_logits': stacked,
      'masks': tuple(masks),
      'confidences': tuple(confidences),
    }


def create_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The `AttributeModel` described by `config.model`.

  Args:
    model_config: `config.model` of configs/default.py (backbone, width, depth, remat,
      dtype, param_dtype, drop_path_rate, attention.{levels, aggregation, confidence_weighting,
      mask_channels, classifier_channels}).
    num_classes: number of attributes C.

  Returns:
    The (unbound) model.

  Raises:
    ValueError: for an unknown backbone or an invalid attention configuration.
  """
  attention = model_config.attention
  levels = validate_attention(attention.levels, attention.aggregation)
  if model_config.backbone not in BACKBONES:
    raise ValueError(
      f'Unknown backbone {model_config.backbone!r}; expected one of {sorted(BACKBONES)}.'
    )
  return AttributeModel(
    num_classes=num_classes,
    backbone_name=model_config.backbone,
    width=float(model_config.width),
    depth=float(model_config.get('depth', 1.0)),  # Runs saved before `depth`: full.
    levels=levels,
    aggregation=attention.aggregation,
    confidence_weighting=bool(attention.confidence_weighting),
    mask_channels=int(attention.mask_channels),
    classifier_channels=tuple(int(c) for c in attention.classifier_channels),
    remat=bool(model_config.get('remat', False)),  # Runs saved before `remat`: off.
    dtype=jnp.dtype(model_config.dtype),
    param_dtype=jnp.dtype(model_config.param_dtype),
    drop_path_rate=float(model_config.get('drop_path_rate', 0.0)),  # Runs saved before it: off.
  )
