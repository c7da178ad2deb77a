r"""Collects the results of a sweep into a markdown table, seeds aggregated.

  python -m experiments.summarize --sweep=experiments/wider_table2.py:synthetic \
      --workdir=runs/table2 --out=experiments/results/synthetic_table2.md

One row per configuration (the overrides of a run without its `seed`): the test
metric of the paper's table (mean ± sample standard deviation over the seeds, and
n), its difference to the first row, the APs of the three rarest attributes (by
training positive ratio), and on synthetic data the pointing-game accuracy of the
confidence-weighted attention masks of both levels ('—' where a level is absent).
On a real dataset the paper's number stands beside ours. Two convergence columns:
the best validation step as a share of training, and how much the validation
metric still rose in the last fifth of training (best value minus the value at the
last evaluation at or before 80 % of the steps, from metrics.jsonl). Above the
table: the budget, read from the runs' config.json, and their wall time.
"""

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags, logging

from experiments import launch
from jaxattr.run import layout

_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file, optionally with an argument: path[:arg].')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Root folder the sweep was launched into.')
_OUT = flags.DEFINE_string('out', '', 'Write the markdown here ("" = print it).')
_NOTE = flags.DEFINE_string('note', '', 'A line of provenance to put under the title.')

# Config fields that set the budget and the recipe (stated above the table).
BUDGET_KEYS = (
  'data.name',
  'data.builder_config',
  'data.image_size',
  'model.backbone',
  'model.width',
  'model.pretrained',
  'train.num_epochs',
  'train.batch_size',
  'train.freeze_backbone_epochs',
  'optimizer.name',
  'optimizer.learning_rate',
  'schedule.name',
  'history.start_epoch',
  'eval.metric',
)
POINTING_KEYS = ('weighted_3', 'weighted_4')
METRIC_NAMES = {'map_voc': 'mAP (voc)', 'map_sklearn': 'mAP (sklearn)', 'f1': 'F1', 'ma': 'mA'}
DASH = '—'


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
  """(mean, sample standard deviation (ddof 1; nan for one value), n)."""
  x = np.asarray(values, np.float64)
  std = float(np.std(x, ddof=1)) if len(x) > 1 else math.nan
  return float(np.mean(x)), std, len(x)


def format_mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
  """'mean ± std' in percent ('mean' alone for one value, '—' for none)."""
  if not values:
    return DASH
  mean, std, _ = mean_std(values)
  if math.isnan(std):
    return f'{scale * mean:.{digits}f}'
  return f'{scale * mean:.{digits}f} ± {scale * std:.{digits}f}'


def get_key(tree: dict[str, Any], dotted: str) -> Any:
  """tree['a']['b'] for 'a.b' (None if missing)."""
  for part in dotted.split('.'):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return tree


def load_run(run_dir: Path) -> dict[str, Any] | None:
  """results.json, config.json, attributes.json and metrics.jsonl's rows of a finished run.

  None if unfinished; missing optional files give {} (rows: []).
  """
  if not launch.is_finished(run_dir):
    return None
  run = {'results': json.loads((run_dir / layout.RESULTS).read_text())}
  for name, path in (
    ('config', run_dir / layout.CONFIG),
    ('attributes', run_dir / layout.ATTRIBUTES),
  ):
    run[name] = json.loads(path.read_text()) if path.is_file() else {}
  path = layout.metrics_path(run_dir)
  lines = path.read_text().splitlines() if path.is_file() else []
  run['rows'] = [json.loads(line) for line in lines]
  return run


def last_fifth_gain(run: dict[str, Any], metric: str) -> float | None:
  """Best validation `metric` minus its value at the last evaluation at or before 80 % of
  the run's steps (None without such an evaluation)."""
  key = f'val/{metric}'
  curve = {r['step']: r[key] for r in run['rows'] if key in r}
  early = [step for step in curve if step <= 0.8 * run['results']['steps']]
  if not early:
    return None
  return max(curve.values()) - curve[max(early)]


def _row_info(module, overrides: dict[str, Any]) -> tuple[str | None, float | None]:
  for label, row_overrides, paper in getattr(module, 'ROWS', ()):
    if dict(row_overrides) == overrides:
      return label, paper
  return None, None


