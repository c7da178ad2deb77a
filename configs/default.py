"""Default configuration: every knob of a jaxattr run, with its default.

The short path, for runs from the repository root (`--config=configs/default.py`), to
the recipe `jaxattr/configs/default.py`, which is installed with jaxattr and holds the
commands and the numbers. A copy of that file works from any directory: it imports
its base from the package.
"""

from jaxattr.configs.default import BACKBONES, apply_args, get_config  # noqa: F401
