"""The embedded demo: the paper's model, small, on the synthetic pedestrians (CPU).

The short path, for runs from the repository root (`--config=configs/demo.py`), to
the recipe `jaxattr/configs/demo.py`, which is installed with jaxattr and holds the
commands and the numbers. A copy of that file works from any directory: it imports
its base from the package.
"""

from jaxattr.configs.demo import get_config  # noqa: F401
