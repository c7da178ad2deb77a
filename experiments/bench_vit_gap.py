"""Where ViT-B/16's CPU inference time goes at batch 32: jaxattr jit against PyTorch eager.

  python -m experiments.bench_vit_gap

Two ratios from one run: the backbone alone (no attention heads; PyTorch's random
weights converted to Flax), and one matmul of the MLP's shape ([32 x 197, 768] @
[768, 3072]). If the backbone's ratio matches the whole model's
(`experiments/bench_infer.py`) and the matmul's is near 1, the gap is in the transformer
blocks' other operations, not in the heads or the matrix products.
"""

import os
import time
from collections.abc import Callable

import numpy as np


def median_seconds(fn: Callable[[], object], calls: int) -> float:
  """The median wall time of `calls` calls after one untimed call."""
  fn()
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main() -> None:
  import jax
  import torch

  from jaxattr import convert
  from jaxattr.models import registry
  from tests import torch_reference

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  x = np.random.default_rng(0).standard_normal((32, 224, 224, 3)).astype(np.float32)
  ref = torch_reference.create_backbone('vit_b_16', num_classes=None).eval()
  backbone = registry.create_backbone('vit_b_16')
  shapes = jax.eval_shape(lambda: backbone.init(jax.random.key(0), x[:1], train=False))
  state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  variables = jax.device_put(convert.torch_to_flax(state, shapes))
  k2 = jax.jit(lambda v, images: backbone.apply(v, images, train=False)['k2'])
  x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

  def run_torch():
    with torch.inference_mode():
      return ref(x_torch)['k2'].numpy()

  ours = median_seconds(lambda: np.asarray(k2(variables, x)), 3)
  theirs = median_seconds(run_torch, 3)
  print(f'backbone only, batch 32: jaxattr jit {ours * 1e3:.0f} ms, PyTorch {theirs * 1e3:.0f} ms,')
  print(f'  ratio {ours / theirs:.2f}')

  rng = np.random.default_rng(1)
  m = rng.standard_normal((32 * 197, 768)).astype(np.float32)
  w = rng.standard_normal((768, 3072)).astype(np.float32)
  matmul = jax.jit(lambda a, b: a @ b)
  m_jax, w_jax = jax.device_put(m), jax.device_put(w)
  m_torch, w_torch = torch.from_numpy(m), torch.from_numpy(w)
  ours = median_seconds(lambda: np.asarray(matmul(m_jax, w_jax)), 5)
  theirs = median_seconds(lambda: (m_torch @ w_torch).numpy(), 5)
  print(f'one MLP matmul [6304, 768] @ [768, 3072]: XLA {ours * 1e3:.1f} ms,')
  print(f'  PyTorch {theirs * 1e3:.1f} ms, ratio {ours / theirs:.2f}')


if __name__ == '__main__':
  main()
