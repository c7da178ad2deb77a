"""Tests of the tools for trained models: evaluate, predict, export, visualize, inference.

The session's tiny run of configs/test.py (the real `python -m jaxattr.main`,
conftest.py's `trained_run`) is shared by every test. Expected probabilities come
from a second path: the training code's own `Checkpointer.restore` of the whole
train state, images normalised by hand in numpy, `model.apply` and a sigmoid.
Expected metrics come from the run's own results.json and from sklearn.
"""

import io
import json
import re
import shutil
import types

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score, precision_score, recall_score

from jaxattr import checkpoints, evaluate, export, inference, predict, train, visualize
from jaxattr.data import input_pipeline, synthetic
from jaxattr.evaluators import thresholds as thresholds_lib
from jaxattr.models import model as model_lib
from jaxattr.run import files, restore
from tests.conftest import make_config, run_tool

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def error_lines(stderr: str) -> list[str]:
  """The tools' own error lines (TensorFlow/XLA may log other lines on stderr)."""
  return [line for line in stderr.splitlines() if line.startswith('error:')]


@pytest.fixture(scope='module')
def run(trained_run, data_dir):
  """The session's trained run of configs/test.py (conftest.py): (workdir, config)."""
  return trained_run[0], make_config(data_dir)


@pytest.fixture(scope='module')
def direct(run):
  """The reference: restore + model.apply + sigmoid, on hand-normalised images."""
  workdir, config = run
  builder = input_pipeline.get_builder(config.data)
  num_train = builder.info.splits['train'].num_examples
  model = model_lib.create_model(config.model, synthetic.NUM_CLASSES)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.eval_shape(
    lambda: train.create_train_state(config, model, num_train, synthetic.NUM_CLASSES, sharding)
  )
  ckpt = checkpoints.Checkpointer(workdir)
  state = ckpt.restore(abstract, which='best')
  ckpt.close()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}

  @jax.jit
  def apply(images):
    out = model.apply(variables, images, train=False)
    return jax.nn.sigmoid(out['logits']), out['masks']

  def call(images_uint8):
    images = (np.asarray(images_uint8, np.float32) / 255.0 - MEAN) / STD
    probs, masks = apply(images)
    return np.asarray(probs), [np.asarray(m) for m in masks]

  call.model, call.variables = model, variables
  return call


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  """Three 64x64 PNGs (the model's size: the eval resize is the identity), a larger
  canvas holding each at (x=10, y=5), a missing path and a text file named .jpg."""
  root = tmp_path_factory.mktemp('images')
  small, canvases, arrays = [], [], []
  for i in range(3):
    drawn = synthetic.generate('test', i, encode=False)['image']
    array = np.asarray(Image.fromarray(drawn).resize((64, 64), Image.Resampling.BILINEAR))
    arrays.append(array)
    path = root / f'small{i}.png'
    Image.fromarray(array).save(path)
    small.append(path)
    canvas = np.full((90, 100, 3), 127, np.uint8)
    canvas[5:69, 10:74] = array
    path = root / f'canvas{i}.png'
    Image.fromarray(canvas).save(path)
    canvases.append(path)
  not_image = root / 'notes.jpg'
  not_image.write_text('not an image\n')
  return {
    'arrays': np.stack(arrays),
    'small': small,
    'canvas': canvases,
    'missing': root / 'missing.jpg',
    'not_image': not_image,
  }


def parse_tables(stdout: str) -> dict[str, dict[str, tuple[float, str]]]:
  """predict's text output -> {path: {attribute: (probability, decision)}}."""
  tables, current = {}, None
  for line in stdout.splitlines():
    if not line.startswith(' '):
      current = tables.setdefault(line.split('  (box')[0], {})
    else:
      name, p, decision = line.split()[:3]
      current[name] = (float(p), decision)
  return tables


def assert_json_records_match(stdout: str, expected: np.ndarray, thresholds: np.ndarray) -> None:
  """predict --json's lines: probabilities within 1e-5 of `expected`, decisions `p > t`."""
  records = [json.loads(line) for line in stdout.splitlines()]
  got = np.array([[r['probabilities'][n] for n in synthetic.ATTRIBUTES] for r in records])
  np.testing.assert_allclose(got, expected, atol=1e-5)
  for r, e in zip(records, expected, strict=True):
    assert r['predicted'] == [
      n for n, p, t in zip(synthetic.ATTRIBUTES, e, thresholds, strict=True) if p > t
    ]


