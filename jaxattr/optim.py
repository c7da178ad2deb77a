"""The optimizer of each parameter group and the learning-rate schedules.

The model's parameters form two groups with an optimizer state each: the
backbone and the heads. The first (frozen) stage updates the heads only and
leaves the backbone's state untouched; the second continues the heads' state
instead of re-initialising it (docs/method.md, "Recipe").

AdamW's decoupled weight decay spares the parameters that set a scale or an
offset rather than a projection (biases, norm scales and offsets, ConvNeXt's layer
scales) and the learned embeddings (ViT's position embedding and class token, Swin's
relative-position tables), as the optimizers of Swin, ConvNeXt and timm do
(`decay_mask`). SGD and Adam keep the L2 decay of every parameter, as the paper's
recipes (MXNet's and PyTorch's `weight_decay`) do. ViT's backbone may train with
layer-wise lr decay (`optimizer.layer_decay`, `layer_scales`).
"""

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
import optax.contrib

BACKBONE = 'backbone'
# The names `make_optimizer` and `make_lr_fn` build (config_validation checks against them).
OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('plateau', 'step', 'cosine', 'constant')
# Leaf names AdamW does not decay, besides biases (`bias`, ViT's `in_proj_bias`).
NO_DECAY = frozenset(
  {'scale', 'layer_scale', 'pos_embedding', 'class_token', 'relative_position_bias_table'}
)
# The backbones layer-wise lr decay is defined for (its layers are ViT's encoder blocks).
LAYER_DECAY_FAMILIES = ('vit',)
_VIT_BLOCK = re.compile(r'encoder_layer_(\d+)')


def split_params(params: dict) -> tuple[dict, dict]:
  """(backbone, heads) parts of the model parameters."""
  heads = {k: v for k, v in params.items() if k != BACKBONE}
  return params[BACKBONE], heads


def _keys(path: tuple) -> list[str]:
  return [str(getattr(k, 'key', k)) for k in path]


def decay_mask(params: dict) -> dict:
  """True for the leaves AdamW's weight decay applies to (module docstring).

  Args:
    params: a parameter tree (a group, or the whole model).

  Returns:
    The same tree of bools.
  """

  def decays(path, _):
    name = _keys(path)[-1]
    return not (name == 'bias' or name.endswith('_bias') or name in NO_DECAY)

  return jax.tree_util.tree_map_with_path(decays, params)


# ViT's leaves of layer 0: before the first encoder block.
_VIT_EMBEDDING = (['conv_proj'], ['class_token'], ['encoder', 'pos_embedding'])


def layer_scales(backbone: dict, layer_decay: float) -> dict:
  """Layer-wise lr decay of a ViT backbone: the lr factor of each leaf.

  BEiT's rule (as MAE's and timm's): with L encoder blocks, the patch embedding, the
  class token and the position embedding are layer 0, block i is layer i + 1, and the
  final norm is layer L + 1; layer l trains at `layer_decay ** (L + 1 - l)` of the
  backbone's lr.

  Args:
    backbone: the ViT backbone's parameters.
    layer_decay: the decay per layer, in (0, 1).

  Returns:
    The same tree of floats.
  """

  def layer(path) -> int | None:
    keys = _keys(path)
    if any(keys[: len(e)] == e for e in _VIT_EMBEDDING):
      return 0
    blocks = [int(m.group(1)) for k in keys if (m := _VIT_BLOCK.fullmatch(k))]
    return blocks[0] + 1 if blocks else None

  layers = {tuple(_keys(p)): layer(p) for p, _ in jax.tree_util.tree_leaves_with_path(backbone)}
  top = max((n for n in layers.values() if n is not None), default=0) + 1

  def scale(path, _):
    n = layers[tuple(_keys(path))]
    return layer_decay ** (top - (top if n is None else n))

  return jax.tree_util.tree_map_with_path(scale, backbone)


