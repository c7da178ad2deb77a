"""Your own attributes: a folder of images plus a CSV (see docs/custom_data.md).

The short path, for runs from the repository root (`--config=configs/custom.py`), to
the recipe `jaxattr/configs/custom.py`, which is installed with jaxattr and holds the
commands and the numbers. A copy of that file works from any directory: it imports
its base from the package.
"""

from jaxattr.configs.custom import get_config  # noqa: F401
