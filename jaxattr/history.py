"""The prediction-variance history of Active Bias (docs/method.md, "History"), pure functions.

The state is a plain dict of arrays, so it lives in the train state and is
checkpointed with it:

  probs  float32 [S, N, K, C]: the K most recent probabilities of each of the N
         training examples, for S sources (attention levels, or 1 for the
         aggregate prediction) and C attributes;
  count  int32 [N]: how many times each example has been written.

Example n's next write goes to slot `count[n] % K`, so slots 0..count-1 are the
valid ones before the ring wraps and all K after. Examples are addressed by their
stable dataset `index`, never by batch position, so the data may be shuffled.

All functions are jit-able; `update` takes `enabled` as a traced bool so the
burn-in switch does not recompile the step.
"""

import jax
import jax.numpy as jnp

Array = jax.Array
History = dict[str, Array]

SOURCES = ('attention', 'aggregate')


def init(num_sources: int, num_examples: int, length: int, num_classes: int) -> History:
  """An empty history.

  Args:
    num_sources: S, see `num_sources`.
    num_examples: N, the size of the training split.
    length: K, the number of most recent entries kept (`config.history.length`).
    num_classes: C, the number of attributes.

  Returns:
    {'probs': float32 zeros [S, N, K, C], 'count': int32 zeros [N]}.
  """
  if length < 1:
    raise ValueError(f'history length must be >= 1, got {length}')
  return {
    'probs': jnp.zeros((num_sources, num_examples, length, num_classes), jnp.float32),
    'count': jnp.zeros((num_examples,), jnp.int32),
  }


def num_sources(levels_count: int, aggregation: str, source: str) -> int:
  """How many probability sources the history keeps (S).

  Args:
    levels_count: number of attention levels (`len(config.model.attention.levels)`).
    aggregation: `config.model.attention.aggregation`; with 'score' each level
      has its own attention classifier, with a feature-level variant the masks
      are summed into one classifier.
    source: `config.history.source`, 'attention' or 'aggregate'.

  Returns:
    S: 0 without attention (no attention loss reads a history); otherwise 1 for
    'aggregate' and, for 'attention', the number of attention classifiers
    (`levels_count` for score aggregation, 1 for feature aggregation).
  """
  if source not in SOURCES:
    raise ValueError(f'history source must be one of {SOURCES}, got {source!r}')
  if levels_count == 0:
    return 0
  if source == 'aggregate':
    return 1
  return levels_count if aggregation == 'score' else 1


def source_probs(outputs: dict[str, Array], source: str) -> Array:
  """The probabilities to store, from the model outputs.

  Args:
    outputs: the model output dict with 'logits' [B, C] (aggregated) and
      'attention_logits' [L, B, C].
    source: 'attention' (each attention classifier) or 'aggregate'.

  Returns:
    float32 [S, B, C]: sigmoid(attention_logits), or sigmoid(logits)[None].
  """
  if source == 'attention':
    probs = jax.nn.sigmoid(outputs['attention_logits'])
  elif source == 'aggregate':
    probs = jax.nn.sigmoid(outputs['logits'])[None]
  else:
    raise ValueError(f'history source must be one of {SOURCES}, got {source!r}')
  return jax.lax.stop_gradient(probs.astype(jnp.float32))


def std(history: History, indices: Array) -> Array:
  """The Active-Bias standard deviation of the stored predictions.

  With h = min(count, K) valid entries and v their unbiased sample variance
  (ddof = 1), `std = sqrt(v + v**2 / (h - 1))` where h >= 2, else 0. Unwritten
  (zero) slots are never counted.

  Args:
    history: the state from `init` / `update`.
    indices: int [B] dataset indices of the batch, in [0, N).

  Returns:
    float32 [S, B, C].
  """
  probs = history['probs'][:, indices]  # [S, B, K, C]
  length = probs.shape[2]
  valid_count = jnp.minimum(history['count'][indices], length)  # [B]
  slot_valid = jnp.arange(length)[None, :] < valid_count[:, None]  # [B, K]
  weights = slot_valid[None, :, :, None].astype(probs.dtype)
  h = valid_count[None, :, None].astype(probs.dtype)  # [1, B, 1]
  mean = jnp.sum(weights * probs, axis=2) / jnp.maximum(h, 1.0)
  sq_dev = weights * (probs - mean[:, :, None, :]) ** 2
  dof = jnp.maximum(h - 1.0, 1.0)
  var = jnp.sum(sq_dev, axis=2) / dof
  enough = h >= 2.0
  # The where sits inside the sqrt so no NaN gradient can arise from sqrt(0).
  radicand = jnp.where(enough, var + var**2 / dof, 0.0)
  return jax.lax.stop_gradient(jnp.where(enough, jnp.sqrt(radicand), 0.0))


def first_occurrence(indices: Array) -> Array:
  """Which batch rows are the first occurrence of their index.

  O(B²) pairwise comparison; fine for B <= 1024.

  Args:
    indices: int [B].

  Returns:
    bool [B]: no earlier row has the same index.
  """
  batch = indices.shape[0]
  same = indices[:, None] == indices[None, :]
  earlier = jnp.arange(batch)[None, :] < jnp.arange(batch)[:, None]  # [i, j]: j < i
  return ~jnp.any(same & earlier, axis=1)


def update(
  history: History,
  indices: Array,
  probs: Array,
  enabled: bool | Array,
) -> History:
  """Writes this step's probabilities into the ring buffer.

  For every example, p goes into slot `count % K` and `count` grows by one.
  Rule for an index that appears more than once in the batch (a train batch holds
  distinct examples, but a batch refilled after a skipped corrupt image reads past
  the epoch's end): only its FIRST occurrence in batch order is written, and its
  count grows by exactly one, so the result is deterministic and never depends on
  scatter order.

  Args:
    history: the state from `init` / `update`.
    indices: int [B] dataset indices in [0, N).
    probs: float [S, B, C], see `source_probs`.
    enabled: write at all (the caller passes `epoch >= history.start_epoch` as a
      traced bool during burn-in, so the step compiles once).

  Returns:
    The updated history; unchanged when `enabled` is False.
  """
  buffer, count = history['probs'], history['count']
  num_examples, length = buffer.shape[1], buffer.shape[2]
  indices = jnp.asarray(indices, jnp.int32)
  write = first_occurrence(indices) & jnp.asarray(enabled, bool)
  # Rows that must not be written are sent out of bounds and dropped by the
  # scatter, which leaves one scatter with unique in-bound targets.
  target = jnp.where(write, indices, num_examples)
  slot = count[jnp.clip(indices, 0, num_examples - 1)] % length
  buffer = buffer.at[:, target, slot].set(probs.astype(buffer.dtype), mode='drop')
  count = count.at[target].add(1, mode='drop')
  return {'probs': buffer, 'count': count}
