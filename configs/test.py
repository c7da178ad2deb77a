"""A tiny run of the whole system, for tests and smoke checks (seconds on a CPU).

The short path, for runs from the repository root (`--config=configs/test.py`), to
the recipe `jaxattr/configs/test.py`, which is installed with jaxattr and holds the
commands and the numbers. A copy of that file works from any directory: it imports
its base from the package.
"""

from jaxattr.configs.test import get_config  # noqa: F401
