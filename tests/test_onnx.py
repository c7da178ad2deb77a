"""Tests of the ONNX export (jaxattr.onnx_model, `export --format=onnx`, `predict`).

The reference is jaxattr's own inference function compiled by XLA; the ONNX model is
run by ONNX Runtime, a second implementation of every operation. One conversion per
backbone family at test scale (64x64 images, narrow and shallow variants of the
registered architectures); ResNet-50 at full size is the one slow test.
"""

import io
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from jaxattr import export, inference, onnx_model, predict, schema
from jaxattr.data import synthetic
from jaxattr.models import model as model_lib
from tests.conftest import REPO, run_tool, tool_env
from tests.test_tools import assert_json_records_match, direct, images, run  # noqa: F401

# family -> (registered architecture, width, depth) at 64x64: the test configs' sizes
# (configs/test.py's ResNet-18; tests/test_backbones_train.py's ViT, Swin, ConvNeXt, CLIP).
FAMILIES = {
  'resnet': ('resnet18', 1 / 16, 1.0),
  'densenet': ('densenet121', 1 / 16, 1 / 4),
  'vit': ('vit_b_16', 1 / 16, 1 / 4),
  'swin': ('swin_t', 1 / 8, 1 / 4),
  'convnext': ('convnext_tiny', 1 / 16, 1 / 4),
  'clip': ('clip_vit_b_16', 1 / 16, 1 / 4),
}
HEADER = {'attribute_names': ['a', 'b', 'c'], 'image_size': 64, 'thresholds': [0.5] * 3}


def random_variables(model, size: int, seed: int = 0):
  """Initialised variables with batch statistics moved away from (0, 1), so that the
  normalisation's running statistics take part in the comparison."""
  variables = jax.jit(
    lambda: model.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)), train=False)
  )()
  if 'batch_stats' not in variables:
    return variables
  rng = np.random.default_rng(seed)

  def move(path, x):
    x = np.asarray(x)
    if path[-1].key == 'mean':
      return x + rng.uniform(-0.1, 0.1, x.shape).astype(np.float32)
    return x * rng.uniform(0.5, 1.5, x.shape).astype(np.float32)  # 'var' stays positive.

  return {**variables, 'batch_stats': jax.tree.map_with_path(move, variables['batch_stats'])}


def convert_and_compare(backbone, width, depth, size, levels=(3, 4), num_images=3, masks_atol=1e-5):
  config = schema.load_recipe('test').get_config()
  config.model.backbone, config.model.width, config.model.depth = backbone, width, depth
  config.model.attention.levels = levels
  config.data.image_size = size
  model = model_lib.create_model(config.model, 3)
  variables = random_variables(model, size)
  infer = inference.make_infer_fn(model, config.data)
  proto = onnx_model.convert(
    infer, variables, image_size=size, levels=levels, header={**HEADER, 'image_size': size}
  )
  session = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
  names = onnx_model.output_names(levels)
  assert [o.name for o in session.get_outputs()] == names
  (batch_dim, *rest) = proto.graph.input[0].type.tensor_type.shape.dim
  assert batch_dim.dim_param and [d.dim_value for d in rest] == [size, size, 3]
  rng = np.random.default_rng(1)
  batch_images = rng.integers(0, 256, (num_images, size, size, 3), np.uint8)
  expected = jax.jit(infer)(variables, batch_images)
  expected = [expected['probs'], *expected['masks'], *expected['confidences']]
  for batch in (num_images, 1):  # The dynamic batch dimension.
    got = session.run(names, {onnx_model.INPUT_NAME: batch_images[:batch]})
    for name, g, e in zip(names, got, expected, strict=True):
      atol = 1e-5 if name == 'probs' else masks_atol
      np.testing.assert_allclose(g, np.asarray(e)[:batch], atol=atol, err_msg=name)
  # The probabilities are not all ~0.5: the comparison has something to compare.
  assert np.ptp(np.asarray(expected[0])) > 1e-3


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_onnx_runtime_equals_jaxattr_per_family(family):
  convert_and_compare(*FAMILIES[family], size=64)


@pytest.mark.slow
def test_onnx_runtime_equals_jaxattr_resnet50_full_size():
  # Random weights without trained normalisation statistics give large activations
  # in the full-size heads, where float32 rounding in the two implementations'
  # different orders of operations reaches ~1e-4 in masks and confidences. The
  # probabilities, what the tool reports, stay within 1e-5.
  convert_and_compare('resnet50', 1.0, 1.0, size=224, num_images=2, masks_atol=1e-3)


