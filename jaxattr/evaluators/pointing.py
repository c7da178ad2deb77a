"""The pointing game: do the masks, the weighted masks and the primary CAMs point at the cue?

On a dataset with cue boxes (the synthetic builders), for every positive (image,
attribute) pair it scores with the pointing game (`metrics.pointing_game`) the
argmax cell of

  * the attention masks a (spatial softmax) per level,
  * the confidence-weighted masks a * s per level,
  * the class activation maps of the primary classifier, CAM = k2 . W_c (the
    primary Dense kernel applied to the stage-4 tap before its global average
    pooling; the primary logit is the spatial mean of the CAM plus the bias),

each beside its chance level (a uniformly random cell,
`metrics.pointing_game_chance`), and the normalised entropy of the masks,
H(a) / log(h * w): 1 for a uniform mask, 0 for one cell, averaged over positive
pairs (an absent attribute has nothing to point at).

Options: `limit` (> 0: only the first examples of the split, e.g. a cheap
per-epoch trace).
"""

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxattr import inference, metrics, schema
from jaxattr.evaluators import common


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


def _apply_with_k2(model, variables, images, data_config):
  """The model's outputs and its stage-4 tap k2 (captured, not recomputed)."""

  def is_backbone(mdl, method_name):
    return mdl.name == 'backbone' and method_name == '__call__'

  out, state = model.apply(
    variables,
    inference.normalize(images, data_config),
    train=False,
    capture_intermediates=is_backbone,
    mutable=['intermediates'],
  )
  return out, state['intermediates']['backbone']['__call__'][0]['k2']


def probe_step(
  variables: dict[str, Any],
  batch: dict[str, jax.Array],
  *,
  model,
  data_config: ml_collections.ConfigDict,
  levels: Sequence[int],
) -> dict[str, jax.Array]:
  """The argmax cells, mask entropies, probabilities and CAM cells of one eval batch; pure.

  Returns:
    `labels`, `mask`, `index`, `cue_boxes`, `probs`, `cells_cam`, the branches'
    probabilities (`branch_primary`, `branch_attention`) and per level
    `cells_mask_<l>`, `cells_weighted_<l>`, `entropy_<l>` ([B, C]).
  """
  out, k2 = _apply_with_k2(model, variables, batch['image'], data_config)
  cam = class_activation_maps(k2, variables['params']['classifier']['kernel'])
  result = {k: batch[k] for k in ('labels', 'mask', 'index', 'cue_boxes')}
  result['probs'] = jax.nn.sigmoid(out['logits'])
  result['cells_cam'] = metrics.argmax_cells(cam)
  # Each branch's own probabilities, to see what each one contributes.
  result['branch_primary'] = jax.nn.sigmoid(out['primary_logits'])
  if levels:
    result['branch_attention'] = jax.nn.sigmoid(jnp.mean(out['attention_logits'], axis=0))
  for level, a, s in zip(levels, out['masks'], out['confidences'], strict=True):
    result[f'cells_mask_{level}'] = metrics.argmax_cells(a)
    result[f'cells_weighted_{level}'] = metrics.argmax_cells(a * s)
    result[f'entropy_{level}'] = mask_entropy(a)
  return result


def _grid_key(kind: str) -> int | str:
  """'mask_3' / 'weighted_3' -> 3 (a level); 'cam' -> 'cam'."""
  return 'cam' if kind == 'cam' else int(kind.rsplit('_', 1)[1])


def _per_attribute(names, values, counts) -> dict[str, float | None]:
  return {n: (float(x) if c else None) for n, x, c in zip(names, values, counts, strict=True)}


