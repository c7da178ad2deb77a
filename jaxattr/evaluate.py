"""Evaluates a trained run on a split: every metric, overall and per attribute.

  python -m jaxattr.evaluate --workdir=runs/demo                  # test split, best
  python -m jaxattr.evaluate --workdir=runs/demo --split=validation --checkpoint=latest
  python -m jaxattr.evaluate --workdir=runs/demo --tune_thresholds

Restores the run's checkpoint, evaluates it with the training loop's own evaluation
(`jaxattr.evaluation`: every example exactly once, unknown labels ignored), prints a
table and writes `<workdir>/eval_<split>_<checkpoint>.json` with mAP (both AP
definitions), mA, Acc, Prec, Rec, F1, the per-attribute metrics and, on synthetic
data, the pointing game.

`--tune_thresholds` picks, per attribute, the threshold that maximises that
attribute's F1 on the VALIDATION split (never the test split), applies it to the
requested split and reports the threshold-dependent metrics again under
`tuned_thresholds`, beside (never instead of) the ones at `config.eval.threshold`.
The thresholds also go to `<workdir>/thresholds.json`, where `jaxattr.predict` and
`jaxattr.export` pick them up for that checkpoint.
"""

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program, so the tools can import one another.
  flags.DEFINE_string('workdir', None, 'Workdir of a trained run.')
  flags.DEFINE_string(
    'split', 'test', "'test', 'validation', 'train' (the config's splits) or a TFDS split name."
  )
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint to evaluate.')
  flags.DEFINE_bool('tune_thresholds', False, 'Also report per-attribute F1-tuned thresholds.')
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir, if the dataset moved since training.')
  flags.DEFINE_integer('batch_size', None, 'Eval batch size (default: the run config).')


THRESHOLD_METRICS = ('ma', 'acc', 'prec', 'rec', 'f1')


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


def _split_name(config, split: str) -> str:
  roles = {
    'test': config.data.test_split,
    'validation': config.data.eval_split,
    'train': config.data.train_split,
  }
  return roles.get(split, split)


def evaluate_run(
  workdir: str | Path,
  split: str = 'test',
  checkpoint: str = 'best',
  *,
  tune: bool = False,
  data_dir: str | None = None,
  batch_size: int | None = None,
  devices=None,
  write: bool = True,
) -> dict[str, Any]:
  """Restores a run's checkpoint and evaluates it on a split.

  Args:
    workdir: the run's workdir.
    split: 'test', 'validation', 'train' (the config's splits) or a split name.
    checkpoint: 'best' or 'latest'.
    tune: also tune per-attribute thresholds on the validation split and report
      the metrics of the split under them.
    data_dir: TFDS data_dir override.
    batch_size: eval batch size override.
    devices: devices of the evaluation mesh (default all).
    write: write `eval_<split>_<checkpoint>.json` (and thresholds.json if tuned).

  Returns:
    {'workdir', 'checkpoint', 'step', 'split', 'metrics': {...}} plus, when tuned,
    'tuned_thresholds': {'tuned_on', 'criterion', 'thresholds', 'metrics'}.
  """
  from jaxattr import evaluation, metrics, sharding
  from jaxattr.run import files, layout, restore

  workdir = Path(workdir)
  config = files.load_config(workdir)
  ref = restore.resolve_checkpoint(workdir, checkpoint)
  with config.unlocked():
    if data_dir:
      config.data.data_dir = data_dir
    if batch_size:
      config.eval.batch_size = batch_size
  ev = evaluation.create_evaluator(config, devices)
  variables = restore.restore_variables(workdir, ref, sharding.replicated(ev.mesh))
  split_name = _split_name(config, split)
  result, data = ev.evaluate(variables, split_name)
  report: dict[str, Any] = {
    'workdir': str(workdir),
    'dataset': ev.builder.info.full_name,
    'checkpoint': ref.which,
    'step': ref.step,
    'split': split_name,
    'threshold': float(config.eval.threshold),
    'metrics': result,
  }
  if tune:
    tuned_on = config.data.eval_split
    if tuned_on == config.data.test_split:
      raise ValueError('data.eval_split is the test split: thresholds are never tuned on test.')
    if split_name == tuned_on:
      logging.warning('Thresholds tuned and applied on %s: tuned numbers are optimistic.', split)
    val = ev.predictions(variables, tuned_on) if split_name != tuned_on else data
    thresholds = tune_thresholds(val['probs'], val['labels'], config.eval.threshold)
    names = ev.info.attribute_names
    tuned = metrics.compute_metrics(data['probs'], data['labels'], names, threshold=thresholds)
    per_attr = {
      n: {k: tuned['per_attribute'][n][k] for k in ('precision', 'recall', 'f1', 'ma')}
      for n in names
    }
    report['tuned_thresholds'] = {
      'tuned_on': tuned_on,
      'criterion': 'per-attribute F1',
      'thresholds': {n: float(t) for n, t in zip(names, thresholds, strict=True)},
      'metrics': {**{k: tuned[k] for k in THRESHOLD_METRICS}, 'per_attribute': per_attr},
    }
    if write:
      thresholds_file = {
        'checkpoint': ref.which,
        'step': ref.step,
        'tuned_on': tuned_on,
        'criterion': 'per-attribute F1',
        'thresholds': report['tuned_thresholds']['thresholds'],
      }
      (workdir / layout.THRESHOLDS).write_text(metrics.to_json(thresholds_file, indent=2) + '\n')
  if write:
    path = layout.eval_report_path(workdir, split, checkpoint)
    path.write_text(metrics.to_json(report, indent=2) + '\n')
    report['path'] = str(path)
  return report


