"""The one results table writer: evaluators' results as markdown (train and evaluate).

`results_markdown` turns the `details` of evaluators, keyed by a label (the split
or the evaluator's results key), into the tables of results.md and of
`jaxattr.evaluate`'s output: the overall attribute metrics of every labelled
result, the per-attribute metrics and the pointing game of the main one, and the
metrics under tuned thresholds. Percentages; 'n/a' where a metric is undefined
(an attribute without labelled positives).
"""

import math
from typing import Any

OVERALL = (
  ('map_voc', 'mAP (voc)'),
  ('map_sklearn', 'mAP (sklearn)'),
  ('ma', 'mA'),
  ('acc', 'Acc'),
  ('prec', 'Prec'),
  ('rec', 'Rec'),
  ('f1', 'F1'),
)
PER_ATTRIBUTE = (
  ('ap_voc', 'AP (voc)'),
  ('ap_sklearn', 'AP (sklearn)'),
  ('ma', 'mA'),
  ('precision', 'Prec'),
  ('recall', 'Rec'),
  ('f1', 'F1'),
)
# Under tuned thresholds: the metrics that depend on the threshold.
OVERALL_T = ('ma', 'acc', 'prec', 'rec', 'f1')
PER_ATTRIBUTE_T = ('precision', 'recall', 'f1', 'ma')


def pct(value: float | None, digits: int = 2) -> str:
  """A fraction as a percentage; 'n/a' for None or NaN (no labelled positive)."""
  if value is None or not math.isfinite(value):
    return 'n/a'
  return f'{100 * value:.{digits}f}'


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
  return [
    '| ' + ' | '.join(head) + ' |',
    '|' + '---|' * len(head),
    *('| ' + ' | '.join(r) + ' |' for r in rows),
  ]


def _is_attributes(result: Any) -> bool:
  return isinstance(result, dict) and 'map_voc' in result and 'per_attribute' in result


def results_markdown(title: str, summary: str, sections: dict[str, dict[str, Any]]) -> str:
  """The tables of labelled evaluator results.

  Args:
    title: the heading (e.g. the dataset).
    summary: one paragraph under it (steps, checkpoint, wall time).
    sections: {label: an evaluator's `details`}; the main result is 'test' if present,
      else the first attribute result.

  Returns:
    The markdown text.
  """
  lines = [f'# Results: {title}', '', summary]
  attrs = {k: v for k, v in sections.items() if _is_attributes(v)}
  main = 'test' if 'test' in attrs else next(iter(attrs), None)
  if attrs:
    lines.append('')
    lines += _table(
      ['split', *(h for _, h in OVERALL)],
      [[label, *(pct(r[k]) for k, _ in OVERALL)] for label, r in attrs.items()],
    )
    lines.append('')
    lines += _table(
      [f'attribute ({main})', *(h for _, h in PER_ATTRIBUTE), 'positives'],
      [
        [name, *(pct(r[k]) for k, _ in PER_ATTRIBUTE), str(r['positives'])]
        for name, r in attrs[main]['per_attribute'].items()
      ],
    )
  for label, r in sections.items():
    if 'pointing_game' in r and (label not in attrs or label == main):
      lines.append('')
      lines += _table(
        [f'pointing game ({label})', 'overall', 'chance'],
        [[k, pct(v['overall'], 1), pct(v['chance'], 1)] for k, v in r['pointing_game'].items()],
      )
  for label, r in sections.items():
    if 'per_epoch' in r:
      best, metric = r['best'], r['metric']
      lines += [
        '',
        f'{label}: {r["label"]}: {metric} {pct(best[metric])} at step {best["step"]}. Not '
        'used to select the checkpoint above; reported for comparison with published numbers.',
        '',
      ]
      lines += _table(
        ['step', *(h for _, h in OVERALL)],
        [[str(e['step']), *(pct(e.get(k)) for k, _ in OVERALL)] for e in r['per_epoch']],
      )
  for label, r in sections.items():
    if 'thresholds' in r:
      m = r['metrics']
      lines += [
        '',
        f'{label}: per-attribute thresholds tuned on {r["tuned_on"]} ({r["criterion"]}), '
        f'applied to {r["applied_to"]}.',
        '',
      ]
      lines += _table(['mA', 'Acc', 'Prec', 'Rec', 'F1'], [[pct(m[k]) for k in OVERALL_T]])
      lines.append('')
      lines += _table(
        ['attribute', 'threshold', 'Prec', 'Rec', 'F1', 'mA'],
        [
          [name, f'{r["thresholds"][name]:.4f}', *(pct(a[k]) for k in PER_ATTRIBUTE_T)]
          for name, a in m['per_attribute'].items()
        ],
      )
  return '\n'.join(lines) + '\n'


def pointing_game_lines(result: dict[str, Any]) -> list[str]:
  """One line per mask kind: the measured pointing-game rate beside its chance level."""
  return [
    f'pointing game {name}: {100 * r["overall"]:.1f} % (chance {100 * r["chance"]:.1f} %)'
    for name, r in result.get('pointing_game', {}).items()
  ]
