r"""Does the attention look at the cue? Masks, weighted masks and the primary network's CAMs.

  python -m experiments.localisation --config=configs/localisation.py \
      --out=experiments/results/localisation.md
  python -m experiments.localisation --config=configs/demo.py --trace_every_steps=100 \
      --skip_primary --out=/tmp/demo_trace.md            # the demo's diagnosis (issue 15)

Trains the config's attention model and, unless `--skip_primary`, the same config
with `model.attention.levels=()` (the primary network alone, same data, seed and
budget), each with the repository's own train step (`train.create_experiment`), in
process and without a workdir. Then, on the test split (which needs `cue_boxes`:
the synthetic builders), for every positive (image, attribute) pair it scores with
the pointing game (`metrics.pointing_game`, the cell rule of `jaxattr.evaluation`)
the argmax cell of

  * the attention masks a (spatial softmax) per level,
  * the confidence-weighted masks a * s per level,
  * the class activation maps of the primary classifier, CAM = k2 . W_c (the
    primary Dense kernel applied to the stage-4 tap before its global average
    pooling; the primary logit is the spatial mean of the CAM plus the bias), of
    both models,

each beside its chance level (a uniformly random cell, `metrics.pointing_game_chance`),
and the normalised entropy of the masks, H(a) / log(h * w): 1 for a uniform mask,
0 for one cell. Entropy is averaged over positive pairs (an absent attribute has
nothing to point at).

`--trace_every_steps=N` also measures, every N steps during training, on fixed
batches: the mask entropy per level and attribute on validation positives, their
pointing game, and the gradient that reaches each part of the model (L2 norm of
the loss gradient per parameter group: primary classifier, mask branch, confidence
branch, attention classifier, backbone; averaged over `--trace_batches` train
batches, with the coherence ||mean g|| / mean ||g|| that says whether the batches
agree on a direction, which matters more than the size under Adam).
"""

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from jaxattr import inference, losses, metrics, sharding
from jaxattr import train as train_lib

FLAGS = flags.FLAGS

# --- Measurements (pure functions, also used by tests/test_localisation.py) ----------


def mask_entropy(a: jax.Array) -> jax.Array:
  """Normalised entropy of spatial-softmax masks: 1 = uniform, 0 = one cell.

  Args:
    a: [B, H, W, C] masks, each channel summing to 1 over H*W.

  Returns:
    [B, C] H(a) / log(H*W).
  """
  b, h, w, c = a.shape
  flat = a.reshape(b, h * w, c).astype(jnp.float32)
  ent = -jnp.sum(jnp.where(flat > 0, flat * jnp.log(jnp.maximum(flat, 1e-30)), 0.0), axis=1)
  return ent / math.log(h * w)


def class_activation_maps(k2: jax.Array, kernel: jax.Array) -> jax.Array:
  """CAM of a global-average-pooled linear classifier: its kernel applied at each cell.

  Args:
    k2: [B, H, W, D] the stage-4 tap (what the primary classifier pools).
    kernel: [D, C] the primary Dense kernel.

  Returns:
    [B, H, W, C]; its spatial mean plus the bias is the primary logit.
  """
  return jnp.einsum('bhwd,dc->bhwc', k2.astype(jnp.float32), kernel.astype(jnp.float32))


