"""Models: torchvision-layout backbones, the attention heads and the attribute model."""

from jaxattr.models.model import (
  AGGREGATIONS,
  BACKBONES,
  LEVELS,
  AttributeModel,
  backbone_tap_channels,
  create_backbone,
  create_model,
  validate_attention,
)

__all__ = [
  'AGGREGATIONS',
  'BACKBONES',
  'LEVELS',
  'AttributeModel',
  'backbone_tap_channels',
  'create_backbone',
  'create_model',
  'validate_attention',
]
