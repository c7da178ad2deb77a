"""Table 2 (right) of the paper: what each component adds, ResNet-101 on WIDER-Attribute.

  python -m experiments.launch --sweep=experiments/wider_table2.py --workdir=runs/table2 \
      --config.data.manual_dir=/path/to/wider_attribute          # the paper's setting (GPU)
  python -m experiments.launch --sweep=experiments/wider_table2.py:synthetic \
      --workdir=runs/table2                                      # the CPU-scale ablation
  python -m experiments.summarize --sweep=experiments/wider_table2.py:synthetic \
      --workdir=runs/table2

Reading of the table. Its text extraction shows six rows with ticks under
"L_w | Attention | L_a | Multi-scale", and §4.2 adds the class-weights step
(83.7 -> 84.0) that the table leaves out, so there are seven settings:

  1 primary only, plain BCE                          83.7
  2 + class weights (weighted BCE, VeSPA weights)    84.0  (text only)
  3 + L_w (weighted focal)                           84.4
  4 + attention at stage 4, attention loss L_b       85.0
  5 + L_a (variance-weighted attention loss)         85.7  = 4 + L_a
  6 + multi-scale (stages 3 and 4), attention L_b    85.9  = 4 + multi-scale, NOT 5 + ...
  7 all: multi-scale and L_a                         86.4

Rows 1-4 are cumulative. Rows 5 and 6 each add ONE component to row 4 (the ticks
of the table: row 6 has "Multi-scale" but not "L_a"), and row 7 has both. Every
row from 3 on keeps L_w on the primary logits; the aggregation is at score level
and the confidence weighting is on wherever there is attention.

Each row runs with `sweeps.SEEDS` (initialisation and data order), seed-major.
"""

import ml_collections

from experiments import sweeps
from jaxattr import schema

# (label, overrides, the paper's test mAP of ResNet-101 on WIDER-Attribute, docs/method.md).
ROWS: tuple[sweeps.Row, ...] = (
  (
    '1 primary only, BCE',
    {'model.attention.levels': (), 'loss.primary': 'bce', 'loss.attention': 'bce'},
    83.7,
  ),
  (
    '2 + class weights',
    {'model.attention.levels': (), 'loss.primary': 'weighted_bce', 'loss.attention': 'bce'},
    84.0,
  ),
  (
    '3 + L_w',
    {'model.attention.levels': (), 'loss.primary': 'weighted_focal', 'loss.attention': 'bce'},
    84.4,
  ),
  (
    '4 + attention (stage 4)',
    {'model.attention.levels': (4,), 'loss.primary': 'weighted_focal', 'loss.attention': 'bce'},
    85.0,
  ),
  (
    '5 = 4 + L_a',
    {
      'model.attention.levels': (4,),
      'loss.primary': 'weighted_focal',
      'loss.attention': 'variance_weighted',
    },
    85.7,
  ),
  (
    '6 = 4 + multi-scale',
    {
      'model.attention.levels': (3, 4),
      'loss.primary': 'weighted_focal',
      'loss.attention': 'bce',
    },
    85.9,
  ),
  (
    '7 all (multi-scale + L_a)',
    {
      'model.attention.levels': (3, 4),
      'loss.primary': 'weighted_focal',
      'loss.attention': 'variance_weighted',
    },
    86.4,
  ),
)
# The metric the paper reports for this table (a key of results.json's test dict).
PAPER_METRIC = 'map_voc'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The sweep's base config.

  Args:
    arg: 'synthetic' for the CPU-scale synthetic base (configs/demo.py, shorter);
      otherwise the tokens of configs/wider.py (e.g. '' or 'resnet50').

  Returns:
    The base config; `sweep` sets the fields that differ between runs.
  """
  if arg == 'synthetic':
    return sweeps.synthetic_base()
  return schema.load_recipe('wider').get_config(arg)


def sweep(add) -> None:
  """Calls `add(**overrides, seed=...)` for every row of `ROWS` times `sweeps.SEEDS`.

  Args:
    add: callback taking dotted config keys (and `seed`) as keyword arguments.
  """
  sweeps.add_runs(add, ROWS)