def make_probe_fn(model, data_config: ml_collections.ConfigDict, levels: Sequence[int]):
  """A jitted fn(variables, uint8 images) -> argmax cells, entropies, probs and CAM cells.

  Args:
    model: the `AttributeModel`.
    data_config: `config.data` (normalisation).
    levels: the model's attention levels (order of its masks).

  Returns:
    fn returning {'probs', 'cells_cam', 'cam_grid'...}: per level `cells_mask_<l>`,
    `cells_weighted_<l>`, `entropy_<l>` ([B, C]).
  """

  def probe(variables, images):
    def is_backbone(mdl, method_name):
      return mdl.name == 'backbone' and method_name == '__call__'

    out, state = model.apply(
      variables,
      inference.normalize(images, data_config),
      train=False,
      capture_intermediates=is_backbone,
      mutable=['intermediates'],
    )
    taps = state['intermediates']['backbone']['__call__'][0]
    cam = class_activation_maps(taps['k2'], variables['params']['classifier']['kernel'])
    result = {'probs': jax.nn.sigmoid(out['logits']), 'cells_cam': metrics.argmax_cells(cam)}
    # Each branch's own probabilities, to see what each one contributes.
    result['branch_primary'] = jax.nn.sigmoid(out['primary_logits'])
    if levels:
      result['branch_attention'] = jax.nn.sigmoid(jnp.mean(out['attention_logits'], axis=0))
    for level, a, s in zip(levels, out['masks'], out['confidences'], strict=True):
      result[f'cells_mask_{level}'] = metrics.argmax_cells(a)
      result[f'cells_weighted_{level}'] = metrics.argmax_cells(a * s)
      result[f'entropy_{level}'] = mask_entropy(a)
    return result

  return jax.jit(probe)


def grid_shapes(model, variables, data_config, levels) -> dict[str, tuple[int, int]]:
  """(h, w) of each level's masks and of the CAM (k2), from shapes only."""
  size = data_config.image_size
  image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.uint8)

  def shapes(variables, images):
    def is_backbone(mdl, method_name):
      return mdl.name == 'backbone' and method_name == '__call__'

    out, state = model.apply(
      variables,
      inference.normalize(images, data_config),
      train=False,
      capture_intermediates=is_backbone,
      mutable=['intermediates'],
    )
    return out['masks'], state['intermediates']['backbone']['__call__'][0]['k2']

  masks, k2 = jax.eval_shape(shapes, variables, image)
  grids = {f'level{lv}': tuple(m.shape[1:3]) for lv, m in zip(levels, masks, strict=True)}
  grids['cam'] = tuple(k2.shape[1:3])
  return grids


def score(data: dict[str, np.ndarray], grids: dict[str, tuple[int, int]], names: Sequence[str]):
  """Pointing game (with chance) of every cell kind in `data`, and mask entropy.

  Args:
    data: gathered probe outputs with `labels`, `cue_boxes`, `cells_*`, `entropy_*`.
    grids: `grid_shapes`'s dict.
    names: attribute names.

  Returns:
    {kind: {'overall', 'chance', 'per_attribute': {name: (hit, chance, n)}}} for kinds
    `mask_<l>`, `weighted_<l>`, `cam`, and {'entropy_<l>': {'overall', 'per_attribute'}}.
  """
  labels, boxes = data['labels'], data['cue_boxes']
  positive = labels == 1
  out: dict[str, Any] = {}
  for key in sorted(k for k in data if k.startswith('cells_')):
    kind = key[len('cells_') :]
    grid = grids['cam'] if kind == 'cam' else grids[f'level{kind.rsplit("_", 1)[1]}']
    hits, counts = metrics.pointing_game(data[key], grid, boxes, labels)
    chance, _ = metrics.pointing_game_chance(boxes, labels, grid)
    valid = counts > 0
    total = max(int(counts[valid].sum()), 1)
    out[kind] = {
      'grid': list(grid),
      'overall': float(np.sum(hits[valid] * counts[valid]) / total),
      'chance': float(np.sum(chance[valid] * counts[valid]) / total),
      'per_attribute': {
        n: (float(h), float(c), int(k))
        for n, h, c, k in zip(names, hits, chance, counts, strict=True)
        if k
      },
    }
  for key in sorted(k for k in data if k.startswith('entropy_')):
    ent = data[key]
    per = {
      n: float(ent[positive[:, c], c].mean()) for c, n in enumerate(names) if positive[:, c].any()
    }
    out[key] = {'overall': float(ent[positive].mean()), 'per_attribute': per}
  return out


def branch_maps(data: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, float]:
  """Test mAP (VOC) of each branch's own probabilities (primary; mean of attention logits)."""
  return {
    k[len('branch_') :]: float(metrics.compute_metrics(data[k], data['labels'], names)['map_voc'])
    for k in sorted(data)
    if k.startswith('branch_')
  }