def pointing_game(
  data: dict[str, np.ndarray], names: Sequence[str], grids: dict[int | str, tuple[int, int]]
) -> dict[str, Any]:
  """Pointing-game accuracy and its chance level per cell kind and attribute.

  Chance is the hit rate of a uniformly random argmax cell on the same positives,
  scored with the same cell rule (`metrics.pointing_game_chance`).

  Args:
    data: gathered outputs with `cells_<kind>`, `cue_boxes` and `labels`.
    names: attribute names.
    grids: (h, w) of the cells per attention level (int) and of the CAM ('cam').

  Returns:
    {kind: {'grid', 'overall', 'chance', 'per_attribute', 'chance_per_attribute',
    'positives'}} for kinds `mask_<level>`, `weighted_<level>` (and `cam`); an
    attribute without positives has None.
  """
  out = {}
  for key in sorted(k for k in data if k.startswith('cells_')):
    kind = key[len('cells_') :]
    grid = tuple(grids[_grid_key(kind)])
    hits, counts = metrics.pointing_game(data[key], grid, data['cue_boxes'], data['labels'])
    chance, _ = metrics.pointing_game_chance(data['cue_boxes'], data['labels'], grid)
    valid = counts > 0
    total = max(int(counts[valid].sum()), 1)
    out[kind] = {
      'grid': list(grid),
      'overall': float(np.sum(hits[valid] * counts[valid]) / total),
      'chance': float(np.sum(chance[valid] * counts[valid]) / total),
      'per_attribute': _per_attribute(names, hits, counts),
      'chance_per_attribute': _per_attribute(names, chance, counts),
      'positives': {n: int(c) for n, c in zip(names, counts, strict=True)},
    }
  return out


def entropies(data: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, Any]:
  """Mean mask entropy over positive pairs: {'entropy_<l>': {'overall', 'per_attribute'}}."""
  positive = data['labels'] == 1
  out = {}
  for key in sorted(k for k in data if k.startswith('entropy_')):
    ent = data[key]
    per = {
      n: float(ent[positive[:, c], c].mean()) for c, n in enumerate(names) if positive[:, c].any()
    }
    out[key] = {'overall': float(ent[positive].mean()), 'per_attribute': per}
  return out


def branch_maps(data: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, float]:
  """mAP (VOC) of each branch's own probabilities (primary; mean of attention logits)."""
  return {
    k[len('branch_') :]: float(metrics.compute_metrics(data[k], data['labels'], names)['map_voc'])
    for k in sorted(data)
    if k.startswith('branch_')
  }


class PointingEvaluator(common.Evaluator):
  """The pointing game of masks, weighted masks and CAMs, with chance and mask entropy."""

  OPTIONS = {'limit': 0}

  @classmethod
  def check(cls, name: str, spec: dict[str, Any]) -> list[str]:
    from jaxattr import config_validation

    return [
      p for p in [config_validation.check_int(f'config.evals.{name}.limit', spec['limit'], 0)] if p
    ]

  def __init__(self, name: str, spec: dict[str, Any], ctx: common.Context):
    super().__init__(name, spec, ctx)
    config = ctx.config
    levels = tuple(config.model.attention.levels)
    self.probe = ctx.compile(
      lambda v, b: probe_step(v, b, model=ctx.model, data_config=config.data, levels=levels)
    )

  def grids(self, variables: dict[str, Any]) -> dict[int | str, tuple[int, int]]:
    """(h, w) of each level's masks and of the CAM (k2), from shapes only."""
    config = self.ctx.config
    image = jax.ShapeDtypeStruct((1, *schema.image_hw(config.data), 3), jnp.uint8)
    _, k2 = jax.eval_shape(
      lambda v, x: _apply_with_k2(self.ctx.model, v, x, config.data), variables, image
    )
    return {**self.ctx.grids(variables), 'cam': tuple(k2.shape[1:3])}

  def evaluate(self, variables: dict[str, Any]) -> dict[str, Any]:
    if not self.ctx.info.has_cue_boxes:
      raise ValueError(
        f'config.evals.{self.name}: the pointing game needs cue boxes; '
        f'{self.ctx.builder.info.full_name} has none (the synthetic builders do).'
      )
    data = self.ctx.predictions(variables, self.spec['split'], self.probe, self.spec['limit'])
    names = self.ctx.names
    return {
      'num_examples': int(len(data['index'])),
      'pointing_game': pointing_game(data, names, self.grids(variables)),
      **entropies(data, names),
      'branch_map': branch_maps(data, names),
    }

  def scalars(self, details: dict[str, Any]) -> dict[str, float]:
    out = {}
    for kind, r in details['pointing_game'].items():
      out[kind] = r['overall']
      out[f'{kind}_chance'] = r['chance']
    out.update({k: v['overall'] for k, v in details.items() if k.startswith('entropy_')})
    return out
