"""The attribute metrics of a split: mAP (VOC and sklearn), mA, instance Acc/Prec/Rec/F1.

Every metric is computed over the whole split (`common.gather`) at
`config.eval.threshold`, overall and per attribute (`metrics.compute_metrics`). On a
dataset with cue boxes the same eval step also gives the pointing game of the masks
and the weighted masks (`pointing.pointing_game`; the `pointing` type adds the CAMs
and the mask entropy).

Options: `select` (its `config.eval.metric` picks the best checkpoint; one
periodic evaluator of the run selects).
"""

from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxattr import metrics
from jaxattr.evaluators import common, pointing

SCALAR_KEYS = ('map_voc', 'map_sklearn', 'ma', 'acc', 'prec', 'rec', 'f1')


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

  OPTIONS = {'select': False}

  @classmethod
  def check(cls, name: str, spec: dict[str, Any]) -> list[str]:
    if isinstance(spec['select'], bool):
      return []
    return [f'config.evals.{name}.select: must be True or False, got {spec["select"]!r}']

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