# --- Gradient probe -------------------------------------------------------------------


def param_group(path: tuple[str, ...]) -> str:
  """The part of the model a parameter belongs to (for the gradient probe)."""
  top = path[0]
  if top == 'backbone':
    return 'backbone'
  if top == 'classifier':
    return 'primary classifier'
  if top.startswith('attention') and len(path) > 1:
    if path[1] == 'mask':
      part = 'confidence branch' if path[2] == 'confidence' else 'mask branch'
      return f'{part} {top[len("attention") :]}'
    return f'attention classifier {top[len("attention") :]}'
  return top


def make_grad_fn(ex: train_lib.Experiment):
  """A jitted fn(state, batch) -> {group: grad [n]} flattened, of the train step's loss."""
  config = ex.config
  w_pos, w_neg = losses.class_weights(ex.info.positive_ratio, config.loss.class_weights)
  w_pos, w_neg = jnp.asarray(w_pos, jnp.float32), jnp.asarray(w_neg, jnp.float32)
  num_sources = train_lib.num_history_sources(config)

  def grads(state, batch, frozen):
    images = inference.normalize(batch['image'], config.data)
    std = train_lib.history_std(state.history, batch['index'], num_sources)

    def loss_fn(params):
      outputs, _ = ex.model.apply(
        {'params': params, 'batch_stats': state.batch_stats},
        images,
        train=True,
        freeze_backbone=frozen,
        mutable=['batch_stats'],
      )
      loss, _ = losses.total_loss(
        outputs['primary_logits'],
        outputs['attention_logits'],
        batch['labels'],
        std,
        w_pos,
        w_neg,
        config.loss,
        unknown=config.data.unknown_label,
      )
      return loss

    g = jax.grad(loss_fn)(state.params)
    groups: dict[str, list[jax.Array]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(g)[0]:
      keys = tuple(str(getattr(p, 'key', p)) for p in path)
      groups.setdefault(param_group(keys), []).append(leaf.reshape(-1))
    return {k: jnp.concatenate(v) for k, v in groups.items()}

  return jax.jit(grads, static_argnums=2)


def grad_summary(grad_fn, state, batches, frozen: bool) -> dict[str, dict[str, float]]:
  """Per group: mean ||g|| over the batches and the coherence ||mean g|| / mean ||g||."""
  gs = [jax.device_get(grad_fn(state, b, frozen)) for b in batches]
  out = {}
  for k in gs[0]:
    norms = [float(np.linalg.norm(g[k])) for g in gs]
    mean_norm = float(np.mean(norms))
    mean_vec = np.mean([g[k] for g in gs], axis=0)
    out[k] = {
      'norm': mean_norm,
      'coherence': float(np.linalg.norm(mean_vec) / mean_norm) if mean_norm else 0.0,
      'size': int(gs[0][k].size),
    }
  return out


# --- Training and scoring ---------------------------------------------------------------


def probe_split(ex, probe_fn, variables, split: str, limit: int = 0) -> dict[str, np.ndarray]:
  """Probe outputs with labels and cue boxes for a split (the first `limit` examples if > 0)."""
  from jaxattr.data import input_pipeline

  batches, _ = input_pipeline.eval_batches(
    ex.builder,
    ex.config.data,
    split,
    global_batch=ex.config.eval.batch_size,
    process_index=0,
    process_count=1,
    extra_keys=('cue_boxes',),
  )
  parts: dict[str, list[np.ndarray]] = {}
  seen = 0
  for b in batches:
    keep = np.asarray(b['mask']).astype(bool)
    out = jax.device_get(probe_fn(variables, b['image']))
    out.update(labels=b['labels'], cue_boxes=b['cue_boxes'], index=b['index'])
    for k, v in out.items():
      parts.setdefault(k, []).append(np.asarray(v)[keep])
    seen += int(keep.sum())
    if limit and seen >= limit:
      break
  return {k: np.concatenate(v) for k, v in parts.items()}


def train_and_probe(
  config: ml_collections.ConfigDict,
  trace_every: int = 0,
  trace_batches: int = 4,
  split: str = 'test',
  select: bool = True,
) -> dict[str, Any]:
  """Trains `config` in process and scores localisation on `split`.

  Args:
    config: a run config on a dataset with cue boxes.
    trace_every: measure entropy, pointing game and gradients every this many steps.
    trace_batches: train batches per gradient probe.
    split: the split scored at the end.
    select: evaluate on the validation split every epoch and score the best epoch's
      model (as the training loop selects); False scores the last step's (tests).

  Returns:
    {'trace': [...], 'final': `score`'s dict, 'map_voc', 'ap': {name: AP}, 'steps',
    'wall_s'}.
  """
  start = time.time()
  ex = train_lib.create_experiment(config, jax.devices()[:1])
  names = ex.info.attribute_names
  levels = tuple(config.model.attention.levels)
  probe_fn = make_probe_fn(ex.model, config.data, levels)
  state = ex.state
  grids = grid_shapes(ex.model, state.variables(), config.data, levels)
  batches = ex.train_batches()
  # The probe's batches come from a second stream, so training sees exactly the data
  # order of `jaxattr.main` with the same config.
  probe_batches = ex.train_batches() if trace_every else None
  fixed = [next(probe_batches) for _ in range(trace_batches)] if trace_every else []
  fixed = [sharding.to_global(b, sharding.batch_sharded(ex.mesh)) for b in fixed]
  grad_fn = make_grad_fn(ex) if trace_every else None
  trace = []

  def measure(step):
    frozen = step < ex.freeze_steps
    data = probe_split(ex, probe_fn, state.variables(), config.data.eval_split, limit=512)
    row = {'step': step, 'epoch': step / ex.steps_per_epoch, 'scores': score(data, grids, names)}
    ap = metrics.compute_metrics(data['probs'], data['labels'], names)
    row['val_map'] = float(ap['map_voc'])
    row['grads'] = grad_summary(grad_fn, state, fixed, frozen)
    trace.append(row)
    ent = {k: v['overall'] for k, v in row['scores'].items() if k.startswith('entropy')}
    logging.info(
      'step %d: val mAP %.3f, entropy %s, grads %s',
      step,
      row['val_map'],
      ent,
      {k: round(v['norm'], 5) for k, v in row['grads'].items()},
    )

  best, best_value = None, -1.0
  for step in range(ex.total_steps):
    if trace_every and step % trace_every == 0:
      measure(step)
    state, _ = ex.train_step(state, next(batches), step)
    if not select:
      continue
    if (step + 1) % ex.steps_per_epoch == 0 or step + 1 == ex.total_steps:
      result, _ = ex.evaluate(state, config.data.eval_split)
      value = float(result['map_voc'])
      logging.info('epoch %.1f: val mAP %.4f', (step + 1) / ex.steps_per_epoch, value)
      if value > best_value:  # Selection on validation, as the training loop does.
        best_value = value
        best = (step + 1, jax.device_get(state.variables()))
  if trace_every:
    measure(ex.total_steps)
  best_step, variables = best if select else (ex.total_steps, state.variables())
  data = probe_split(ex, probe_fn, variables, split)
  res = metrics.compute_metrics(data['probs'], data['labels'], names)
  return {
    'trace': trace,
    'final': score(data, grids, names),
    'map_voc': float(res['map_voc']),
    'branch_map': branch_maps(data, names),
    'ap': {n: v['ap_voc'] for n, v in res['per_attribute'].items()},
    'best_step': best_step,
    'steps': ex.total_steps,
    'wall_s': time.time() - start,
  }


def score_workdir(workdir: str, split: str = 'test', data_dir: str = '') -> dict[str, Any]:
  """`train_and_probe`'s result for the best checkpoint of a finished run (no training).

  Args:
    workdir: the run's workdir (its config names the dataset).
    split: the split scored.
    data_dir: TFDS data_dir, if not the run's.

  Returns:
    The same dict as `train_and_probe`, with an empty trace.
  """
  from jaxattr import evaluation
  from jaxattr.run import files, restore

  start = time.time()
  config = files.load_config(workdir)
  if data_dir:
    with config.unlocked():
      config.data.data_dir = data_dir
  evaluator = evaluation.create_evaluator(config, jax.devices()[:1])
  ref = restore.resolve_checkpoint(workdir, 'best')
  device = jax.devices()[0]
  variables = restore.restore_variables(workdir, ref, jax.sharding.SingleDeviceSharding(device))
  levels = tuple(config.model.attention.levels)
  names = evaluator.info.attribute_names
  probe_fn = make_probe_fn(evaluator.model, config.data, levels)
  grids = grid_shapes(evaluator.model, variables, config.data, levels)
  data = probe_split(evaluator, probe_fn, variables, split)
  res = metrics.compute_metrics(data['probs'], data['labels'], names)
  return {
    'trace': [],
    'final': score(data, grids, names),
    'map_voc': float(res['map_voc']),
    'branch_map': branch_maps(data, names),
    'ap': {n: v['ap_voc'] for n, v in res['per_attribute'].items()},
    'best_step': int(ref.step),
    'steps': int(ref.step),
    'wall_s': time.time() - start,
  }


# --- Report ----------------------------------------------------------------------------


def markdown(results: dict[str, dict[str, Any]], command: str) -> str:
  """The result tables of `main` (one row per model and map kind)."""
  lines = [f'Command: `{command}`', '']
  for model_name, r in results.items():
    lines.append(
      f'**{model_name}**: test mAP (VOC) {100 * r["map_voc"]:.1f}; best validation step '
      f'{r["best_step"]} of {r["steps"]}; {r["wall_s"] / 60:.1f} min'
      + ''.join(f'; {k} branch alone {100 * v:.1f}' for k, v in r.get('branch_map', {}).items())
      + '.'
    )
  lines += [
    '',
    '| model | map | grid | pointing game | chance | ratio | mask entropy (positives) |',
    '|---|---|---|---|---|---|---|',
  ]
  for model_name, r in results.items():
    final = r['final']
    for kind, v in final.items():
      if kind.startswith('entropy'):
        continue
      ent = ''
      if kind.startswith('mask_'):
        ent = f'{final["entropy_" + kind.rsplit("_", 1)[1]]["overall"]:.2f}'
      what = {'cam': 'CAM (primary W on k2)'}.get(kind, kind.replace('_', ' a, stage '))
      if kind.startswith('weighted_'):
        what = f'a*s, stage {kind.rsplit("_", 1)[1]}'
      elif kind.startswith('mask_'):
        what = f'a, stage {kind.rsplit("_", 1)[1]}'
      h, w = v['grid']
      lines.append(
        f'| {model_name} | {what} | {h}x{w} | {100 * v["overall"]:.1f} % | '
        f'{100 * v["chance"]:.1f} % | {v["overall"] / max(v["chance"], 1e-9):.1f}x | {ent} |'
      )
  for model_name, r in results.items():
    final = r['final']
    kinds = [k for k in final if not k.startswith('entropy')]
    names = list(next(iter(final[k] for k in kinds))['per_attribute'])
    lines += ['', f'Per attribute, {model_name} (hit % / chance %; test AP):', '']
    columns = kinds + [k for k in final if k.startswith('entropy')]
    lines += ['| attribute | n | AP | ' + ' | '.join(columns) + ' |']
    lines += ['|' + '---|' * (3 + len(columns))]
    for n in names:
      cells = []
      for k in kinds:
        h, c, _ = final[k]['per_attribute'][n]
        cells.append(f'{100 * h:.0f} / {100 * c:.0f}')
      for k in final:
        if k.startswith('entropy'):
          cells.append(f'{final[k]["per_attribute"].get(n, float("nan")):.2f}')
      count = final[kinds[0]]['per_attribute'][n][2]
      ap = 100 * r['ap'].get(n, float('nan'))
      lines.append(f'| {n} | {count} | {ap:.1f} | ' + ' | '.join(cells) + ' |')
  for model_name, r in results.items():
    if not r['trace']:
      continue
    lines += ['', f'Trace of {model_name} (validation positives, first 512 examples):', '']
    groups = sorted(r['trace'][0]['grads'])
    ent_keys = sorted(k for k in r['trace'][0]['scores'] if k.startswith('entropy'))
    pg_keys = sorted(k for k in r['trace'][0]['scores'] if k.startswith('mask_'))
    lines.append(
      '| step | epoch | val mAP | '
      + ''.join(f'{k} | ' for k in ent_keys)
      + ''.join(f'pointing {k} (chance) | ' for k in pg_keys)
      + ' | '.join(f'|g| {g} (coh.)' for g in groups)
      + ' |'
    )
    lines.append('|' + '---|' * (3 + len(ent_keys) + len(pg_keys) + len(groups)))
    for row in r['trace']:
      sc = row['scores']
      cells = [f'{sc[k]["overall"]:.2f}' for k in ent_keys]
      cells += [f'{100 * sc[k]["overall"]:.0f} ({100 * sc[k]["chance"]:.0f})' for k in pg_keys]
      cells += [
        f'{row["grads"][g]["norm"]:.2e} ({row["grads"][g]["coherence"]:.2f})' for g in groups
      ]
      lines.append(
        f'| {row["step"]} | {row["epoch"]:.1f} | {100 * row["val_map"]:.1f} | '
        + ' | '.join(cells)
        + ' |'
      )
  return '\n'.join(lines) + '\n'


def main(argv: Sequence[str]) -> None:
  del argv
  command = 'python -m experiments.localisation ' + ' '.join(sys.argv[1:])
  if FLAGS.uniform_masks:
    from jaxattr.models import attention

    attention.spatial_softmax = uniform_masks
  if FLAGS.workdir:
    data_dir = FLAGS.config.data.data_dir if FLAGS.config else ''
    results = {FLAGS.workdir: score_workdir(FLAGS.workdir, FLAGS.split, data_dir)}
    _write(markdown(results, command), results)
    return
  config = FLAGS.config
  if config is None:
    raise app.UsageError('Give --config (to train) or --workdir (to score a run).')
  runs = {'attention model': config}
  if not FLAGS.skip_primary:
    primary = config.copy_and_resolve_references()
    with primary.unlocked():
      primary.model.attention.levels = ()
    runs['primary only'] = primary
  results = {}
  for name, cfg in runs.items():
    logging.info('Training the %s.', name)
    results[name] = train_and_probe(cfg, FLAGS.trace_every_steps, FLAGS.trace_batches, FLAGS.split)
  _write(markdown(results, command), results)


def uniform_masks(z: jax.Array) -> jax.Array:
  """A stand-in for `attention.spatial_softmax` that ignores the logits: 1 / (H * W)."""
  b, h, w, c = z.shape
  return jnp.full((b, h, w, c), 1.0 / (h * w), jnp.float32) + 0.0 * z.astype(jnp.float32)


def define_flags() -> None:
  """The script's flags (defined only when it runs, so tests can import this module)."""
  config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  flags.DEFINE_string('out', '', 'Markdown file for the result table (and a .json beside).')
  flags.DEFINE_integer('trace_every_steps', 0, 'Measure entropy/gradients every N steps.')
  flags.DEFINE_integer('trace_batches', 4, 'Train batches per gradient probe.')
  flags.DEFINE_bool('skip_primary', False, 'Do not train the primary-only model.')
  flags.DEFINE_string('split', 'test', 'Split scored at the end.')
  flags.DEFINE_string(
    'workdir', '', 'Score the best checkpoint of this finished run instead of training.'
  )
  flags.DEFINE_bool(
    'uniform_masks',
    False,
    'Replace the spatial softmax by a uniform mask (1 / cells) in the model: with '
    '--workdir at inference only (does the trained classifier use the mask?), else in '
    'training too.',
  )


def _write(text: str, results: dict[str, Any]) -> None:
  print(text)
  if FLAGS.out:
    Path(FLAGS.out).write_text(text)
    Path(FLAGS.out).with_suffix('.json').write_text(json.dumps(results, indent=1))


if __name__ == '__main__':
  define_flags()
  app.run(main)
