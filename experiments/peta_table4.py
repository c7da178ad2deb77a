"""Table 4 of the paper: the components with a light backbone (DenseNet-121) on PETA.

  python -m experiments.launch --sweep=experiments/peta_table4.py --workdir=runs/table4 \
      --config.data.manual_dir=/path/to/PETA --config.model.pretrained=pretrained/densenet121_v1
  python -m experiments.launch --sweep=experiments/peta_table4.py:synthetic --workdir=runs/table4
  python -m experiments.summarize --sweep=experiments/peta_table4.py --workdir=runs/table4

Reading of the table (test F1; columns Class Weight | L_w | Attention |
Multi-scale (feature aggr.) | Multi-scale (score aggr.)), each row adding one tick:

  1 class weights (weighted BCE)                             82.1
  2 + L_w (weighted focal)                                   82.9
  3 + attention at stage 4                                   83.8
  4 + multi-scale, masks summed at feature level             84.1
  5 + multi-scale, logits averaged at score level (= all)    84.7

Table 4 has no L_a column, but §4.4 calls its last row "all components" and puts
it less than 2 F1 below the full ResNet-101 model (86.46), so the attention rows
keep the variance-weighted attention loss L_a: here it is part of "attention".
For row 4, §4.4 tried three feature-level aggregations and found the stride-2
convolution the best of them, so the row uses 'feature_strided_conv'; the two
others (upsample the 7x7 masks, max-pool the 14x14 ones) are run as extra rows
without a paper number.
"""

import ml_collections

from experiments import sweeps
from jaxattr import schema

_ATTENTION = {'loss.primary': 'weighted_focal', 'loss.attention': 'variance_weighted'}
# (label, overrides, the paper's test F1 of DenseNet-121 on PETA; None = not in the table).
ROWS: tuple[sweeps.Row, ...] = (
  (
    '1 class weights',
    {'model.attention.levels': (), 'loss.primary': 'weighted_bce', 'loss.attention': 'bce'},
    82.1,
  ),
  (
    '2 + L_w',
    {'model.attention.levels': (), 'loss.primary': 'weighted_focal', 'loss.attention': 'bce'},
    82.9,
  ),
  ('3 + attention (stage 4)', {'model.attention.levels': (4,), **_ATTENTION}, 83.8),
  (
    '4 + multi-scale, feature aggr. (strided conv)',
    {
      'model.attention.levels': (3, 4),
      'model.attention.aggregation': 'feature_strided_conv',
      **_ATTENTION,
    },
    84.1,
  ),
  (
    '5 + multi-scale, score aggr. (all)',
    {'model.attention.levels': (3, 4), 'model.attention.aggregation': 'score', **_ATTENTION},
    84.7,
  ),
  (
    '4b feature aggr. (upsample)',
    {
      'model.attention.levels': (3, 4),
      'model.attention.aggregation': 'feature_upsample',
      **_ATTENTION,
    },
    None,
  ),
  (
    '4c feature aggr. (max-pool)',
    {
      'model.attention.levels': (3, 4),
      'model.attention.aggregation': 'feature_maxpool',
      **_ATTENTION,
    },
    None,
  ),
)
PAPER_METRIC = 'f1'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The sweep's base config: DenseNet-121.

  Args:
    arg: 'synthetic' for the CPU-scale synthetic base (the Table 2 sweep's, with a
      1/8-width DenseNet-121 and model selection on F1 as for PETA); otherwise the
      tokens of configs/peta.py ('' = DenseNet-121).

  Returns:
    The base config; `sweep` sets the fields that differ between runs.
  """
  if arg == 'synthetic':
    config = sweeps.synthetic_base()
    config.eval.metric = 'f1'
  else:
    config = schema.load_recipe('peta').get_config(arg or None)
  if not arg or arg == 'synthetic':
    config.model.backbone = 'densenet121'
  return config


def sweep(add) -> None:
  """Calls `add(**overrides, seed=...)` for every row of `ROWS` times `sweeps.SEEDS`.

  Args:
    add: callback taking dotted config keys (and `seed`) as keyword arguments.
  """
  sweeps.add_runs(add, ROWS)