def make_optimizer(opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer of one parameter group, with the lr injectable per step.

  SGD and Adam get L2 weight decay of every parameter through
  `optax.add_decayed_weights` (as MXNet, the authors' framework, and PyTorch's
  `weight_decay` do); 'adamw' is decoupled and spares the leaves `decay_mask` excludes.

  Args:
    opt: `config.optimizer`.

  Returns:
    The transformation; its `hyperparams['learning_rate']` is set every step.
  """

  def make(learning_rate):
    if opt.name == 'sgd':
      return optax.chain(
        optax.add_decayed_weights(opt.weight_decay),
        optax.sgd(learning_rate, momentum=opt.momentum or None, nesterov=opt.nesterov),
      )
    if opt.name == 'adam':
      return optax.chain(optax.add_decayed_weights(opt.weight_decay), optax.adam(learning_rate))
    if opt.name == 'adamw':
      return optax.adamw(learning_rate, weight_decay=opt.weight_decay, mask=decay_mask)
    raise ValueError(f'optimizer.name must be one of {OPTIMIZERS}, not {opt.name!r}.')

  return optax.inject_hyperparams(make)(learning_rate=opt.learning_rate)


def update(
  params: dict,
  grads: dict,
  opt_state: dict,
  opt: ml_collections.ConfigDict,
  lr: jax.Array,
  freeze_backbone: bool,
) -> tuple[dict, dict]:
  """One optimizer step of both parameter groups; pure.

  Args:
    params: the model parameters.
    grads: their gradients.
    opt_state: {'backbone': ..., 'heads': ...} optimizer states.
    opt: `config.optimizer`.
    lr: the heads' learning rate of this step (the backbone's is
      `lr * opt.backbone_lr_scale`, times `layer_scales` with `opt.layer_decay` in (0, 1)).
    freeze_backbone: stage 1: the backbone and its optimizer state stay as they are.

  Returns:
    (new parameters, new optimizer states).
  """
  if opt.grad_clip_norm > 0:
    # One global norm over all trainable parameters.
    if freeze_backbone:
      grads = {**grads, BACKBONE: jax.tree.map(jnp.zeros_like, grads[BACKBONE])}
    grads, _ = optax.clip_by_global_norm(opt.grad_clip_norm).update(grads, None)
  backbone_params, head_params = split_params(params)
  backbone_grads, head_grads = split_params(grads)
  opt_state = dict(opt_state)
  tx = make_optimizer(opt)

  def apply(part_params, part_grads, part_state, scale=1.0, leaf_scales=None):
    part_state.hyperparams['learning_rate'] = lr * scale
    updates, part_state = tx.update(part_grads, part_state, part_params)
    if leaf_scales is not None:  # Every optimizer's update is linear in its lr.
      updates = jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, leaf_scales)
    return optax.apply_updates(part_params, updates), part_state

  head_params, opt_state['heads'] = apply(head_params, head_grads, opt_state['heads'])
  if not freeze_backbone:
    # Pretrained backbones are often fine-tuned at a fraction of the heads' rate.
    leaf_scales = None
    if 0 < opt.layer_decay < 1:
      leaf_scales = layer_scales(backbone_params, opt.layer_decay)
    backbone_params, opt_state[BACKBONE] = apply(
      backbone_params, backbone_grads, opt_state[BACKBONE], opt.backbone_lr_scale, leaf_scales
    )
  return {BACKBONE: backbone_params, **head_params}, opt_state


def make_plateau(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """lr / factor after `patience` evaluations without gain, down to `min_lr`."""
  s = config.schedule
  return optax.contrib.reduce_on_plateau(
    factor=s.factor,
    patience=s.patience,
    rtol=0.0,
    atol=1e-4,  # A gain is an improvement of the metric by more than 1e-4.
    min_scale=s.min_lr / config.optimizer.learning_rate,
  )


def make_lr_fn(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Callable:
  """Base learning rate as a function of the step (the plateau scale multiplies it).

  Args:
    config: the run config (`schedule`, `optimizer.learning_rate`, `train.num_epochs`).
    steps_per_epoch: train steps per epoch (the schedule is given in epochs).

  Returns:
    `fn(step) -> lr`.
  """
  s, lr = config.schedule, config.optimizer.learning_rate
  warmup = int(s.warmup_epochs * steps_per_epoch)
  total = max(int(config.train.num_epochs * steps_per_epoch), warmup + 1)
  if s.name in ('plateau', 'constant'):
    base = optax.constant_schedule(lr)
  elif s.name == 'step':
    base = optax.piecewise_constant_schedule(
      lr, {int(e * steps_per_epoch): s.factor for e in s.step_epochs}
    )
  elif s.name == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, end_value=s.min_lr)
  else:
    raise ValueError(f'schedule.name must be one of {SCHEDULES}, not {s.name!r}.')
  if warmup:
    # A factor rising linearly from 0 to 1, so the base schedule keeps counting from
    # step 0 ('step' drops at its epochs, as the peers' warm-up schedulers do).
    return lambda step: base(step) * jnp.minimum(1.0, step / warmup)
  return base
