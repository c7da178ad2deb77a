"""The attribute metrics of a split: mAP (VOC and sklearn), mA, instance Acc/Prec/Rec/F1.

Every metric is computed over the whole split (`common.gather`) at
`config.eval.threshold`, overall and per attribute (`metrics.compute_metrics`). On a
dataset with cue boxes the same eval step also gives the pointing game of the masks
and the weighted masks (`pointing.pointing_game`; the `pointing` type adds the CAMs
and the mask entropy).

Options: `select` (its `config.eval.metric` picks the best checkpoint; one
periodic evaluator of the run selects) and `peers_protocol` (on the test split
every epoch: the per-epoch test metrics and their best epoch go to results.json
and results.md under `PEERS_LABEL`, the optimistic protocol of published
comparisons that pick the epoch on test; never used for selection).
"""

from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxattr import metrics
from jaxattr.evaluators import common, pointing

SCALAR_KEYS = ('map_voc', 'map_sklearn', 'ma', 'acc', 'prec', 'rec', 'f1')
PEERS_LABEL = "best epoch on test (the peers' protocol; optimistic)"


def compute_results(
  data: dict[str, np.ndarray],
  names: Sequence[str],
  threshold: float | np.ndarray,
  grids: dict[int, tuple[int, int]] | None = None,
) -> dict[str, Any]:
  """Every metric of a gathered split (`common.gather`), as plain Python numbers.

  Args:
    data: `probs`, `labels`, `index` and, on synthetic data, the cells and boxes.
    names: attribute names.
    threshold: decision threshold(s) of the threshold-dependent metrics.
    grids: (h, w) of the masks per attention level, for the pointing game.

  Returns:
    `metrics.compute_metrics`'s dict plus `num_examples` and, with cue boxes,
    `pointing_game`.
  """
  result = metrics.compute_metrics(data['probs'], data['labels'], names, threshold=threshold)
  result['num_examples'] = int(len(data['index']))
  if 'cue_boxes' in data:
    result['pointing_game'] = pointing.pointing_game(data, names, grids or {})
  return result


def metric_key(eval_config: ml_collections.ConfigDict) -> str:
  """The key of the selection metric `config.eval.metric` ('map' with `config.eval.ap`)."""
  return {'map': f'map_{eval_config.ap}', 'ma': 'ma', 'f1': 'f1'}[eval_config.metric]


def flat_scalars(result: dict[str, Any]) -> dict[str, float]:
  """The overall metrics of a split's result (what the metric writers log)."""
  return {k: result[k] for k in SCALAR_KEYS if k in result}


class AttributesEvaluator(common.Evaluator):
  """Every attribute metric of the split, overall and per attribute."""

  OPTIONS = {'select': False, 'peers_protocol': False}

  @classmethod
  def check(cls, name: str, spec: dict[str, Any]) -> list[str]:
    problems = [
      f'config.evals.{name}.{option}: must be True or False, got {spec[option]!r}'
      for option in cls.OPTIONS
      if not isinstance(spec[option], bool)
    ]
    peers = spec['peers_protocol'] is True
    if peers and (spec['split'] != 'test' or spec['select'] or spec['at_end']):
      problems.append(
        f"config.evals.{name}.peers_protocol: reads split='test' every epoch, with "
        'select=False and at_end=False'
      )
    if peers and not spec['every_epochs']:
      problems.append(f'config.evals.{name}.peers_protocol: needs every_epochs > 0')
    return problems

  def evaluate(self, variables: dict[str, Any]) -> dict[str, Any]:
    return self.evaluate_with_data(variables)[0]

  def evaluate_with_data(
    self, variables: dict[str, Any]
  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(`compute_results`'s dict, the gathered predictions) of the split."""
    ctx = self.ctx
    data = ctx.predictions(variables, self.spec['split'])
    grids = ctx.grids(variables) if ctx.info.has_cue_boxes else None
    return compute_results(data, ctx.names, ctx.config.eval.threshold, grids), data

  def scalars(self, details: dict[str, Any]) -> dict[str, float]:
    return flat_scalars(details)

  def curve(self, rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """With `peers_protocol`: the per-epoch metrics and the epoch with the best `metric`."""
    if not self.spec['peers_protocol']:
      return None
    prefix = f'{self.name}/'
    per_epoch = [
      {'step': r['step'], **{k[len(prefix) :]: v for k, v in r.items() if k.startswith(prefix)}}
      for r in rows
      if prefix + metric in r
    ]
    if not per_epoch:
      return None
    best = max(per_epoch, key=lambda e: e[metric])  # The first of equal values.
    return {'label': PEERS_LABEL, 'metric': metric, 'best': best, 'per_epoch': per_epoch}
