"""Evaluates a trained run on a split: every metric, overall and per attribute.

  python -m jaxattr.evaluate --workdir=runs/demo                  # test split, best
  python -m jaxattr.evaluate --workdir=runs/demo --split=validation --checkpoint=latest
  python -m jaxattr.evaluate --workdir=runs/demo --tune_thresholds

Restores the run's checkpoint and runs the training loop's own evaluators on it
(`jaxattr.evaluators`: every example exactly once, unknown labels ignored): an
`attributes` evaluator on the split (mAP with both AP definitions, mA, Acc, Prec,
Rec, F1, the per-attribute metrics and, on synthetic data, the pointing game).
Prints the results tables (`evaluators.report`, the writer of results.md) and
writes the report as JSON into the run folder (`layout.eval_report_path`).

`--tune_thresholds` adds a `thresholds` evaluator: per attribute, the threshold
that maximises that attribute's F1 on the VALIDATION split (never the test split),
applied to the requested split, reported under `tuned_thresholds` beside (never
instead of) the metrics at `config.eval.threshold`. The thresholds are saved for
that checkpoint (`files.write_thresholds`), where `jaxattr.predict` and
`jaxattr.export` pick them up.
"""

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def evaluate_flags(flags_: Any) -> list[str]:
  """Problems of the flags (--workdir, --split, --batch_size, --data_dir), one line each."""
  import jax

  from jaxattr import config_validation as cv

  problems = [cv.run_folder('--workdir', flags_.workdir)]
  if not flags_.split:
    problems.append('--split: must not be empty')
  if flags_.batch_size is not None:
    problems.append(cv.divisible_batch('--batch_size', flags_.batch_size, jax.device_count()))
  if flags_.data_dir:
    problems.append(cv.check_dir('--data_dir', flags_.data_dir))
  return [p for p in problems if p]


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
    write: write the report (and the tuned thresholds) into the run folder.

  Returns:
    {'workdir', 'dataset', 'checkpoint', 'step', 'split', 'threshold', 'metrics':
    {...}} plus, when tuned, 'tuned_thresholds' (the `thresholds` evaluator's
    details: 'tuned_on', 'applied_to', 'criterion', 'thresholds', 'metrics').
  """
  from jaxattr import evaluators, metrics, sharding
  from jaxattr.run import files, layout, restore

  workdir = Path(workdir)
  config = files.load_config(workdir)
  ref = restore.resolve_checkpoint(workdir, checkpoint)
  with config.unlocked():
    if data_dir:
      config.data.data_dir = data_dir
    if batch_size:
      config.eval.batch_size = batch_size
  ctx = evaluators.create_context(config, devices)
  variables = restore.restore_variables(workdir, ref, sharding.replicated(ctx.mesh))
  specs = {split: {'type': 'attributes', 'split': split}}
  if tune:
    specs['tuned_thresholds'] = {'type': 'thresholds', 'split': 'validation', 'apply_to': split}
  evs = evaluators.create(ctx, specs)
  for ev in evs.values():
    ev.run(variables)
  report: dict[str, Any] = {
    'workdir': str(workdir),
    'dataset': ctx.builder.info.full_name,
    'checkpoint': ref.which,
    'step': ref.step,
    'split': evs[split].split,
    'threshold': float(config.eval.threshold),
    'metrics': evs[split].details,
  }
  if tune:
    tuned = evs['tuned_thresholds'].details
    report['tuned_thresholds'] = tuned
    if write:
      files.write_thresholds(workdir, ref, tuned['thresholds'], tuned['tuned_on'])
  if write:
    path = layout.eval_report_path(workdir, split, checkpoint)
    path.write_text(metrics.to_json(report, indent=2) + '\n')
    report['path'] = str(path)
  return report


def format_report(report: dict[str, Any]) -> str:
  """The report as the results tables (markdown, percentages).

  Args:
    report: the result of `evaluate_run`.

  Returns:
    The text.
  """
  from jaxattr.evaluators import report as tables

  m = report['metrics']
  summary = (
    f'{report["workdir"]}: {report["checkpoint"]} checkpoint (step {report["step"]}), '
    f'split {report["split"]} ({m["num_examples"]} examples), '
    f'threshold {report["threshold"]:g}.'
  )
  sections = {report['split']: m}
  if 'tuned_thresholds' in report:
    sections['tuned thresholds'] = report['tuned_thresholds']
  return tables.results_markdown(report['dataset'], summary, sections)


def main(argv: Sequence[str]) -> int:
  from jaxattr import config_validation
  from jaxattr.run import layout

  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Every bad flag, one line each; exit code 2.
  config_validation.exit_if_problems(evaluate_flags(FLAGS), 'jaxattr.evaluate')
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