def assert_close_metrics(got, expected, path='') -> None:
  """Equal nested metric dicts: same keys, numbers within 1e-9, NaN == NaN."""
  if isinstance(expected, dict):
    assert set(got) == set(expected), path
    for k in expected:
      assert_close_metrics(got[k], expected[k], f'{path}.{k}')
  elif expected is None and isinstance(got, float):  # JSON null = an undefined metric.
    assert np.isnan(got), path
  elif expected is None or isinstance(expected, str):
    assert got == expected, path
  else:
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12, err_msg=path)


# --- evaluate -------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_reproduces_results_and_tunes_on_validation(run, direct):
  workdir, config = run
  proc = run_tool('jaxattr.evaluate', f'--workdir={workdir}', '--tune_thresholds')
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((workdir / 'eval_test_best.json').read_text())
  results = json.loads((workdir / 'results.json').read_text())
  assert report['step'] == results['best_step'] and report['split'] == 'test'
  assert_close_metrics(report['metrics'], results['test'])
  # The table on stdout: every attribute with its test AP (voc) in %.
  for name, r in results['test']['per_attribute'].items():
    row = next(line for line in proc.stdout.splitlines() if line.startswith(f'| {name} |'))
    ap = 'n/a' if r['ap_voc'] is None else f'{100 * r["ap_voc"]:.2f}'
    assert row.split('|')[2].strip() == ap, row
  assert 'thresholds tuned on validation' in proc.stdout

  # The thresholds maximise each attribute's F1 on VALIDATION (brute force, sklearn) ...
  tuned = report['tuned_thresholds']
  assert tuned['tuned_on'] == 'validation'
  names = list(synthetic.ATTRIBUTES)
  thresholds = np.array([tuned['thresholds'][n] for n in names])

  builder = input_pipeline.get_builder(config.data)

  def split_probs(split):
    examples = list(builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator())
    resized = np.stack(
      [input_pipeline.eval_preprocess(ex['image'], config.data).numpy() for ex in examples]
    )
    return direct(resized)[0], np.stack([ex['labels'] for ex in examples])

  val_probs, val_labels = split_probs('validation')
  for c, name in enumerate(names):
    known = val_labels[:, c] >= 0
    y, p = val_labels[known, c] == 1, val_probs[known, c]
    if not y.any():
      assert thresholds[c] == config.eval.threshold
      continue
    best = max(f1_score(y, p > t) for t in np.concatenate([[0.0], np.unique(p)]))
    assert f1_score(y, p > thresholds[c]) == pytest.approx(best, abs=1e-12), name

  # ... and are reported on test separately from the 0.5 metrics, computed on test.
  test_probs, test_labels = split_probs('test')
  for c, name in enumerate(names):
    known = test_labels[:, c] >= 0
    y, pred = test_labels[known, c] == 1, test_probs[known, c] > thresholds[c]
    got = tuned['metrics']['per_attribute'][name]
    assert got['precision'] == pytest.approx(precision_score(y, pred, zero_division=0), abs=1e-6)
    assert got['recall'] == pytest.approx(recall_score(y, pred, zero_division=0), abs=1e-6)
  saved = json.loads((workdir / 'thresholds.json').read_text())
  assert saved['step'] == report['step'] and saved['thresholds'] == tuned['thresholds']


def test_evaluate_flags_one_line_each(tmp_path):
  flags = types.SimpleNamespace(
    workdir=str(tmp_path / 'nope'), split='', batch_size=0, data_dir=str(tmp_path)
  )
  assert evaluate.evaluate_flags(flags) == [
    f'--workdir: no such folder: {tmp_path / "nope"}',
    '--split: must not be empty',
    '--batch_size: must be a positive multiple of 4 devices, got 0',
  ]


def test_tune_thresholds_by_hand():
  probs = np.array([[0.9, 0.2], [0.8, 0.3], [0.4, 0.1], [0.3, 0.6], [0.1, 0.6]])
  labels = np.array([[1, 0], [1, 0], [0, 0], [1, -1], [0, 0]])
  # Attribute 0, sorted 0.9+ 0.8+ 0.4- 0.3+ 0.1-: F1 at k=1..5 = 2/4, 4/5, 4/6, 6/7, 6/8;
  # best k=4 -> midpoint (0.3 + 0.1) / 2. Attribute 1 has no positive: default.
  np.testing.assert_allclose(thresholds_lib.tune_thresholds(probs, labels), [0.2, 0.5])
  # Ties cannot be split: 0.6 twice, the only positive among them.
  labels = np.array([[1, 0], [0, 0], [0, 0], [0, 0], [0, 1]])
  np.testing.assert_allclose(
    thresholds_lib.tune_thresholds(probs, labels, default=0.7), [0.85, (0.6 + 0.3) / 2]
  )


