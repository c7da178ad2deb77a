"""Tests of jaxattr.losses against optax, numpy transcriptions and hand values."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxattr import losses


def _loss_config(primary='weighted_focal', attention='variance_weighted', gamma=0.5):
  return ml_collections.ConfigDict(
    {'primary': primary, 'attention': attention, 'class_weights': 'vespa', 'gamma': gamma}
  )


def _np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _np_weighted_focal(x, y, w_pos, w_neg, gamma):
  """Paper Eq. 4, transcribed literally in float64 (moderate logits only)."""
  p = _np_sigmoid(x)
  return -(w_pos * (1 - p) ** gamma * y * np.log(p) + w_neg * p**gamma * (1 - y) * np.log(1 - p))


def _np_bce(x, y):
  p = _np_sigmoid(x)
  return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def _random_batch(seed, b=6, c=5, levels=2, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(b, c)) * scale
  attention = rng.normal(size=(levels, b, c)) * scale
  labels = rng.choice(np.array([-1, 0, 1], np.int8), size=(b, c))
  std = rng.random((levels, b, c))
  return logits, attention, labels, std


def test_targets_and_mask():
  labels = jnp.array([[1, 0, -1]], jnp.int8)
  targets, mask = losses.targets_and_mask(labels, 'negative')
  np.testing.assert_array_equal(targets, [[1.0, 0.0, 0.0]])
  np.testing.assert_array_equal(mask, [[1.0, 1.0, 1.0]])
  targets, mask = losses.targets_and_mask(labels, 'ignore')
  np.testing.assert_array_equal(targets, [[1.0, 0.0, 0.0]])
  np.testing.assert_array_equal(mask, [[1.0, 1.0, 0.0]])
  assert targets.dtype == jnp.float32 and mask.dtype == jnp.float32
  with pytest.raises(ValueError):
    losses.targets_and_mask(labels, 'zero')


def test_positive_ratio_and_class_weights_by_hand():
  labels = np.array(
    [
      [1, 0, -1],
      [1, 1, -1],
      [0, -1, -1],
      [1, 0, 1],
    ],
    np.int8,
  )
  # Column 0: 3 positives of 4 labelled; column 1: 1 of 3; column 2: 1 of 1.
  ratio = losses.positive_ratio(labels)
  np.testing.assert_allclose(ratio, [0.75, 1 / 3, 1.0])

  w_pos, w_neg = losses.class_weights(ratio, 'vespa')
  np.testing.assert_allclose(w_pos, [np.e**0.25, np.e ** (2 / 3), 1.0], rtol=1e-6)
  np.testing.assert_allclose(w_neg, [np.e**0.75, np.e ** (1 / 3), np.e], rtol=1e-6)
  w_pos, w_neg = losses.class_weights(ratio, 'paper_literal')
  np.testing.assert_allclose(w_pos, [np.e**-0.75, np.e ** (-1 / 3), np.e**-1], rtol=1e-6)
  np.testing.assert_allclose(w_neg, w_pos)
  w_pos, w_neg = losses.class_weights(ratio, 'none')
  np.testing.assert_array_equal(w_pos, np.ones(3))
  np.testing.assert_array_equal(w_neg, np.ones(3))
  with pytest.raises(ValueError):
    losses.class_weights(ratio, 'inverse')


def test_bce_matches_optax():
  logits, _, labels, _ = _random_batch(0, scale=10.0)
  targets = (labels == 1).astype(np.float32)
  expected = optax.sigmoid_binary_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
  np.testing.assert_allclose(losses.bce(logits, targets), expected, rtol=1e-5, atol=1e-6)


def test_weighted_focal_matches_numpy_transcription():
  logits, _, labels, _ = _random_batch(1, b=8, c=4)
  targets = (labels == 1).astype(np.float64)
  rng = np.random.default_rng(2)
  w_pos, w_neg = rng.random(4) + 0.5, rng.random(4) + 0.5
  for gamma in (0.0, 0.5, 2.0):
    got = losses.weighted_focal(jnp.asarray(logits, jnp.float32), targets, w_pos, w_neg, gamma)
    expected = _np_weighted_focal(logits, targets, w_pos, w_neg, gamma)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_weighted_focal_gamma_zero_is_weighted_bce_and_bce():
  logits, _, labels, _ = _random_batch(3, scale=8.0)
  targets = (labels == 1).astype(np.float32)
  ones = np.ones(logits.shape[1], np.float32)
  np.testing.assert_array_equal(
    losses.weighted_focal(logits, targets, ones, ones, 0.0), losses.bce(logits, targets)
  )
  w_pos, w_neg = np.full_like(ones, 2.0), np.full_like(ones, 3.0)
  bce = _np_bce(logits, targets)
  expected = np.where(targets == 1, 2.0, 3.0) * bce
  np.testing.assert_allclose(
    losses.weighted_focal(logits, targets, w_pos, w_neg, 0.0), expected, rtol=1e-5
  )


def test_variance_weighted_bce():
  logits, _, labels, std = _random_batch(4, levels=1)
  targets = (labels == 1).astype(np.float32)
  np.testing.assert_array_equal(
    losses.variance_weighted_bce(logits, targets, np.zeros_like(std[0])),
    losses.bce(logits, targets),
  )
  np.testing.assert_allclose(
    losses.variance_weighted_bce(logits, targets, std[0]),
    (1 + std[0]) * _np_bce(logits, targets),
    rtol=1e-5,
  )
  # std is a weight: no gradient reaches it.
  grad = jax.grad(lambda s: losses.variance_weighted_bce(logits, targets, s).sum())(
    jnp.asarray(std[0])
  )
  np.testing.assert_array_equal(grad, np.zeros_like(std[0]))


def test_reduce_by_hand():
  per_element = jnp.array([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]])
  mask = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
  # Per sample: 5 and 56; mean 30.5.
  assert float(losses.reduce(per_element, mask)) == pytest.approx(30.5)
  assert float(losses.reduce(per_element, mask, 'sum')) == pytest.approx(30.5)
  # Mean over the 3 attributes (masked ones still count in the divisor): 5/3, 56/3.
  assert float(losses.reduce(per_element, mask, 'mean')) == pytest.approx((5 / 3 + 56 / 3) / 2)
  with pytest.raises(ValueError, match='attribute_reduction'):
    losses.reduce(per_element, mask, 'max')


@pytest.mark.parametrize('reduction', losses.ATTRIBUTE_REDUCTIONS)
def test_total_loss_attribute_reduction_by_hand(reduction):
  """Plain BCE on both heads: the loss by hand, summed or averaged over attributes."""
  logits = np.array([[2.0, -1.0, 0.5, 0.0], [-3.0, 1.5, 0.25, -0.5]], np.float32)
  attention = np.stack([-logits, 0.5 * logits])
  labels = np.array([[1, 0, 1, -1], [0, 1, -1, 0]], np.int8)
  config = _loss_config(primary='bce', attention='bce')
  config.attribute_reduction = reduction
  w = np.ones(4, np.float32)
  loss, terms = losses.total_loss(logits, attention, labels, None, w, w, config, unknown='ignore')

  def bce_by_hand(x):
    p = _np_sigmoid(x.astype(np.float64))
    y = labels == 1
    element = np.where(y, -np.log(p), -np.log(1 - p)) * (labels >= 0)
    per_sample = element.sum(axis=1) / (4 if reduction == 'mean' else 1)
    return per_sample.mean()

  expected = [bce_by_hand(logits), bce_by_hand(attention[0]), bce_by_hand(attention[1])]
  got = [float(terms['primary']), float(terms['attention_0']), float(terms['attention_1'])]
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert float(loss) == pytest.approx(sum(expected), rel=1e-5)


def _args(seed=5, levels=2):
  logits, attention, labels, std = _random_batch(seed, levels=levels)
  w_pos, w_neg = losses.class_weights(losses.positive_ratio(labels), 'vespa')
  return logits, attention, labels, std, w_pos, w_neg


def test_total_loss_matches_numpy_eq7():
  logits, attention, labels, std, w_pos, w_neg = _args()
  loss, terms = losses.total_loss(
    logits, attention, labels, std, w_pos, w_neg, _loss_config(), unknown='ignore'
  )
  y = (labels == 1).astype(np.float64)
  m = (labels >= 0).astype(np.float64)
  w_pos, w_neg = np.asarray(w_pos, np.float64), np.asarray(w_neg, np.float64)
  primary = np.mean(np.sum(m * _np_weighted_focal(logits, y, w_pos, w_neg, 0.5), axis=1))
  att = [np.mean(np.sum(m * (1 + std[i]) * _np_bce(attention[i], y), axis=1)) for i in range(2)]
  assert set(terms) == {'primary', 'attention_0', 'attention_1'}
  assert float(terms['primary']) == pytest.approx(primary, rel=1e-5)
  assert float(terms['attention_0']) == pytest.approx(att[0], rel=1e-5)
  assert float(terms['attention_1']) == pytest.approx(att[1], rel=1e-5)
  assert float(loss) == pytest.approx(primary + sum(att), rel=1e-5)
  assert float(loss) == pytest.approx(sum(float(v) for v in terms.values()), rel=1e-6)


def test_total_loss_switches():
  logits, attention, labels, std, w_pos, w_neg = _args(6)
  y = (labels == 1).astype(np.float64)
  wp, wn = np.asarray(w_pos, np.float64), np.asarray(w_neg, np.float64)

  def run(**kwargs):
    return losses.total_loss(logits, attention, labels, std, w_pos, w_neg, _loss_config(**kwargs))

  def mean_sum(x):
    return np.mean(np.sum(x, axis=1))

  # unknown='negative' (default): every element counts.
  _, terms = run(primary='bce', attention='bce')
  assert float(terms['primary']) == pytest.approx(mean_sum(_np_bce(logits, y)), rel=1e-5)
  assert float(terms['attention_1']) == pytest.approx(mean_sum(_np_bce(attention[1], y)), rel=1e-5)
  _, terms = run(primary='weighted_bce')
  expected = mean_sum(_np_weighted_focal(logits, y, wp, wn, 0.0))
  assert float(terms['primary']) == pytest.approx(expected, rel=1e-5)
  _, terms = run(primary='weighted_focal', gamma=2.0)
  expected = mean_sum(_np_weighted_focal(logits, y, wp, wn, 2.0))
  assert float(terms['primary']) == pytest.approx(expected, rel=1e-5)
  _, terms = run(attention='variance_weighted')
  expected = mean_sum((1 + std[0]) * _np_bce(attention[0], y))
  assert float(terms['attention_0']) == pytest.approx(expected, rel=1e-5)
  with pytest.raises(ValueError):
    run(primary='focal')
  with pytest.raises(ValueError):
    run(attention='variance')


def test_total_loss_std_broadcast_from_one_source():
  logits, attention, labels, std, w_pos, w_neg = _args(7)
  config = _loss_config()
  one = std[:1]
  _, broadcast = losses.total_loss(logits, attention, labels, one, w_pos, w_neg, config)
  _, explicit = losses.total_loss(
    logits, attention, labels, np.repeat(one, 2, axis=0), w_pos, w_neg, config
  )
  for name in explicit:
    np.testing.assert_allclose(broadcast[name], explicit[name], rtol=1e-6)
  with pytest.raises(ValueError):
    losses.total_loss(logits, attention, labels, np.concatenate([std, one]), w_pos, w_neg, config)


def test_total_loss_primary_only():
  logits, _, labels, _, w_pos, w_neg = _args(8)
  config = _loss_config()
  for attention in (np.zeros((0,) + logits.shape), None):
    loss, terms = losses.total_loss(logits, attention, labels, None, w_pos, w_neg, config)
    assert list(terms) == ['primary']
    assert float(loss) == pytest.approx(float(terms['primary']))


def test_masked_labels_contribute_nothing():
  logits, attention, labels, std, w_pos, w_neg = _args(9)
  labels = labels.copy()
  labels[0, 0] = -1
  config = _loss_config()

  def loss_of(logits, attention, labels):
    return float(
      losses.total_loss(logits, attention, labels, std, w_pos, w_neg, config, unknown='ignore')[0]
    )

  base = loss_of(logits, attention, labels)
  changed_logits, changed_attention = logits.copy(), attention.copy()
  changed_logits[0, 0] += 5.0
  changed_attention[:, 0, 0] -= 7.0
  assert loss_of(changed_logits, changed_attention, labels) == pytest.approx(base, rel=1e-6)
  # The same change matters once the label is known.
  known = labels.copy()
  known[0, 0] = 1
  assert loss_of(changed_logits, changed_attention, known) != pytest.approx(
    loss_of(logits, attention, known), rel=1e-3
  )


@pytest.mark.parametrize('primary', losses.PRIMARY_LOSSES)
def test_gradients_finite_at_saturated_logits(primary):
  labels = jnp.array([[1, 0, 1, 0], [0, 1, -1, 1]], jnp.int8)
  logits = jnp.array([[100.0, -100.0, -100.0, 100.0], [-100.0, 100.0, 100.0, -100.0]])
  attention = jnp.stack([logits, -logits])
  std = jnp.full((2, 2, 4), 0.3)
  w_pos, w_neg = losses.class_weights(jnp.full((4,), 0.2), 'vespa')
  config = _loss_config(primary=primary)

  def f(logits, attention):
    return losses.total_loss(logits, attention, labels, std, w_pos, w_neg, config)[0]

  loss, (g_logits, g_attention) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(logits, attention)
  assert np.isfinite(float(loss))
  assert np.all(np.isfinite(g_logits)) and np.all(np.isfinite(g_attention))
  # Wrong saturated predictions still pull: the gradient there is not zero.
  assert float(jnp.abs(g_logits[0, 2])) > 0.0
