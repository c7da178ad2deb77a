"""Per-attribute decision thresholds tuned on one split, scored on another.

Per attribute, the threshold that maximises that attribute's F1 on `split` (the
validation split by default; never the test split), applied to `apply_to` (the
test split by default): the threshold-dependent metrics under the tuned thresholds,
reported beside (never instead of) the ones at `config.eval.threshold`.
`jaxattr.evaluate --tune_thresholds` saves them for `jaxattr.predict` and
`jaxattr.export` (`files.write_thresholds`).

Options: `apply_to` (a split role or name).
"""

from typing import Any

import numpy as np
from absl import logging

from jaxattr import metrics
from jaxattr.evaluators import common

THRESHOLD_METRICS = ('ma', 'acc', 'prec', 'rec', 'f1')
CRITERION = 'per-attribute F1'


def tune_thresholds(probs: np.ndarray, labels: np.ndarray, default: float = 0.5) -> np.ndarray:
  """Per attribute, the threshold t maximising the F1 of `p > t` on these labels.

  Unknown labels (-1) are left out. Every distinct cut of the sorted probabilities
  is tried; the threshold is the midpoint between the last score predicted
  positive and the next one (half the lowest score when all are positive). Among
  equal F1 the highest threshold wins. An attribute without labelled positives
  keeps `default`.

  Args:
    probs: float [N, C].
    labels: int [N, C] with 1 / 0 / -1.
    default: threshold of attributes that cannot be tuned.

  Returns:
    float64 [C].
  """
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  thresholds = np.full(probs.shape[1], float(default))
  for c in range(probs.shape[1]):
    known = labels[:, c] >= 0
    p, y = probs[known, c], labels[known, c] == 1
    num_pos = int(y.sum())
    if num_pos == 0:
      continue
    order = np.argsort(-p, kind='stable')
    p, y = p[order], y[order]
    tp = np.cumsum(y)
    k = np.arange(1, len(p) + 1)  # Predicted positives when cutting after position k.
    f1 = 2 * tp / (k + num_pos)
    # Only cut between distinct scores: `p > t` cannot split a tie.
    valid = np.append(p[:-1] > p[1:], True)
    f1 = np.where(valid, f1, -1.0)
    best = int(np.argmax(f1))  # First maximum: the fewest positives, the highest threshold.
    thresholds[c] = (p[best] + p[best + 1]) / 2 if best + 1 < len(p) else p[best] / 2
  return thresholds


class ThresholdsEvaluator(common.Evaluator):
  """Thresholds tuned per attribute on `split`; the metrics they give on `apply_to`."""

  OPTIONS = {'apply_to': 'test'}

  @classmethod
  def check(cls, name: str, spec: dict[str, Any]) -> list[str]:
    problems = []
    if spec['split'] == 'test':
      problems.append(f'config.evals.{name}.split: thresholds are never tuned on the test split')
    if not isinstance(spec['apply_to'], str) or not spec['apply_to']:
      problems.append(
        f'config.evals.{name}.apply_to: must be a split name, got {spec["apply_to"]!r}'
      )
    return problems

  def evaluate(self, variables: dict[str, Any]) -> dict[str, Any]:
    ctx = self.ctx
    tuned_on = self.split
    applied_to = common.split_name(ctx.config.data, self.spec['apply_to'])
    if tuned_on == ctx.config.data.test_split:
      raise ValueError(
        f'config.evals.{self.name}: {tuned_on} is the test split; thresholds are never '
        'tuned on test.'
      )
    if applied_to == tuned_on:
      logging.warning('Thresholds tuned and applied on %s: tuned numbers are optimistic.', tuned_on)
    tune = ctx.predictions(variables, tuned_on)
    data = tune if applied_to == tuned_on else ctx.predictions(variables, applied_to)
    thresholds = tune_thresholds(tune['probs'], tune['labels'], ctx.config.eval.threshold)
    names = ctx.names
    tuned = metrics.compute_metrics(data['probs'], data['labels'], names, threshold=thresholds)
    per_attr = {
      n: {k: tuned['per_attribute'][n][k] for k in ('precision', 'recall', 'f1', 'ma')}
      for n in names
    }
    return {
      'tuned_on': tuned_on,
      'applied_to': applied_to,
      'criterion': CRITERION,
      'thresholds': {n: float(t) for n, t in zip(names, thresholds, strict=True)},
      'metrics': {**{k: tuned[k] for k in THRESHOLD_METRICS}, 'per_attribute': per_attr},
    }

  def scalars(self, details: dict[str, Any]) -> dict[str, float]:
    return {k: details['metrics'][k] for k in THRESHOLD_METRICS}
