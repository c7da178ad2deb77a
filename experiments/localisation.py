r"""Does the attention look at the cue? Masks, weighted masks and the primary network's CAMs.

  python -m experiments.localisation --config=configs/localisation.py \
      --workdir=runs/localisation --out=experiments/results/localisation.md
  python -m experiments.localisation --config=configs/localisation.py:trace \
      --workdir=runs/localisation_trace --skip_primary       # per-epoch trace
  python -m experiments.localisation --workdir=runs/localisation   # report only

With `--config`, trains the config (the attention model) in `<workdir>/attention`
and, unless `--skip_primary`, the same config with `model.attention.levels=()` (the
primary network alone, same data, seed and budget) in `<workdir>/primary`, each with
`jaxattr.train.train_and_evaluate` (a finished run is not trained again; a stopped
one resumes). Then it reports from what the runs' evaluators wrote (the config's
`config.evals`, configs/localisation.py): test mAP, the selected step, and the
`pointing` evaluator on the test split (which needs `cue_boxes`: the synthetic
builders): for every positive (image, attribute) pair, the pointing game of the
argmax cell of the masks a, the weighted masks a * s and the primary CAMs, each
beside its chance level, and the mask entropy (`jaxattr.evaluators.pointing`). A
run with a `trace` evaluator adds its per-epoch rows from metrics.jsonl.

`--uniform_masks` replaces the spatial softmax by a uniform mask: with `--config`
in training too; without, the best checkpoint of each run is evaluated again with
it (does the trained classifier use the mask?).
"""

import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags, logging
from ml_collections import config_flags

from jaxattr import config_validation, evaluators, schema, sharding
from jaxattr import train as train_lib
from jaxattr.run import files, layout, restore, resume

FLAGS = flags.FLAGS
MODELS = ('attention', 'primary')


def train_models(config, workdir: Path, skip_primary: bool = False) -> list[Path]:
  """Trains the attention model and (unless `skip_primary`) the primary-only one.

  Each run is checked as `jaxattr.main` checks it: the config first, then against the
  config its folder records (a changed config is refused, naming the fields).
  """
  runs = {'attention': config}
  if not skip_primary:
    primary = config.copy_and_resolve_references()
    with primary.unlocked():
      primary.model.attention.levels = ()
    runs['primary'] = primary
  for name, cfg in runs.items():
    config_validation.exit_if_problems(
      schema.validate(cfg, jax.device_count()), 'experiments.localisation'
    )
    layout.create_workdir(workdir / name)
    resume.check_resume(workdir / name, cfg)
    logging.info('Training the %s model in %s.', name, workdir / name)
    train_lib.train_and_evaluate(cfg, str(workdir / name))
  return [workdir / name for name in runs]


def load_run(run: Path) -> dict[str, Any]:
  """A finished run's results.json and its `trace/` rows of metrics.jsonl."""
  results = json.loads((run / layout.RESULTS).read_text())
  rows = [json.loads(line) for line in layout.metrics_path(run).read_text().splitlines()]
  results['trace'] = [r for r in rows if any(k.startswith('trace/') for k in r)]
  results['selection_metric'] = evaluators.selection_metric(files.load_config(run))
  return results


def rescore(run: Path) -> dict[str, Any]:
  """The final evaluators of a run's config, again, on its best checkpoint (no training)."""
  config = files.load_config(run)
  ctx = evaluators.create_context(config, jax.devices()[:1])
  ref = restore.resolve_checkpoint(run, 'best')
  variables = restore.restore_variables(run, ref, sharding.replicated(ctx.mesh))
  results: dict[str, Any] = {'best_step': ref.step, 'steps': ref.step, 'trace': []}
  results['selection_metric'] = evaluators.selection_metric(config)
  for ev in evaluators.create(ctx).values():
    if ev.spec['at_end']:
      ev.run(variables)
      results[ev.spec['results_key']] = ev.details
  return results


# --- Report ----------------------------------------------------------------------------


def _what(kind: str) -> str:
  if kind == 'cam':
    return 'CAM (primary W on k2)'
  part, level = kind.rsplit('_', 1)
  return f'{"a" if part == "mask" else "a*s"}, stage {level}'


