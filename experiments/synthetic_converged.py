r"""Table 2 (right) on the synthetic data at a budget meant to converge: rows 3, 4, 6, 7.

  python -m experiments.launch --sweep=experiments/synthetic_converged.py \
      --workdir=runs/table2_24ep
  python -m experiments.summarize --sweep=experiments/synthetic_converged.py \
      --workdir=runs/table2_24ep --out=experiments/results/synthetic_table2_24ep.md

The rows of `wider_table2.ROWS` that add one part of the method each (+L_w,
+attention, +multi-scale, all), with `sweeps.SEEDS`, on the demo's recipe
(configs/demo.py) at 24 epochs instead of the quick sweep's 6: the 10-epoch demo
still gains 0.1-1.2 validation mAP per epoch over its last four epochs.
"""

import ml_collections

from experiments import sweeps
from experiments.wider_table2 import PAPER_METRIC, ROWS  # noqa: F401  (summarize reads them)

ROWS = tuple(row for row in ROWS if row[0].split()[0] in ('3', '4', '6', '7'))
EPOCHS = 24


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The synthetic sweep base (configs/demo.py, no attention figure) at `EPOCHS`."""
  del arg
  config = sweeps.synthetic_base()
  config.train.num_epochs = EPOCHS
  return config


def sweep(add) -> None:
  """Calls `add(**overrides, seed=...)` for rows 3, 4, 6 and 7 times `sweeps.SEEDS`."""
  sweeps.add_runs(add, ROWS)
