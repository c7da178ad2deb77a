"""WIDER-Attribute's 14 attribute names, in the dataset's order.

TensorFlow-free, so that both the WIDER builder (`jaxattr.data.wider`) and the
synthetic pedestrians that mimic WIDER (`jaxattr.data.pedestrians`) read them from
here.
"""

ATTRIBUTE_NAMES = (
  'Male',
  'longHair',
  'sunglass',
  'Hat',
  'Tshirt',
  'longSleeve',
  'formal',
  'shorts',
  'jeans',
  'longPants',
  'skirt',
  'faceMask',
  'logo',
  'stripe',
)
