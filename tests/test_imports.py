"""TensorFlow stays in the input pipeline: the model, the losses and the steps run without it.

An accelerator machine with JAX but no TensorFlow must be able to import these
modules, build a train state and run the train and eval steps. Each check runs in
a fresh interpreter where importing TensorFlow fails.
"""

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # Each check launches an interpreter.

# `import tensorflow` raises ImportError from here on (None in sys.modules).
_NO_TF = textwrap.dedent(
  """
  import sys
  for name in ('tensorflow', 'tensorflow_datasets'):
    sys.modules[name] = None
  """
)


def _assert_runs(code: str) -> None:
  """Runs `code` where TensorFlow cannot be imported; then no TensorFlow module is loaded."""
  check = """
    loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow' and sys.modules[m])
    assert not loaded, loaded
    print('ok')
    """
  proc = subprocess.run(
    [sys.executable, '-c', _NO_TF + textwrap.dedent(code) + textwrap.dedent(check)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr[-3000:]


def test_modules_import_without_tensorflow():
  _assert_runs(
    """
    import jaxattr.evaluators, jaxattr.history, jaxattr.inference, jaxattr.losses
    import jaxattr.metrics, jaxattr.optim, jaxattr.run.files, jaxattr.sharding, jaxattr.train
    import jaxattr.run.layout, jaxattr.run.lock, jaxattr.run.logs, jaxattr.run.resume
    import jaxattr.schema
    import jaxattr.models.model
    import experiments.bench_train
    """
  )


def test_train_and_eval_steps_run_without_tensorflow():
  """One train step and one eval step of a tiny model, as experiments/bench_train.py does."""
  _assert_runs(
    """
    import functools
    import jax, jax.numpy as jnp, ml_collections, numpy as np
    from jaxattr import inference, optim, sharding, train
    from jaxattr.evaluators import common as evaluation
    from jaxattr.models import model as model_lib

    config = ml_collections.ConfigDict({
      'seed': 0,
      'data': {'image_size': 32, 'mean': (0.5, 0.5, 0.5), 'std': (0.25, 0.25, 0.25),
               'unknown_label': 'negative'},
      'model': {'backbone': 'resnet18', 'width': 0.0625, 'dtype': 'float32',
                'param_dtype': 'float32', 'pretrained': '', 'drop_path_rate': 0.0,
                'attention': {'levels': (3, 4), 'aggregation': 'score',
                              'confidence_weighting': True, 'mask_channels': 256,
                              'classifier_channels': (256, 512, 512)}},
      'loss': {'primary': 'weighted_focal', 'attention': 'variance_weighted',
               'class_weights': 'vespa', 'gamma': 0.5, 'attribute_reduction': 'mean'},
      'history': {'length': 3, 'start_epoch': 0, 'source': 'attention'},
      'optimizer': {'name': 'sgd', 'learning_rate': 0.01, 'momentum': 0.9, 'nesterov': False,
                    'weight_decay': 5e-4, 'grad_clip_norm': 0.0, 'backbone_lr_scale': 1.0,
                    'layer_decay': 0.0},
      'schedule': {'name': 'constant', 'factor': 0.1, 'patience': 1, 'min_lr': 1e-5,
                   'step_epochs': (), 'warmup_epochs': 0.0},
      'train': {'num_epochs': 1, 'ema_decay': 0.0, 'grad_accum_steps': 1},
    })
    mesh = sharding.create_mesh(jax.devices()[:1])
    model = model_lib.create_model(config.model, 3)
    state = train.create_train_state(config, model, 8, 3, sharding.replicated(mesh))
    rng = np.random.default_rng(0)
    batch = {
      'image': rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
      'labels': rng.integers(0, 2, (4, 3)).astype(np.int8),
      'index': np.arange(4, dtype=np.int32),
    }
    step = jax.jit(functools.partial(
      train.train_step, model=model, config=config, w_pos=jnp.ones(3), w_neg=jnp.ones(3),
      lr_fn=optim.make_lr_fn(config, 2), steps_per_epoch=2,
      num_sources=train.num_history_sources(config), freeze_backbone=False))
    state, m = step(state, batch)
    assert np.isfinite(float(m['loss'])) and int(state.step) == 1
    out = jax.jit(functools.partial(
      evaluation.eval_step, infer_fn=inference.make_infer_fn(model, config.data), levels=(3, 4)
    ))(state.variables(), {**batch, 'mask': np.ones(4, bool), 'cue_boxes': np.zeros((4, 3, 4))})
    assert out['probs'].shape == (4, 3) and out['cells_mask_3'].shape == (4, 3)
    """
  )


def test_evaluate_imports_no_training_code():
  """`jaxattr.evaluate` re-uses the evaluation module; the train state and loop stay out."""
  _assert_runs(
    """
    import jaxattr.evaluate, jaxattr.evaluators, jaxattr.metrics, jaxattr.run.files
    import jaxattr.sharding
    import jaxattr.export, jaxattr.predict
    training = [m for m in ('jaxattr.train', 'jaxattr.optim', 'jaxattr.losses') if m in sys.modules]
    assert not training, training
    """
  )
