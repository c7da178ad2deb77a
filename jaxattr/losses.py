"""The losses of the paper (docs/method.md, "Losses") as pure, jit-able functions.

Notation: logit `x`, p = sigmoid(x), target y in {0, 1}, validity mask m in {0, 1}.
Every log-probability goes through `jax.nn.log_sigmoid` (never `log(sigmoid)`), and
the focal modulators (1-p)^γ and p^γ are computed as `exp(γ · log_sigmoid(∓x))`:
`p ** γ` with γ < 1 has an infinite derivative at p = 0, which a saturated logit
reaches in float32, while the exp/log_sigmoid form keeps every gradient finite.

Element-wise losses return [B, C]; `reduce` turns them into the batch scalar (sum
or mean over attributes, `loss.attribute_reduction`; mean over samples);
`total_loss` is Eq. 7 with the ablation switches of `config.loss`.
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

UNKNOWN_MODES = ('negative', 'ignore')
CLASS_WEIGHT_MODES = ('vespa', 'paper_literal', 'none')
PRIMARY_LOSSES = ('bce', 'weighted_bce', 'weighted_focal')
ATTENTION_LOSSES = ('bce', 'variance_weighted')
ATTRIBUTE_REDUCTIONS = ('sum', 'mean')


def targets_and_mask(labels: Array, unknown: str = 'negative') -> tuple[Array, Array]:
  """Binary targets and the validity mask from labels with 1 / 0 / -1 (unknown).

  Args:
    labels: int [B, C]; 1 = present, 0 = absent, -1 = unknown.
    unknown: 'negative' (unknown counts as absent: target 0, mask 1, as the
      literature trains) or 'ignore' (mask 0, the element adds no loss).

  Returns:
    (targets, mask), both float32 [B, C].
  """
  if unknown not in UNKNOWN_MODES:
    raise ValueError(f'unknown must be one of {UNKNOWN_MODES}, got {unknown!r}')
  labels = jnp.asarray(labels)
  targets = (labels == 1).astype(jnp.float32)
  if unknown == 'negative':
    mask = jnp.ones(labels.shape, jnp.float32)
  else:
    mask = (labels >= 0).astype(jnp.float32)
  return targets, mask


def positive_ratio(labels: np.ndarray) -> np.ndarray:
  """Per-attribute positive ratio r_c = positives / labelled samples (numpy).

  Args:
    labels: int [N, C] with 1 / 0 / -1; unknown (-1) entries are not counted.

  Returns:
    float64 [C]; 0 for an attribute without any labelled sample.
  """
  labels = np.asarray(labels)
  positives = (labels == 1).sum(axis=0)
  labelled = (labels >= 0).sum(axis=0)
  return positives / np.maximum(labelled, 1)


def class_weights(positive_ratio: Array | np.ndarray, mode: str) -> tuple[Array, Array]:
  """Class weights of the positive and negative terms from the positive ratios.

  Args:
    positive_ratio: [C] training-set positive ratios r_c.
    mode: 'vespa' (w_pos = exp(1 - r), w_neg = exp(r); what VeSPA, DeepMAR and
      their successors implement; docs/method.md, "Losses"), 'paper_literal' (exp(-r) on both
      terms, the paper's formula read literally) or 'none' (ones).

  Returns:
    (w_pos, w_neg), float32 [C] each.
  """
  r = jnp.asarray(positive_ratio, jnp.float32)
  if mode == 'vespa':
    return jnp.exp(1.0 - r), jnp.exp(r)
  if mode == 'paper_literal':
    w = jnp.exp(-r)
    return w, w
  if mode == 'none':
    return jnp.ones_like(r), jnp.ones_like(r)
  raise ValueError(f'class weight mode must be one of {CLASS_WEIGHT_MODES}, got {mode!r}')


def bce(logits: Array, targets: Array) -> Array:
  """Element-wise binary cross-entropy L_b = -[y log p + (1-y) log(1-p)].

  Args:
    logits: [..., C].
    targets: [..., C] in [0, 1].

  Returns:
    The per-element loss, same shape as `logits`.
  """
  return -(targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits))


def weighted_focal(
  logits: Array, targets: Array, w_pos: Array, w_neg: Array, gamma: float
) -> Array:
  """Element-wise weighted focal loss L_w (paper Eq. 4).

  `-[w_pos (1-p)^γ y log p + w_neg p^γ (1-y) log(1-p)]`. With γ = 0 the modulators
  are exp(0) = 1 exactly, so this is weighted BCE; with unit weights, `bce`.

  Args:
    logits: [..., C].
    targets: [..., C] in [0, 1].
    w_pos: [C] weights of the positive term.
    w_neg: [C] weights of the negative term.
    gamma: focusing parameter γ >= 0.

  Returns:
    The per-element loss, same shape as `logits`.
  """
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  # exp(γ log(1-p)) rather than (1-p)**γ: finite gradient where p saturates.
  pos = w_pos * jnp.exp(gamma * log_not_p) * targets * log_p
  neg = w_neg * jnp.exp(gamma * log_p) * (1.0 - targets) * log_not_p
  return -(pos + neg)


def variance_weighted_bce(logits: Array, targets: Array, std: Array) -> Array:
  """Element-wise attention loss L_a (paper Eq. 6): `(1 + std) * L_b`.

  Args:
    logits: [..., C].
    targets: [..., C] in [0, 1].
    std: prediction standard deviation from the history, broadcastable to
      `logits`; it is a weight, so no gradient flows into it.

  Returns:
    The per-element loss, same shape as `logits`.
  """
  return (1.0 + jax.lax.stop_gradient(std)) * bce(logits, targets)


def reduce(per_element: Array, mask: Array, attribute_reduction: str = 'sum') -> Array:
  """The batch loss: `mask * loss` summed or averaged over attributes, mean over samples.

  'sum' is the paper's Eqs. 3-4 (a sum over the C attributes); 'mean' divides that
  sum by C, as the authors' released code does (docs/method.md, "Losses"): the
  paper's learning rate and weight decay were tuned with the mean. The divisor is
  C whatever the mask, so an ignored label lowers the loss, as with the sum.

  Args:
    per_element: [B, C] element-wise loss.
    mask: [B, C] validity mask (0 drops the element).
    attribute_reduction: 'sum' or 'mean' over the attributes.

  Returns:
    A scalar.
  """
  if attribute_reduction not in ATTRIBUTE_REDUCTIONS:
    raise ValueError(
      f'loss.attribute_reduction must be one of {ATTRIBUTE_REDUCTIONS}, got {attribute_reduction!r}'
    )
  per_sample = jnp.sum(mask * per_element, axis=-1)
  if attribute_reduction == 'mean':
    per_sample = per_sample / per_element.shape[-1]
  return jnp.mean(per_sample)


def _config_value(loss_config: Any, name: str, default: Any = None) -> Any:
  if isinstance(loss_config, Mapping):
    return loss_config[name] if default is None else loss_config.get(name, default)
  return getattr(loss_config, name) if default is None else getattr(loss_config, name, default)


def total_loss(
  primary_logits: Array,
  attention_logits: Array | None,
  labels: Array,
  std: Array | None,
  w_pos: Array,
  w_neg: Array,
  loss_config: Any,
  unknown: str = 'negative',
) -> tuple[Array, dict[str, Array]]:
  """The total loss of Eq. 7: `L_w(y_p) + sum_i L_a_i(y_a_i)`, with its terms.

  Args:
    primary_logits: [B, C] logits of the primary classifier y_p.
    attention_logits: [L, B, C] logits of the L attention classifiers; L may be 0
      (or None) for the primary network alone.
    labels: int [B, C] with 1 / 0 / -1.
    std: [L, B, C] or [1, B, C] (one history broadcast to every level, for
      `history.source='aggregate'`) history standard deviations; None means 0.
      Only read when `loss_config.attention == 'variance_weighted'`.
    w_pos: [C] class weights of positive terms (ignored when primary is 'bce').
    w_neg: [C] class weights of negative terms (ignored when primary is 'bce').
    loss_config: `config.loss`: `primary` in {'bce', 'weighted_bce',
      'weighted_focal'}, `attention` in {'bce', 'variance_weighted'}, `gamma`,
      `attribute_reduction` in {'sum', 'mean'} (default 'sum', see `reduce`).
    unknown: how labels of -1 enter the loss ('negative' or 'ignore').

  Returns:
    (loss, terms): the scalar loss and a dict with the scalar 'primary' and
    'attention_{i}' (i = 0 .. L-1) terms, which sum to `loss`.
  """
  primary = _config_value(loss_config, 'primary')
  attention = _config_value(loss_config, 'attention')
  if primary not in PRIMARY_LOSSES:
    raise ValueError(f'loss.primary must be one of {PRIMARY_LOSSES}, got {primary!r}')
  if attention not in ATTENTION_LOSSES:
    raise ValueError(f'loss.attention must be one of {ATTENTION_LOSSES}, got {attention!r}')
  targets, mask = targets_and_mask(labels, unknown)
  over_attributes = _config_value(loss_config, 'attribute_reduction', 'sum')

  if primary == 'bce':
    primary_elements = bce(primary_logits, targets)
  else:
    gamma = _config_value(loss_config, 'gamma') if primary == 'weighted_focal' else 0.0
    primary_elements = weighted_focal(primary_logits, targets, w_pos, w_neg, gamma)
  terms = {'primary': reduce(primary_elements, mask, over_attributes)}

  num_levels = 0 if attention_logits is None else attention_logits.shape[0]
  if attention == 'variance_weighted' and std is not None and num_levels:
    if std.shape[0] not in (1, num_levels):
      raise ValueError(
        f'std has {std.shape[0]} sources; expected 1 or {num_levels} (one per level)'
      )
  for i in range(num_levels):
    if attention == 'variance_weighted' and std is not None:
      level_std = std[0] if std.shape[0] == 1 else std[i]
      elements = variance_weighted_bce(attention_logits[i], targets, level_std)
    else:
      elements = bce(attention_logits[i], targets)
    terms[f'attention_{i}'] = reduce(elements, mask, over_attributes)

  loss = sum(terms.values())
  return loss, terms
