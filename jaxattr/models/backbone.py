"""What every backbone family shares: its `create_*` function, its Linear layers, its `pooled`.

A family module (resnet.py, densenet.py, vit.py, swin.py, convnext.py) declares its
Flax module and one function, `fields(name, width, depth)`, that says which
architecture fields torchvision's architecture `name` gives the module at a channel
multiplier `width` and a block multiplier `depth`. `creator` turns the two into the
family's `create_*`, the constructor of the backbone contract in `registry.py`; the
dtypes, the ImageNet head and the Flax name are set the same way for every family.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any
Fields = Callable[[str, float, float], dict[str, Any]]


def creator(module: type[nn.Module], fields: Fields) -> Callable[..., nn.Module]:
  """The `create_*` function of a backbone family.

  Args:
    module: the family's Flax module class; it has the fields `num_classes`,
      `dtype` and `param_dtype` besides those `fields` sets.
    fields: `fields(name, width, depth)` -> the module's architecture fields for
      torchvision's architecture `name` (what `width` and `depth` scale is the
      family's: channels, heads' widths, blocks per stage).

  Returns:
    `create(name, width=1.0, dtype=float32, param_dtype=float32, num_classes=None,
    module_name=None, depth=1.0, **options)` -> the unbound module, where
    `num_classes` (if set) adds torchvision's ImageNet head, `module_name` is the
    Flax name (None = automatic) and `options` are further fields of the module
    (e.g. Swin's and ConvNeXt's `stochastic_depth_prob`).
  """

  def create(
    name: str,
    width: float = 1.0,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    num_classes: int | None = None,
    module_name: str | None = None,
    depth: float = 1.0,
    **options: Any,
  ) -> nn.Module:
    return module(
      **fields(name, width, depth),
      **options,
      num_classes=num_classes,
      dtype=dtype,
      param_dtype=param_dtype,
      name=module_name,
    )

  create.__name__ = create.__qualname__ = f'create_{module.__name__.lower()}'
  create.__doc__ = (
    f"A `{module.__name__}` by torchvision name; the arguments are `backbone.creator`'s."
  )
  return create


def linear(
  features: int,
  dtype: Dtype,
  param_dtype: Dtype,
  name: str,
  kernel_init: Callable[..., Any],
  bias_init: Callable[..., Any] = nn.initializers.zeros,
  use_bias: bool = True,
) -> nn.Dense:
  """A torch `nn.Linear` named `name`, with the family's initialisers."""
  dtypes = {'dtype': dtype, 'param_dtype': param_dtype}
  inits = {'kernel_init': kernel_init, 'bias_init': bias_init}
  return nn.Dense(features, use_bias=use_bias, name=name, **dtypes, **inits)


def float32_avg_pool(k2: Array) -> Array:
  """The backbone contract's `'pooled'` (`registry.py`): k2 [B, H, W, C] averaged over H, W.

  The mean is taken in float32, or in k2's own dtype if wider, so that a bfloat16
  backbone still gives the attribute model's primary classifier a float32 input.
  """
  return jnp.mean(k2.astype(jnp.promote_types(k2.dtype, jnp.float32)), axis=(1, 2))


def remat_block(block: type[nn.Module], remat: bool, has_train: bool = True) -> type[nn.Module]:
  """`block`, or `nn.remat(block)` when `remat`: the backbones' `model.remat` switch.

  A rematerialised block keeps only its input for the backward pass and recomputes its
  activations there: the train step's peak memory falls to about one block's
  activations plus the blocks' inputs, for about one more forward pass of compute. The
  parameter tree and the maths are unchanged.

  Args:
    block: a Flax module class called as `block(...)(x, train)` or `(x)`.
    remat: whether to rematerialise.
    has_train: the call takes the Python bool `train` after `x` (static under remat).

  Returns:
    The class to instantiate in place of `block`.
  """
  if not remat:
    return block
  # nn.remat counts the module itself as argument 0: `train` is argument 2.
  return nn.remat(block, static_argnums=(2,) if has_train else ())
