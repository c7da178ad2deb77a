"""Models: torchvision-layout backbones (registered in `registry`), the attention heads and
the attribute model."""

from jaxattr.models.model import (
  AGGREGATIONS,
  LEVELS,
  STOCHASTIC_DEPTH_FAMILIES,
  AttributeModel,
  create_model,
  validate_attention,
)
from jaxattr.models.registry import BACKBONES, Backbone, backbone_tap_channels, create_backbone

__all__ = [
  'AGGREGATIONS',
  'BACKBONES',
  'LEVELS',
  'STOCHASTIC_DEPTH_FAMILIES',
  'AttributeModel',
  'Backbone',
  'backbone_tap_channels',
  'create_backbone',
  'create_model',
  'validate_attention',
]