def test_max_pool_rewrite_is_a_2d_pool():
  # jax2onnx's 4-D MaxPool over [1, 1, N, H, W, C] (refused by ONNX Runtime) becomes
  # a 2-D pool between transposes; numpy computes the expected maxima.
  def pool(x):
    return jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )

  proto = onnx_model.convert(
    lambda _, x: {'probs': pool(x.astype(jnp.float32)), 'masks': (), 'confidences': ()},
    {},
    image_size=5,
    levels=(),
    header=HEADER,
  )
  ops = [node.op_type for node in proto.graph.node]
  assert 'Unsqueeze' not in ops and ops.count('MaxPool') == 1
  pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), np.uint8)
  session = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
  (got,) = session.run(['probs'], {'images': pixels})
  padded = np.pad(pixels.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1)
  expected = np.zeros((2, 3, 3, 3), np.float32)
  for i in range(3):
    for j in range(3):
      expected[:, i, j] = padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2))
  np.testing.assert_array_equal(got, expected)


def test_numpy_resize_equals_the_pipeline():
  from jaxattr.data import input_pipeline

  config = schema.load_recipe('test').get_config().data
  rng = np.random.default_rng(0)
  for shape in ((150, 90, 3), (40, 30, 3), (64, 200, 3), (64, 64, 3)):
    image = rng.integers(0, 256, shape, np.uint8)
    expected = input_pipeline.eval_preprocess(image, config).numpy()
    got = predict.resize(image, config.image_size)
    assert got.shape == expected.shape and got.dtype == np.uint8
    # The float results agree to ~1e-4; integer pixels times rational weights often sit
    # on .5, where that rounding may move a value by one level.
    diff = np.abs(got.astype(int) - expected)
    assert diff.max() <= 1 and np.mean(diff > 0) < 1e-2, shape
  image = rng.integers(0, 256, (64, 64, 3), np.uint8)
  np.testing.assert_array_equal(predict.resize(image, 64), image)


def test_export_onnx_then_predict_without_jax(run, direct, images, tmp_path):  # noqa: F811
  workdir, _ = run
  model_file = tmp_path / 'model.onnx'
  proc = run_tool(
    'jaxattr.export', f'--workdir={workdir}', '--format=onnx', f'--output={model_file}'
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'ONNX' in proc.stdout
  model = onnx.load(model_file)
  header = json.loads({p.key: p.value for p in model.metadata_props}['jaxattr'])
  assert header['attribute_names'] == list(synthetic.ATTRIBUTES)
  assert header['image_size'] == 64 and header['batch_size'] is None
  assert len(header['thresholds']) == 14 and header['levels'] == [3, 4]

  # The CLI in a fresh interpreter, which must import neither JAX nor TensorFlow.
  code = (
    'import runpy, sys\n'
    f'sys.argv = ["predict", "--exported={model_file}", "--json", "--batch_size=2",'
    f' *{[str(p) for p in images["small"]]!r}]\n'
    'try:\n'
    '  runpy.run_module("jaxattr.predict", run_name="__main__")\n'
    'except SystemExit as e:\n'
    '  code = e.code\n'
    'heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "tensorflow"))\n'
    'print("exit", code, "imported", heavy, file=sys.stderr)\n'
  )
  proc = subprocess.run(
    [sys.executable, '-c', code],
    cwd=REPO,
    capture_output=True,
    text=True,
    env=tool_env(),
    timeout=120,
  )
  assert 'exit 0 imported []' in proc.stderr, proc.stderr[-3000:]
  expected, expected_masks = direct(images['arrays'])
  assert_json_records_match(proc.stdout, expected, np.array(header['thresholds']))

  # The library form: masks too, any number of images, a box and a figure.
  predictor = export.load(model_file, batch_size=2)
  assert isinstance(predictor, onnx_model.OnnxPredictor)
  out = predictor(images['arrays'])
  np.testing.assert_allclose(out['probs'], expected, atol=1e-5)
  for got_mask, want in zip(out['masks'], expected_masks, strict=True):
    np.testing.assert_allclose(got_mask, want, atol=1e-5)
  figure = tmp_path / 'figure.png'
  out = io.StringIO()
  failures = predict.predict(
    predictor, [str(images['canvas'][0])], box=(10, 5, 64, 64), attention=str(figure), out=out
  )
  assert failures == 0 and out.getvalue().startswith(str(images['canvas'][0]))
  with Image.open(figure) as png:
    assert png.size[0] > 0


def test_bad_onnx_files(tmp_path):
  garbage = tmp_path / 'garbage.onnx'
  garbage.write_bytes(b'not a model')
  with pytest.raises(onnx_model.OnnxModelError, match=str(garbage)):
    onnx_model.OnnxPredictor(garbage)
  with pytest.raises(onnx_model.OnnxModelError, match='no such file'):
    onnx_model.OnnxPredictor(tmp_path / 'missing.onnx')
  foreign = tmp_path / 'foreign.onnx'
  x, y = (onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in 'xy')
  graph = onnx.helper.make_graph([onnx.helper.make_node('Identity', ['x'], ['y'])], 'g', [x], [y])
  onnx.save(onnx.helper.make_model(graph), foreign)
  with pytest.raises(onnx_model.OnnxModelError, match=f'{foreign}: an ONNX model without'):
    onnx_model.OnnxPredictor(foreign)