# --- predict --------------------------------------------------------------------------


@pytest.mark.slow
def test_predict_cli_matches_model_and_reports_bad_inputs(run, direct, images):
  workdir, _ = run
  inputs = [
    images['small'][0],
    images['missing'],
    images['small'][1],
    images['not_image'],
    images['small'][2],
  ]
  # Without tuned thresholds, so the decisions are p > 0.5.
  proc = run_tool(
    'jaxattr.predict', f'--workdir={workdir}', '--notuned_thresholds', *map(str, inputs)
  )
  assert proc.returncode == 1
  errors = error_lines(proc.stderr)
  assert len(errors) == 2, proc.stderr[-2000:]
  assert str(images['missing']) in errors[0] and 'no such file' in errors[0]
  assert str(images['not_image']) in errors[1] and 'not a readable image' in errors[1]

  tables = parse_tables(proc.stdout)
  assert list(tables) == [str(p) for p in images['small']]
  expected, _ = direct(images['arrays'])
  for i, table in enumerate(tables.values()):
    assert list(table) == list(synthetic.ATTRIBUTES)
    got = np.array([table[n][0] for n in synthetic.ATTRIBUTES])
    np.testing.assert_allclose(got, expected[i], atol=1e-5)
    assert [table[n][1] for n in synthetic.ATTRIBUTES] == [
      'yes' if p > 0.5 else 'no' for p in expected[i]
    ]


