"""Tests of jaxattr.history against a numpy transcription of Active Bias."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattr import history

S, N, K, C = 2, 6, 5, 3


def _np_active_bias_std(entries):
  """Chang et al. 2017 from the list of the most recent probabilities [h, ...]."""
  entries = np.asarray(entries, np.float64)
  h = entries.shape[0]
  if h < 2:
    return np.zeros(entries.shape[1:])
  v = np.var(entries, axis=0, ddof=1)
  return np.sqrt(v + v**2 / (h - 1))


def _write_sequence(num_writes, seed=0):
  """Writes `num_writes` random steps for examples [3, 1]; returns state and writes."""
  rng = np.random.default_rng(seed)
  state = history.init(S, N, K, C)
  indices = jnp.array([3, 1])
  writes = []
  for _ in range(num_writes):
    probs = rng.random((S, 2, C)).astype(np.float32)
    writes.append(probs)
    state = history.update(state, indices, probs, True)
  return state, writes


def test_init_shapes():
  state = history.init(S, N, K, C)
  assert state['probs'].shape == (S, N, K, C) and state['probs'].dtype == jnp.float32
  assert state['count'].shape == (N,) and state['count'].dtype == jnp.int32
  assert not np.any(state['probs']) and not np.any(state['count'])


@pytest.mark.parametrize('num_writes', [0, 1, 2, 5, 7])
def test_std_matches_numpy(num_writes):
  state, writes = _write_sequence(num_writes)
  got = history.std(state, jnp.array([1, 3, 0]))
  assert got.shape == (S, 3, C)
  # Only the last K writes are kept (7 writes: the ring has wrapped).
  kept = writes[-K:] if writes else []
  for s in range(S):
    for b, (index, column) in enumerate([(1, 1), (3, 0)]):
      entries = [w[s, column] for w in kept]
      expected = _np_active_bias_std(entries) if entries else np.zeros(C)
      np.testing.assert_allclose(got[s, b], expected, rtol=1e-5, atol=1e-7, err_msg=f'{index}')
    # Example 0 was never written.
    np.testing.assert_array_equal(got[s, 2], np.zeros(C))
  np.testing.assert_array_equal(state['count'], [0, num_writes, 0, num_writes, 0, 0])


def test_std_does_not_count_zero_slots():
  # Two identical writes: variance 0, even though the 3 unwritten slots hold 0.
  state = history.init(1, 2, K, 1)
  for _ in range(2):
    state = history.update(state, jnp.array([0]), jnp.full((1, 1, 1), 0.8), True)
  np.testing.assert_array_equal(history.std(state, jnp.array([0])), np.zeros((1, 1, 1)))


def test_ring_wrap_position():
  state = history.init(1, 1, 3, 1)
  for step in range(5):  # Values 0, 1, 2 fill slots 0..2; 3 and 4 overwrite slots 0, 1.
    state = history.update(state, jnp.array([0]), jnp.full((1, 1, 1), float(step)), True)
  np.testing.assert_array_equal(state['probs'][0, 0, :, 0], [3.0, 4.0, 2.0])
  assert int(state['count'][0]) == 5


def test_burn_in_leaves_history_unchanged():
  state, _ = _write_sequence(2)
  probs = jnp.full((S, 2, C), 0.25)
  after = history.update(state, jnp.array([3, 4]), probs, False)
  np.testing.assert_array_equal(after['probs'], state['probs'])
  np.testing.assert_array_equal(after['count'], state['count'])
  after = history.update(state, jnp.array([3, 4]), probs, jnp.array(False))
  np.testing.assert_array_equal(after['probs'], state['probs'])
  np.testing.assert_array_equal(after['count'], state['count'])


def test_duplicate_indices_first_occurrence_written_once():
  state = history.init(1, 4, K, 1)
  indices = jnp.array([2, 0, 2, 2, 0])
  probs = jnp.array([0.1, 0.2, 0.3, 0.4, 0.5]).reshape(1, 5, 1)
  state = history.update(state, indices, probs, True)
  np.testing.assert_array_equal(state['count'], [1, 0, 1, 0])
  np.testing.assert_allclose(state['probs'][0, 2, :, 0], [0.1, 0, 0, 0, 0])
  np.testing.assert_allclose(state['probs'][0, 0, :, 0], [0.2, 0, 0, 0, 0])


def test_under_jit_matches_numpy_reference():
  rng = np.random.default_rng(1)
  n, k, c, steps = 5, 3, 2, 6
  update = jax.jit(history.update)
  read = jax.jit(history.std)
  state = history.init(1, n, k, c)
  ref = [[] for _ in range(n)]
  for step in range(steps):
    indices = rng.integers(0, n, size=4)
    probs = rng.random((1, 4, c)).astype(np.float32)
    enabled = step >= 1  # Burn-in of one step, passed as a traced bool.
    state = update(state, jnp.asarray(indices), probs, jnp.asarray(enabled))
    if enabled:
      seen = set()
      for b in range(4):
        if indices[b] not in seen:
          seen.add(indices[b])
          ref[indices[b]].append(probs[0, b])
  assert update._cache_size() == 1
  got = read(state, jnp.arange(n))
  for i in range(n):
    assert int(state['count'][i]) == len(ref[i])
    expected = _np_active_bias_std(ref[i][-k:]) if ref[i] else np.zeros(c)
    np.testing.assert_allclose(got[0, i], expected, rtol=1e-5, atol=1e-7)


def test_source_probs_and_num_sources():
  outputs = {
    'logits': jnp.array([[0.0, 2.0]]),
    'attention_logits': jnp.array([[[1.0, -1.0]], [[0.0, 3.0]]]),
  }
  sig = lambda x: 1 / (1 + np.exp(-np.asarray(x, np.float64)))
  np.testing.assert_allclose(
    history.source_probs(outputs, 'attention'), sig(outputs['attention_logits']), rtol=1e-6
  )
  aggregate = history.source_probs(outputs, 'aggregate')
  assert aggregate.shape == (1, 1, 2)
  np.testing.assert_allclose(aggregate[0], sig(outputs['logits']), rtol=1e-6)
  with pytest.raises(ValueError):
    history.source_probs(outputs, 'primary')

  assert history.num_sources(2, 'score', 'attention') == 2
  assert history.num_sources(2, 'feature_maxpool', 'attention') == 1
  assert history.num_sources(0, 'score', 'attention') == 0
  assert history.num_sources(2, 'score', 'aggregate') == 1
  assert history.num_sources(0, 'score', 'aggregate') == 0
  with pytest.raises(ValueError):
    history.num_sources(2, 'score', 'both')
