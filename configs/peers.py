"""The peers' datasets and splits (Rethinking_of_PAR's dataset files).

The short path, for runs from the repository root (`--config=configs/peers.py:petazs`),
to the recipe `jaxattr/configs/peers.py`, which is installed with jaxattr and holds the
commands. A copy of that file works from any directory: it imports its base from the
package.
"""

from jaxattr.configs.peers import get_config  # noqa: F401