@pytest.mark.slow
def test_predict_json_box_and_attention(run, direct, images, tmp_path):
  workdir, _ = run
  predictor = inference.Predictor.from_workdir(workdir, batch_size=2, tuned_thresholds=False)
  out, err = io.StringIO(), io.StringIO()
  inputs = [*images['canvas'], images['small'][0]]
  failures = predict.predict(
    predictor,
    [str(p) for p in inputs],
    box=(10, 5, 64, 64),
    as_json=True,
    attention=str(tmp_path / 'att.png'),
    out=out,
    err=err,
  )
  # The 64x64 image cannot hold the box; the canvases are cropped back to the images.
  assert failures == 1
  assert err.getvalue().count('\n') == 1
  assert str(images['small'][0]) in err.getvalue() and 'outside the 64x64 image' in err.getvalue()
  records = [json.loads(line) for line in out.getvalue().splitlines()]
  assert [r['path'] for r in records] == [str(p) for p in images['canvas']]
  expected, _ = direct(images['arrays'])
  for r, e in zip(records, expected, strict=True):
    assert r['box'] == [10, 5, 64, 64]
    got = np.array([r['probabilities'][n] for n in synthetic.ATTRIBUTES])
    np.testing.assert_allclose(got, e, atol=1e-5)
    assert r['predicted'] == [n for n, p in zip(synthetic.ATTRIBUTES, e, strict=True) if p > 0.5]
  # Four inputs padded to batches of 2: one compiled shape.
  assert predictor.num_batches_compiled == 1

  # One figure per predicted image, named by its position among the inputs.
  written = sorted(p.name for p in tmp_path.iterdir())
  assert written == ['att_0.png', 'att_1.png', 'att_2.png']
  with Image.open(tmp_path / 'att_0.png') as png:
    # By hand from attention_figure's layout at 100 dpi for a square 64x64 crop,
    # two levels, top 3: widths 2.8 (bars) + 4.4 (image) + 3 x 2.2 + 0.3 inches;
    # height max(2 x 2.2, 0.2 x 14 + 0.8) + 0.5 (title) inches.
    assert png.size == (1410, 490)
    pixels = np.asarray(png.convert('RGB')).astype(int)
  # Not blank: each level's row of overlays (right of the bars and the input, 2.8 + 4.4
  # inches = 720 px) holds the colour map's red. Masks are max-normalised, so every overlay
  # has a peak where it adds 0.6 of jet's top (red) over the dimmed image; how large that
  # region is depends on the trained masks, so only its presence is asserted.
  red, rest = pixels[:, 720:, 0], pixels[:, 720:, 1:].max(-1)
  overlays = red - rest > 100
  assert overlays[: png.size[1] // 2].any() and overlays[png.size[1] // 2 :].any()


@pytest.mark.slow
def test_predict_folder_sorted_and_directory_output(run, images, tmp_path):
  workdir, _ = run
  folder = tmp_path / 'in'
  folder.mkdir()
  for name in ('b.png', 'a.png', 'c.PNG'):
    shutil.copy(images['small'][0], folder / name)
  (folder / 'readme.txt').write_text('skipped: not an image suffix')
  files = predict.expand_inputs([str(folder)])
  assert [f.name for f in files] == ['a.png', 'b.png', 'c.PNG']
  predictor = inference.Predictor.from_workdir(workdir, batch_size=4)
  out = io.StringIO()
  failures = predict.predict(
    predictor, [str(folder)], attention=str(tmp_path / 'figs'), top_k=2, out=out
  )
  assert failures == 0
  assert sorted(p.name for p in (tmp_path / 'figs').iterdir()) == [
    '0_a.png',
    '1_b.png',
    '2_c.png',
  ]
  tables = parse_tables(out.getvalue())
  rows = [np.array([t[n][0] for n in synthetic.ATTRIBUTES]) for t in tables.values()]
  np.testing.assert_array_equal(rows[0], rows[2])


def test_predict_flags_one_line_each(tmp_path):
  both = types.SimpleNamespace(workdir=str(tmp_path), exported='m.bin', batch_size=0, top_k=0)
  assert predict.predict_flags(both, []) == [
    '--workdir, --exported: give exactly one of them',
    '--batch_size: must be a positive integer, got 0',
    '--top_k: must be a positive integer, got 0',
    'inputs: give at least one image or folder after the flags',
  ]
  missing = types.SimpleNamespace(
    workdir=None, exported=str(tmp_path / 'm.bin'), batch_size=8, top_k=3
  )
  assert predict.predict_flags(missing, ['a.png']) == [
    f'--exported: no such file: {tmp_path / "m.bin"}'
  ]


@pytest.mark.slow
def test_workdir_without_checkpoints_is_one_line_error(run, images, tmp_path):
  workdir, _ = run
  empty = tmp_path / 'no_checkpoints'
  empty.mkdir()
  shutil.copy(workdir / 'config.json', empty / 'config.json')
  shutil.copy(workdir / 'attributes.json', empty / 'attributes.json')
  for args in (['jaxattr.predict', str(images['small'][0])], ['jaxattr.evaluate']):
    proc = run_tool(*args, f'--workdir={empty}')
    assert proc.returncode != 0
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and str(empty) in errors[0] and 'no' in errors[0], proc.stderr[-2000:]
    assert 'checkpoint' in errors[0]
    assert 'Traceback' not in proc.stderr


@pytest.mark.slow
def test_tuned_thresholds_follow_their_checkpoint(run, tmp_path):
  workdir, _ = run
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)
  ref = restore.resolve_checkpoint(copy, 'auto')
  names = list(synthetic.ATTRIBUTES)
  thresholds = {n: 0.1 + 0.01 * i for i, n in enumerate(names)}
  file = {'checkpoint': ref.which, 'step': ref.step, 'thresholds': thresholds}
  (copy / 'thresholds.json').write_text(json.dumps(file))
  predictor = inference.Predictor.from_workdir(copy, batch_size=1)
  np.testing.assert_allclose(predictor.thresholds, list(thresholds.values()))
  # Tuned for other weights: not used.
  (copy / 'thresholds.json').write_text(json.dumps({**file, 'step': ref.step + 1}))
  predictor = inference.Predictor.from_workdir(copy, batch_size=1)
  np.testing.assert_array_equal(predictor.thresholds, np.full(14, 0.5))


@pytest.mark.slow
def test_predictor_from_variables_in_memory(run, direct, images):
  _, config = run
  predictor = inference.Predictor.from_variables(
    direct.model, direct.variables, config, synthetic.ATTRIBUTES, batch_size=2
  )
  out = predictor(images['arrays'])
  expected, expected_masks = direct(images['arrays'])
  np.testing.assert_allclose(out['probs'], expected, atol=1e-5)
  assert predictor.levels == (3, 4)
  for level_masks, want in zip(out['masks'], expected_masks, strict=True):
    np.testing.assert_allclose(level_masks, want, atol=1e-5)
    # The spatial softmax a (not a * s): each attribute's mask sums to 1 over space.
    np.testing.assert_allclose(level_masks.sum(axis=(1, 2)), 1.0, atol=1e-5)


