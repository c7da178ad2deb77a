"""RAP v2 (54 attributes, partition 0) — beyond the paper; PETA's recipe.

The short path, for runs from the repository root (`--config=configs/rap2.py`), to
the recipe `jaxattr/configs/rap2.py`, which is installed with jaxattr and holds the
commands and the numbers. A copy of that file works from any directory: it imports
its base from the package.
"""

from jaxattr.configs.rap2 import get_config  # noqa: F401