def _pct(value: float | None, width: int = 7) -> str:
  """A fraction as a right-aligned percentage ('n/a' for NaN: no labelled positive)."""
  text = 'n/a' if value is None or not np.isfinite(value) else f'{100 * value:.2f}'
  return f'{text:>{width}}'


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
  return ' '.join(f'{c:>{w}}' for c, w in zip(cells, widths, strict=True))


def format_report(report: dict[str, Any]) -> str:
  """The report as plain-text tables (percentages).

  Args:
    report: the result of `evaluate_run`.

  Returns:
    The text.
  """
  m = report['metrics']
  overall = ('map_voc', 'map_sklearn', 'ma', 'acc', 'prec', 'rec', 'f1')
  heads = ('mAP(voc)', 'mAP(skl)', 'mA', 'Acc', 'Prec', 'Rec', 'F1')
  widths = [max(len(h), 7) for h in heads]
  lines = [
    f'{report["workdir"]}: {report["checkpoint"]} checkpoint (step {report["step"]}), '
    f'split {report["split"]} ({m["num_examples"]} examples), '
    f'threshold {report["threshold"]:g}',
    '',
    _row(heads, widths),
    _row([_pct(m[k]) for k in overall], widths),
    '',
  ]
  names = list(m['per_attribute'])
  name_w = max(max(map(len, names)), len('attribute'))
  per = ('ap_voc', 'ap_sklearn', 'ma', 'precision', 'recall', 'f1')
  heads = ('AP(voc)', 'AP(skl)', 'mA', 'Prec', 'Rec', 'F1', 'positives')
  widths = [7] * 6 + [9]
  lines.append(f'{"attribute":<{name_w}} ' + _row(heads, widths))
  for name, r in m['per_attribute'].items():
    cells = [_pct(r[k]) for k in per] + [str(r['positives'])]
    lines.append(f'{name:<{name_w}} ' + _row(cells, widths))
  if 'pointing_game' in m:
    games = ', '.join(
      f'{k} {_pct(v["overall"], 0)} (chance {_pct(v["chance"], 0)})'
      for k, v in m['pointing_game'].items()
    )
    lines += ['', f'pointing game (%): {games}']
  if 'tuned_thresholds' in report:
    t = report['tuned_thresholds']
    tm = t['metrics']
    heads = ('mA', 'Acc', 'Prec', 'Rec', 'F1')
    lines += [
      '',
      f'With per-attribute thresholds tuned on {t["tuned_on"]} (max F1 per attribute):',
      _row(heads, [7] * 5),
      _row([_pct(tm[k]) for k in THRESHOLD_METRICS], [7] * 5),
      '',
      f'{"attribute":<{name_w}} ' + _row(('threshold', 'Prec', 'Rec', 'F1', 'mA'), [9] + [7] * 4),
    ]
    for name, r in tm['per_attribute'].items():
      cells = [f'{t["thresholds"][name]:.4f}'] + [
        _pct(r[k]) for k in ('precision', 'recall', 'f1', 'ma')
      ]
      lines.append(f'{name:<{name_w}} ' + _row(cells, [9] + [7] * 4))
  return '\n'.join(lines) + '\n'


def main(argv: Sequence[str]) -> int:
  from jaxattr.run import layout

  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from jaxattr import config_validation  # Every bad flag, one line each; exit code 2.

  config_validation.exit_if_problems(config_validation.evaluate_flags(FLAGS), 'jaxattr.evaluate')
  # A command-line tool: warnings and errors only, unless --verbosity asks for more.
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  try:
    report = evaluate_run(
      FLAGS.workdir,
      FLAGS.split,
      FLAGS.checkpoint,
      tune=FLAGS.tune_thresholds,
      data_dir=FLAGS.data_dir,
      batch_size=FLAGS.batch_size,
    )
  except (layout.RunError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  sys.stdout.write(format_report(report))
  print(f'\nWrote {report["path"]}')
  return 0


if __name__ == '__main__':
  _define_flags()
  app.run(main)