def markdown(results: dict[str, dict[str, Any]], command: str) -> str:
  """The result tables (one row per model and map kind, then per attribute and trace)."""
  lines = [f'Command: `{command}`', '']
  for model, r in results.items():
    branches = r['pointing'].get('branch_map', {})
    lines.append(
      f'**{model}**: test mAP (VOC) {100 * r["test"]["map_voc"]:.1f}; best validation step '
      f'{r.get("best_step", r["steps"])} of {r["steps"]}'
      + (f'; {r["wall_time_s"] / 60:.1f} min' if 'wall_time_s' in r else '')
      + ''.join(f'; {k} branch alone {100 * v:.1f}' for k, v in branches.items())
      + '.'
    )
  lines += [
    '',
    '| model | map | grid | pointing game | chance | ratio | mask entropy (positives) |',
    '|---|---|---|---|---|---|---|',
  ]
  for model, r in results.items():
    p = r['pointing']
    for kind, v in p['pointing_game'].items():
      level = kind.rsplit('_', 1)[-1]
      ent = f'{p[f"entropy_{level}"]["overall"]:.2f}' if kind.startswith('mask_') else ''
      h, w = v['grid']
      lines.append(
        f'| {model} | {_what(kind)} | {h}x{w} | {100 * v["overall"]:.1f} % | '
        f'{100 * v["chance"]:.1f} % | {v["overall"] / max(v["chance"], 1e-9):.1f}x | {ent} |'
      )
  for model, r in results.items():
    p = r['pointing']
    games, ents = p['pointing_game'], sorted(k for k in p if k.startswith('entropy_'))
    first = next(iter(games.values()))
    lines += ['', f'Per attribute, {model} (hit % / chance %; test AP):', '']
    lines += ['| attribute | n | AP | ' + ' | '.join([*games, *ents]) + ' |']
    lines += ['|' + '---|' * (3 + len(games) + len(ents))]
    for n, count in first['positives'].items():
      if not count:
        continue
      cells = [
        f'{100 * g["per_attribute"][n]:.0f} / {100 * g["chance_per_attribute"][n]:.0f}'
        for g in games.values()
      ]
      cells += [f'{p[k]["per_attribute"].get(n, float("nan")):.2f}' for k in ents]
      ap = r['test']['per_attribute'][n]['ap_voc']
      ap_text = 'n/a' if ap is None else f'{100 * ap:.1f}'
      lines.append(f'| {n} | {count} | {ap_text} | ' + ' | '.join(cells) + ' |')
  for model, r in results.items():
    if not r['trace']:
      continue
    keys = sorted(k for k in r['trace'][0] if k.startswith('trace/') and 'chance' not in k)
    lines += ['', f'Trace of {model} (per epoch, logged as trace/... in {layout.METRICS}):', '']
    lines += ['| step | val mAP | ' + ' | '.join(k[len('trace/') :] for k in keys) + ' |']
    lines += ['|' + '---|' * (2 + len(keys))]
    for row in r['trace']:
      cells = [
        f'{row[k]:.2f}'
        if 'entropy' in k
        else f'{100 * row[k]:.0f} ({100 * row[f"{k}_chance"]:.0f})'
        for k in keys
      ]
      val = row.get(r['selection_metric'], float('nan'))
      lines.append(f'| {row["step"]} | {100 * val:.1f} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def uniform_masks(z: jax.Array) -> jax.Array:
  """A stand-in for `attention.spatial_softmax` that ignores the logits: 1 / (H * W)."""
  b, h, w, c = z.shape
  return jnp.full((b, h, w, c), 1.0 / (h * w), jnp.float32) + 0.0 * z.astype(jnp.float32)


def main(argv) -> None:
  del argv
  command = 'python -m experiments.localisation ' + ' '.join(sys.argv[1:])
  if FLAGS.uniform_masks:
    from jaxattr.models import attention

    attention.spatial_softmax = uniform_masks
  workdir = Path(FLAGS.workdir)
  if FLAGS.config is not None:
    runs = train_models(FLAGS.config, workdir, FLAGS.skip_primary)
  else:
    runs = [workdir / m for m in MODELS if (workdir / m).is_dir()] or [workdir]
  score = rescore if FLAGS.uniform_masks and FLAGS.config is None else load_run
  results = {run.name: score(run) for run in runs}
  text = markdown(results, command)
  print(text)
  if FLAGS.out:
    Path(FLAGS.out).write_text(text)
    Path(FLAGS.out).with_suffix('.json').write_text(json.dumps(results, indent=1))


def define_flags() -> None:
  """The script's flags (defined only when it runs, so tests can import this module)."""
  config_flags.DEFINE_config_file('config', None, 'Config file (trains when given).')
  flags.DEFINE_string('workdir', None, 'Folder of the runs (<workdir>/attention, /primary).')
  flags.DEFINE_string('out', '', 'Markdown file for the result tables (and a .json beside).')
  flags.DEFINE_bool('skip_primary', False, 'Do not train the primary-only model.')
  flags.DEFINE_bool(
    'uniform_masks',
    False,
    'Replace the spatial softmax by a uniform mask (1 / cells) in the model: with --config '
    'in training too, else at inference only (the runs are evaluated again).',
  )
  flags.mark_flag_as_required('workdir')


if __name__ == '__main__':
  define_flags()
  app.run(main)
