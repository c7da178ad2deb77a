"""What the sweep files share: the row format, the seeds, the CPU-scale base, the run order.

A sweep file (wider_table2.py, peta_table4.py, wider_backbones.py) is a config
file with two more things: `ROWS`, the table's settings, and `sweep(add)`, which
asks the launcher (`experiments.launch`) for every run. Each holds only what is
its own: the rows with the paper's numbers, the base config for real data, the
metric the paper reports. The rest is here.
"""

from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from jaxattr import schema

# A row of a table: (label, dotted config overrides, the paper's number or None).
Row = tuple[str, dict[str, Any], float | None]

# Each row runs with these seeds (initialisation and data order).
SEEDS = (0, 1, 2)

# The CPU-scale budget: the demo's recipe, shortened so a 21-run sweep fits in
# about an hour on two shared cores. The same for every row: nothing is tuned per row.
SYNTHETIC_EPOCHS = 6


def synthetic_base() -> ml_collections.ConfigDict:
  """configs/demo.py at `SYNTHETIC_EPOCHS`, without the attention figure (a sweep reads numbers).

  Returns:
    The base config of every sweep's 'synthetic' variant.
  """
  config = schema.load_recipe('demo').get_config()
  config.train.num_epochs = SYNTHETIC_EPOCHS
  config.eval.attention_grid = False
  return config


def add_runs(add: Callable[..., None], rows: Sequence[Row], seeds: Sequence[int] = SEEDS) -> None:
  """Calls `add(**overrides, seed=seed)` for every row and seed, seed-major.

  All rows of seed 0 come first, then those of seed 1, ...: a sweep cut short
  still has every row.

  Args:
    add: the launcher's callback, taking dotted config keys (and `seed`).
    rows: the table's rows.
    seeds: the seeds of every row.
  """
  for seed in seeds:
    for _, overrides, _ in rows:
      add(**overrides, seed=seed)