@pytest.mark.slow
def test_attributes_from_the_workdir(run):
  workdir, _ = run
  names, ratio = files.load_attributes(workdir)
  assert names == list(synthetic.ATTRIBUTES)
  assert ratio.shape == (14,) and np.all((ratio >= 0) & (ratio <= 1))
  levels = files.load_config(workdir).model.attention.levels
  assert levels == (3, 4)


# --- export ---------------------------------------------------------------------------


@pytest.mark.slow
def test_export_then_predict_exported(run, direct, images, tmp_path):
  workdir, _ = run
  model_file = tmp_path / 'model.bin'
  proc = run_tool('jaxattr.export', f'--workdir={workdir}', f'--output={model_file}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  header, exported, leaves = export.read(model_file)
  assert header['attribute_names'] == list(synthetic.ATTRIBUTES)
  assert header['image_size'] == 64 and header['batch_size'] is None
  assert len(header['thresholds']) == 14

  proc = run_tool(
    'jaxattr.predict',
    f'--exported={model_file}',
    '--json',
    '--batch_size=2',
    *map(str, images['small']),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  expected, expected_masks = direct(images['arrays'])
  assert_json_records_match(proc.stdout, expected, np.array(header['thresholds']))

  # The symbolic batch dimension: any batch size, masks too, no model code involved.
  for batch in (1, 3):
    outputs = exported.call(leaves, images['arrays'][:batch])
    np.testing.assert_allclose(outputs['probs'], expected[:batch], atol=1e-5)
    for got_mask, want in zip(outputs['masks'], expected_masks, strict=True):
      np.testing.assert_allclose(got_mask, want[:batch], atol=1e-5)


def test_export_flags_one_line_each(tmp_path):
  flags = types.SimpleNamespace(
    workdir=None, output=str(tmp_path / 'no' / 'm.bin'), batch_size=-1, platforms=['cpu', 'gpu']
  )
  assert export.export_flags(flags) == [
    '--workdir: required',
    f'--output: no such folder: {tmp_path / "no"}',
    '--batch_size: must be an integer >= 0, got -1',
    '--platforms: each must be one of cpu, cuda, rocm, tpu; got cpu,gpu',
  ]


def test_bad_export_file(tmp_path):
  bad = tmp_path / 'model.bin'
  bad.write_bytes(b'not a model')
  with pytest.raises(export.ExportError, match=re.escape(str(bad))):
    export.read(bad)
  with pytest.raises(export.ExportError, match='no such file'):
    export.read(tmp_path / 'missing.bin')


# --- visualize ------------------------------------------------------------------------


def test_attention_grid_and_figure_sizes(tmp_path):
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 255, (80, 40, 3), np.uint8) for _ in range(3)]
  masks = rng.random((3, 4, 4, 5)).astype(np.float32)
  probs = rng.random((3, 5))
  labels = np.array([[1, 0, -1, 1, 0]] * 3)
  names = ['a', 'b', 'c', 'd', 'e']
  path = visualize.attention_grid(
    images, [masks, masks[:, :2, :2]], probs, labels, names, ['a', 'c', 'e'], tmp_path / 'g.png'
  )
  with Image.open(path) as png:
    # 3 columns of max(1.6 x 0.5, 1.25) inches + 0.4; 6 rows of (1.6 + 0.45) + 0.2.
    assert png.size == (415, 1250)
  # A primary-only model has no masks: probabilities and image only.
  png = visualize.attention_figure(images[0], {}, probs[0], names, top_k=3)
  with Image.open(io.BytesIO(png)) as figure:
    # Bars 2.8 + image max(2.2 x 0.5, 1.8) + 0.3 inches; height max(2.2, 0.2 x 5 + 0.8) + 0.2.
    assert figure.size == (490, 240)


def test_upsample_mask_peak_and_centres():
  mask = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)
  up = visualize.upsample_mask(mask * 0.25, 4, 4)
  # Max-normalised; half-pixel centres: the source cell (0, 1) covers output
  # pixels x in {2, 3}, y in {0, 1}; its centre sits between them.
  assert up.max() == pytest.approx(1.0)
  assert up[0, 3] == pytest.approx(1.0) and up[3, 0] == pytest.approx(0.0)
  np.testing.assert_allclose(up[1, 2], 0.75 * 0.75 / 1.0)
