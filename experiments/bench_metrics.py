"""Times `jaxattr.metrics.compute_metrics` on a split of PA-100K-like size.

  python -m experiments.bench_metrics [--num_examples=60000] [--num_classes=54]

Prints the best wall time of a few repeats; the target is well under a second.
"""

import time

import numpy as np
from absl import app, flags

from jaxattr import metrics

_NUM_EXAMPLES = flags.DEFINE_integer('num_examples', 60_000, 'Samples N.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 54, 'Attributes C.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats (the best is reported).')


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  n, c = _NUM_EXAMPLES.value, _NUM_CLASSES.value
  labels = rng.choice(np.array([-1, 0, 1], np.int8), size=(n, c), p=[0.05, 0.7, 0.25])
  # Rounded scores make plenty of ties, the slow path of the tie handling.
  probs = np.round(rng.random((n, c), dtype=np.float32), 3)
  names = [f'attr{i}' for i in range(c)]
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    result = metrics.compute_metrics(probs, labels, names)
    times.append(time.perf_counter() - start)
  print(
    f'compute_metrics N={n} C={c}: best {min(times):.3f} s, '
    f'all {", ".join(f"{t:.3f}" for t in times)} s (map_voc={result["map_voc"]:.4f})'
  )


if __name__ == '__main__':
  app.run(main)
