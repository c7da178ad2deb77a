"""WIDER-Attribute, the paper's recipe (supplementary + authors' answers).

The short path, for runs from the repository root (`--config=configs/wider.py`), to
the recipe `jaxattr/configs/wider.py`, which is installed with jaxattr and holds the
commands and the numbers. A copy of that file works from any directory: it imports
its base from the package.
"""

from jaxattr.configs.wider import (  # noqa: F401
  TRANSFORMER_FAMILIES,
  TRANSFORMER_RECIPE,
  get_config,
  transformer_recipe,
)
