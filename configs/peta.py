"""PETA (35 attributes), the paper's recipe.

The short path, for runs from the repository root (`--config=configs/peta.py`), to
the recipe `jaxattr/configs/peta.py`, which is installed with jaxattr and holds the
commands and the numbers. A copy of that file works from any directory: it imports
its base from the package.
"""

from jaxattr.configs.peta import get_config  # noqa: F401