def summarize(sweep: 'launch.Sweep', workdir: str | Path, note: str = '') -> str:
  """The markdown summary of the finished runs of `sweep` under `workdir`.

  Args:
    sweep: the loaded sweep.
    workdir: the root folder given to the launcher.
    note: a line put under the title (e.g. the code version the runs used).

  Returns:
    Markdown text (a heading, the budget and the table).
  """
  module = sweep.module
  metric = getattr(module, 'PAPER_METRIC', 'map_voc')
  seeds_expected: dict[tuple, int] = {}
  groups: dict[tuple, list[dict[str, Any]]] = {}
  names = launch.short_keys([k for r in sweep.runs for k in r])
  for overrides, run_dir in zip(sweep.runs, sweep.run_dirs(workdir), strict=True):
    config_key = tuple((k, v) for k, v in overrides.items() if k != 'seed')
    seeds_expected[config_key] = seeds_expected.get(config_key, 0) + 1
    groups.setdefault(config_key, [])
    run = load_run(run_dir)
    if run is not None:
      groups[config_key].append(run)
  runs = [r for g in groups.values() for r in g]
  title = f'# Sweep `{sweep.name}`' + (f'\n\n{note}' if note else '')
  if not runs:
    return f'{title}\n\nNo finished runs under {Path(workdir) / sweep.name}.\n'

  # The rarest attributes and the dataset are those of the first run; all runs must agree.
  attributes = runs[0]['attributes']
  dataset = runs[0]['results'].get('dataset', '')
  for r in runs[1:]:
    if r['attributes'] != attributes or r['results'].get('dataset', '') != dataset:
      raise ValueError('The runs of the sweep were trained on different datasets.')
  ratios = np.asarray(attributes.get('positive_ratio', []), np.float64)
  rare = [attributes['names'][i] for i in np.argsort(ratios, kind='stable')[:3]]
  real = not dataset.startswith('synthetic')
  metrics_shown = [metric] + (['map_voc'] if metric != 'map_voc' else [])

  swept = {k for r in sweep.runs for k in r}
  budget, differing = {}, []
  for key in BUDGET_KEYS:
    if key in swept:
      continue
    values = {json.dumps(get_key(r['config'], key)) for r in runs}
    if len(values) > 1:
      differing.append(f'`{key}` ∈ {{{", ".join(sorted(values))}}}')
    budget[key] = get_key(runs[0]['config'], key)
  wall = [r['results'].get('wall_time_s', math.nan) for r in runs]

  lines = [title, '', f'Dataset `{dataset}`; test split; seeds aggregated (mean ± sample std).']
  lines.append(
    'Budget: ' + ', '.join(f'{k}={_plain(v)}' for k, v in budget.items() if v != '') + '.'
  )
  if differing:
    lines.append('**The runs differ in budget fields:** ' + '; '.join(differing) + '.')
  n_total = sum(seeds_expected.values())
  lines.append(
    f'{len(runs)} of {n_total} runs finished; wall time per run {np.nanmean(wall) / 60:.1f} min '
    f'(mean), {np.nansum(wall) / 60:.0f} min in total.'
  )
  at_end = sum(r['results'].get('best_step') == r['results'].get('steps') for r in runs)
  lines.append(
    f'Runs whose best validation step is their last: {at_end} of {len(runs)}'
    + (' (still improving when the budget ended).' if at_end == len(runs) else '.')
  )
  lines.append('')

  header = ['configuration', 'n']
  for m in metrics_shown:
    header.append(f'test {METRIC_NAMES.get(m, m)}')
    if m == metric:
      header.append('Δ vs row 1')
      if real:
        header.append('paper')
  for name, ratio in zip(rare, np.sort(ratios)[:3], strict=False):
    header.append(f'AP {name} ({100 * ratio:.1f}%)')
  has_pointing = any('pointing_game' in r['results']['test'] for r in runs)
  if has_pointing:
    header += [f'pointing game a·s, stage {k[-1]}' for k in POINTING_KEYS]
  header.append('best step, % of training')  # Convergence: 100 = still improving at the end.
  header.append(f'validation {METRIC_NAMES.get(metric, metric)} gained in the last fifth')
  lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]

  first_mean = None
  for config_key, group in groups.items():
    overrides = dict(config_key)
    label, paper = _row_info(module, overrides)
    label = label or launch.override_string(overrides, names)
    n = len(group)
    expected = seeds_expected[config_key]
    cells = [label, str(n) if n == expected else f'{n} of {expected}']
    for m in metrics_shown:
      values = [r['results']['test'][m] for r in group]
      cells.append(format_mean_std(values))
      if m == metric:
        mean = mean_std(values)[0] if values else None
        if first_mean is None and mean is not None:
          first_mean = mean
          cells.append(DASH)
        elif mean is None or first_mean is None:
          cells.append(DASH)
        else:
          cells.append(f'{100 * (mean - first_mean):+.2f}')
        if real:
          cells.append(DASH if paper is None else f'{paper:.1f}')
    for name in rare:
      cells.append(
        format_mean_std([r['results']['test']['per_attribute'][name]['ap_voc'] for r in group])
      )
    if has_pointing:
      for key in POINTING_KEYS:
        values = [
          r['results']['test']['pointing_game'][key]['overall']
          for r in group
          if key in r['results']['test'].get('pointing_game', {})
        ]
        cells.append(format_mean_std(values, digits=1))
    cells.append(
      format_mean_std([r['results']['best_step'] / r['results']['steps'] for r in group], digits=0)
    )
    gains = [last_fifth_gain(r, metric) for r in group]
    cells.append(format_mean_std([g for g in gains if g is not None]))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def _plain(value: Any) -> str:
  if isinstance(value, list):
    return '(' + ', '.join(map(str, value)) + ')'
  return str(value)


def main(argv):
  del argv
  text = summarize(launch.Sweep(_SWEEP.value), _WORKDIR.value, _NOTE.value)
  if _OUT.value:
    Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    Path(_OUT.value).write_text(text)
    logging.info('Wrote %s', _OUT.value)
  else:
    print(text)


if __name__ == '__main__':
  flags.mark_flags_as_required(['sweep', 'workdir'])
  app.run(main)
