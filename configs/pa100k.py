"""PA-100K (26 attributes) — beyond the paper; PETA's recipe.

The short path, for runs from the repository root (`--config=configs/pa100k.py`), to
the recipe `jaxattr/configs/pa100k.py`, which is installed with jaxattr and holds the
commands and the numbers. A copy of that file works from any directory: it imports
its base from the package.
"""

from jaxattr.configs.pa100k import get_config  # noqa: F401
