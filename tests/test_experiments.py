"""Tests of experiments/: the sweeps' runs, the launcher's naming and resuming, summarize."""

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from experiments import launch, summarize, sweeps
from jaxattr import schema
from jaxattr.models import create_model

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / 'experiments'


def _sweep(name: str, arg: str | None = 'synthetic') -> launch.Sweep:
  path = EXPERIMENTS / f'{name}.py'
  return launch.Sweep(f'{path}:{arg}' if arg else str(path))


def _configs(runs):
  """Distinct configurations (overrides without the seed), as hashable tuples."""
  return {tuple((k, v) for k, v in r.items() if k != 'seed') for r in runs}


# --- The sweeps -------------------------------------------------------------------

# Table 2 (right), transcribed from the paper's ticks and §4.2 (see wider_table2.py).
TABLE2 = [
  ((), 'bce', 'bce'),
  ((), 'weighted_bce', 'bce'),
  ((), 'weighted_focal', 'bce'),
  ((4,), 'weighted_focal', 'bce'),
  ((4,), 'weighted_focal', 'variance_weighted'),
  ((3, 4), 'weighted_focal', 'bce'),
  ((3, 4), 'weighted_focal', 'variance_weighted'),
]


def test_table2_runs():
  sweep = _sweep('wider_table2')
  assert len(sweep.runs) == 21
  got = sorted(
    (r['model.attention.levels'], r['loss.primary'], r['loss.attention'], r['seed'])
    for r in sweep.runs
  )
  want = sorted((*row, seed) for row in TABLE2 for seed in (0, 1, 2))
  assert got == want
  # Seed-major: a sweep cut short after 7 runs has every row once.
  assert [r['seed'] for r in sweep.runs[:7]] == [0] * 7
  assert len(_configs(sweep.runs[:7])) == 7
  assert [row[2] for row in sweep.module.ROWS] == [83.7, 84.0, 84.4, 85.0, 85.7, 85.9, 86.4]


def test_backbones_runs():
  sweep = _sweep('wider_backbones')
  assert len(sweep.runs) == 36
  got = sorted((r['model.backbone'], r['seed']) for r in sweep.runs)
  paper = ('resnet50', 'densenet121', 'resnet101', 'resnet152', 'densenet201')
  modern = ('vit_b_16', 'swin_t', 'swin_s', 'swin_b', 'convnext_tiny', 'convnext_small')
  names = (*paper, *modern, 'convnext_base')
  assert got == sorted((b, s) for b in names for s in (0, 1, 2))
  for r in sweep.runs:  # Primary network only, as row 1 of Table 2 (right).
    assert (r['model.attention.levels'], r['loss.primary']) == ((), 'bce')
    # The modern backbones train with configs/wider.py's recipe for them.
    assert (r.get('optimizer.name') == 'adamw') == (r['model.backbone'] not in paper)


def test_table4_runs():
  sweep = _sweep('peta_table4')
  assert len(sweep.runs) == 21
  got = {
    (
      r['model.attention.levels'],
      r.get('model.attention.aggregation', 'score'),
      r['loss.primary'],
      r['loss.attention'],
    )
    for r in sweep.runs
  }
  va = 'variance_weighted'
  assert got == {
    ((), 'score', 'weighted_bce', 'bce'),
    ((), 'score', 'weighted_focal', 'bce'),
    ((4,), 'score', 'weighted_focal', va),
    ((3, 4), 'feature_strided_conv', 'weighted_focal', va),
    ((3, 4), 'score', 'weighted_focal', va),
    ((3, 4), 'feature_upsample', 'weighted_focal', va),
    ((3, 4), 'feature_maxpool', 'weighted_focal', va),
  }
  assert sweep.base_config().model.backbone == 'densenet121'
  assert _sweep('peta_table4', None).base_config().model.backbone == 'densenet121'
  assert _sweep('peta_table4', None).base_config().data.name == 'peta'


@pytest.mark.parametrize('name', ['wider_table2', 'wider_backbones', 'peta_table4'])
def test_every_run_builds_a_model(name):
  """Each configuration, applied to the synthetic base, gives a model that initialises."""
  sweep = _sweep(name)
  for overrides in {c: None for c in _configs(sweep.runs)}:  # Distinct, in order.
    config = sweep.base_config()
    config.update_from_flattened_dict(dict(overrides))
    for key, value in overrides:
      node = config
      for part in key.split('.'):
        node = node[part]
      assert node == value
    model = create_model(config.model, 14)
    size = config.data.image_size
    shapes = jax.eval_shape(
      lambda m=model, s=size: m.init(jax.random.key(0), jnp.zeros((1, s, s, 3)), train=False)
    )
    assert shapes['params']['classifier']['kernel'].shape[-1] == 14


@pytest.mark.parametrize('name', ['wider_table2', 'wider_backbones', 'peta_table4'])
def test_real_data_base(name):
  """Without 'synthetic' the base is the paper's recipe; every override names a real field."""
  sweep = _sweep(name, None)
  base = sweep.base_config()
  assert base.data.image_size == 224 and base.model.width == 1.0
  assert base.data.name == ('peta' if name == 'peta_table4' else 'wider_attribute')
  for overrides in _configs(sweep.runs):
    config = sweep.base_config()
    config.update_from_flattened_dict(dict(overrides))  # Raises on an unknown key.
    create_model(config.model, 14)


def test_synthetic_budget_is_the_same_for_every_sweep():
  bases = [_sweep(n).base_config() for n in ('wider_table2', 'wider_backbones', 'peta_table4')]
  for base in bases:
    assert base.data.builder_config == 'small'
    assert base.train.num_epochs == 6
    assert base.model.width == 0.125
    assert not base.eval.attention_grid


# --- The launcher -------------------------------------------------------------------


def test_override_string_and_short_keys():
  names = launch.short_keys(['model.attention.levels', 'loss.attention', 'seed'])
  assert names == {
    'model.attention.levels': 'levels',
    'loss.attention': 'attention',
    'seed': 'seed',
  }
  run = {'model.attention.levels': (4,), 'loss.attention': 'bce', 'seed': 1}
  assert launch.override_string(run, names) == 'levels=4,attention=bce,seed=1'
  run = {'model.attention.levels': (3, 4), 'loss.attention': 'bce', 'seed': 0}
  assert launch.override_string(run, names) == 'levels=3-4,attention=bce,seed=0'
  assert launch.override_string({'model.attention.levels': ()}) == 'levels=none'
  assert launch.override_string({'a.flag': True, 'b.lr': 1e-3}) == 'flag=true,lr=0.001'
  assert launch.override_string({'data.name': 'a/b c'}) == 'name=a_b_c'
  assert launch.override_string({}) == 'base'
  # Keys that end alike keep enough of their path to stay apart.
  assert launch.short_keys(['a.x.name', 'b.x.name', 'c.size']) == {
    'a.x.name': 'a.x.name',
    'b.x.name': 'b.x.name',
    'c.size': 'size',
  }
  assert launch.short_keys(['data.name', 'model.name']) == {
    'data.name': 'data.name',
    'model.name': 'model.name',
  }


def test_table2_run_names():
  names = _sweep('wider_table2').run_names
  assert names[0] == 'levels=none,primary=bce,attention=bce,seed=0'
  assert names[6] == 'levels=3-4,primary=weighted_focal,attention=variance_weighted,seed=0'
  assert names[-1] == 'levels=3-4,primary=weighted_focal,attention=variance_weighted,seed=2'
  assert len(set(names)) == 21


def test_add_runs_is_seed_major():
  calls = []
  rows = [('a', {'x': 1}, None), ('b', {'x': 2}, 80.0)]
  sweeps.add_runs(lambda **run: calls.append(run), rows, seeds=(5, 6))
  assert calls == [
    {'x': 1, 'seed': 5},
    {'x': 2, 'seed': 5},
    {'x': 1, 'seed': 6},
    {'x': 2, 'seed': 6},
  ]


# The experiments/ files this test vouches for: scripts run as modules (their
# docstrings say so) and nothing edits the import path.
SCRIPTS = ('launch', 'summarize', 'bench_input', 'bench_metrics', 'bench_synthetic')
SCRIPTS += ('stress_preemption', 'bench_train', 'localisation', 'memory_table')
MODULES = ('sweeps', 'wider_table2', 'peta_table4')


@pytest.mark.parametrize('name', SCRIPTS + MODULES)
def test_no_import_path_edits(name):
  text = (EXPERIMENTS / f'{name}.py').read_text()
  assert 'sys.path' not in text
  if name in SCRIPTS:
    assert f'python -m experiments.{name}' in text and 'PYTHONPATH=.' not in text


def _run_module(module: str, *args: str, timeout: int, env=None) -> subprocess.CompletedProcess:
  """Runs `python -m module args` from the repository root and asserts that it exits 0."""
  result = subprocess.run(
    [sys.executable, '-m', module, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.slow
def test_launcher_runs_as_a_module(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  result = _run_module(
    'experiments.launch',
    f'--sweep={EXPERIMENTS / "peta_table4.py"}:synthetic',
    f'--workdir={tmp_path}',
    '--dry_run',
    env=env,
    timeout=300,
  )
  assert 'Sweep peta_table4_synthetic: 21 runs, 0 finished, 21 to run' in result.stderr
  assert not any(tmp_path.iterdir())  # A dry run writes nothing.


def test_duplicate_runs_are_refused(tmp_path):
  path = tmp_path / 'dup.py'
  path.write_text(
    'def get_config(arg=None):\n  pass\ndef sweep(add):\n  add(seed=1)\n  add(seed=1)\n'
  )
  with pytest.raises(ValueError, match='twice'):
    launch.Sweep(str(path))


# ml_collections' config_flags loads config files with importlib's deprecated load_module().
@pytest.mark.filterwarnings('ignore:the load_module\\(\\) method is deprecated:DeprecationWarning')
def test_config_args_parse_back_to_the_overrides(monkeypatch):
  """The launcher's --config.* arguments give the run's overrides through config_flags."""
  run = {
    'model.attention.levels': (),
    'loss.primary': 'weighted_bce',
    'model.attention.aggregation': 'feature_maxpool',
    'seed': 2,
    'optimizer.learning_rate': 0.0005,
    'model.attention.confidence_weighting': False,
  }
  for levels in ((), (4,), (3, 4)):
    run['model.attention.levels'] = levels
    argv = ['prog', f'--config={EXPERIMENTS / "wider_table2.py"}:synthetic']
    argv += launch.config_args(run)
    monkeypatch.setattr(sys, 'argv', argv)  # config_flags reads the overrides from sys.argv.
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file('config', flag_values=fv, lock_config=True)
    fv(argv)
    config = fv.config
    assert tuple(config.model.attention.levels) == levels
    assert config.loss.primary == 'weighted_bce'
    assert config.model.attention.aggregation == 'feature_maxpool'
    assert config.seed == 2
    assert config.optimizer.learning_rate == 0.0005
    assert config.model.attention.confidence_weighting is False
    assert config.train.num_epochs == 6  # The synthetic base underneath.


def test_substitute_and_split_argv():
  run = {'model.backbone': 'resnet50', 'seed': 0}
  names = {'model.backbone': 'backbone', 'seed': 'seed'}
  arg = '--config.model.pretrained=/w/{backbone}_v1'
  assert launch.substitute(arg, run, names) == '--config.model.pretrained=/w/resnet50_v1'
  assert launch.substitute('--config.x={model.backbone}', run, names) == '--config.x=resnet50'
  with pytest.raises(KeyError, match='width'):
    launch.substitute('--config.x={width}', run, names)
  own, passed = launch.split_argv(
    ['prog', '--sweep=a.py', '--config.data.data_dir=/d', '--dry_run']
  )
  assert own == ['prog', '--sweep=a.py', '--dry_run']
  assert passed == ['--config.data.data_dir=/d']


FAKE_SWEEP = textwrap.dedent(
  """
  from jaxattr import schema

  ROWS = (
    ('plain', {'loss.primary': 'bce'}, 80.0),
    ('focal', {'loss.primary': 'weighted_focal'}, 81.0),
  )
  SEEDS = (0, 1, 2)
  PAPER_METRIC = 'map_voc'


  def get_config(arg=None):
    return schema.defaults()


  def sweep(add):
    for seed in SEEDS:
      for _, overrides, _ in ROWS:
        add(**overrides, seed=seed)
  """
)


@pytest.fixture
def fake_sweep(tmp_path):
  path = tmp_path / 'fake_sweep.py'
  path.write_text(FAKE_SWEEP)
  return launch.Sweep(f'{path}:x')


def test_launch_skips_finished_runs(fake_sweep, tmp_path, monkeypatch):
  workdir = tmp_path / 'runs'
  dirs = fake_sweep.run_dirs(workdir)
  assert [d.name for d in dirs[:2]] == ['primary=bce,seed=0', 'primary=weighted_focal,seed=0']
  assert dirs[0].parent == workdir.resolve() / 'fake_sweep_x'
  # Run 0 finished; run 1 has a half-written results file; run 2 has no test results yet.
  for d in dirs[:3]:
    d.mkdir(parents=True)
  (dirs[0] / 'results.json').write_text(json.dumps({'test': {}}))
  (dirs[1] / 'results.json').write_text('{"test": ')
  (dirs[2] / 'results.json').write_text(json.dumps({'validation': {}}))
  calls = []

  def fake_call(command, **kwargs):
    calls.append(command)
    workdir_arg = next(a for a in command if a.startswith('--workdir='))
    run_dir = Path(workdir_arg.split('=', 1)[1])
    if run_dir == dirs[3]:
      return 1  # A run that fails.
    (run_dir / 'results.json').write_text(json.dumps({'test': {'map_voc': 0.5}}))
    return 0

  monkeypatch.setattr(subprocess, 'call', fake_call)
  failed = launch.launch(fake_sweep, workdir, ['--config.data.data_dir=/d'])
  assert failed == [dirs[3].name]
  ran = [Path(next(a for a in c if a.startswith('--workdir=')).split('=', 1)[1]) for c in calls]
  assert ran == dirs[1:]
  assert calls[0][3:] == [
    f'--config={fake_sweep.path}:x',
    f'--workdir={dirs[1]}',
    '--config.loss.primary=weighted_focal',
    '--config.seed=0',
    '--config.data.data_dir=/d',
  ]
  assert json.loads((dirs[1] / 'overrides.json').read_text()) == fake_sweep.runs[1]
  # A second launch only retries the failed run.
  calls.clear()
  assert launch.launch(fake_sweep, workdir) == [dirs[3].name]
  assert len(calls) == 1
  # A dry run runs nothing.
  calls.clear()
  launch.launch(fake_sweep, workdir, dry_run=True)
  assert calls == []


# --- summarize ------------------------------------------------------------------------

NAMES = ['a', 'b', 'c', 'd', 'e']
RATIOS = [0.5, 0.04, 0.3, 0.02, 0.1]  # Rarest three: d (2%), b (4%), e (10%).


def _write_run(run_dir, map_voc, ap_d, pointing=None, epochs=6, validation=None):
  """A finished run of 100 steps; `validation`: step -> val mAP, into metrics.jsonl."""
  run_dir.mkdir(parents=True)
  if validation is not None:
    rows = [{'step': s, 'train/loss': 1.0} for s in validation]
    rows += [{'step': s, 'val/map_voc': v} for s, v in validation.items()]
    (run_dir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  per_attribute = {n: {'ap_voc': 0.5} for n in NAMES}
  per_attribute['d']['ap_voc'] = ap_d
  test = {'map_voc': map_voc, 'f1': 0.1, 'per_attribute': per_attribute}
  if pointing is not None:
    test['pointing_game'] = {'weighted_4': {'overall': pointing, 'per_attribute': {}}}
  results = {
    'dataset': 'synthetic_attributes/small/1.0.0',
    'test': test,
    'wall_time_s': 120.0,
    'steps': 100,
    'best_step': 100 if map_voc > 0.71 else 50,
  }
  (run_dir / 'results.json').write_text(json.dumps(results))
  config = schema.defaults()
  config.train.num_epochs = epochs
  (run_dir / 'config.json').write_text(config.to_json_best_effort())
  (run_dir / 'attributes.json').write_text(json.dumps({'names': NAMES, 'positive_ratio': RATIOS}))


def _table_rows(text):
  lines = [line for line in text.splitlines() if line.startswith('| ')]
  header = [c.strip() for c in lines[0].strip('|').split('|')]
  return header, [[c.strip() for c in line.strip('|').split('|')] for line in lines[1:]]


def test_summarize_hand_computed(fake_sweep, tmp_path):
  workdir = tmp_path / 'runs'
  dirs = fake_sweep.run_dirs(workdir)  # Order: (plain, 0), (focal, 0), (plain, 1), ...
  # Validation mAP at or before step 80 (80 % of 100 steps) vs the best: gains of 1, 3
  # and 0.5 points (the best of run 0 is before step 80: its gain counts from 0.66).
  _write_run(dirs[0], 0.70, 0.10, validation={50: 0.67, 80: 0.66, 100: 0.65})
  _write_run(dirs[2], 0.72, 0.20, validation={40: 0.60, 70: 0.70, 90: 0.73})
  _write_run(dirs[4], 0.74, 0.60, validation={80: 0.74, 90: 0.745})
  _write_run(dirs[1], 0.80, 0.30, pointing=0.25)
  _write_run(dirs[3], 0.81, 0.40, pointing=0.35)  # Seed 2 of 'focal' never finished.
  text = summarize.summarize(fake_sweep, workdir)
  header, rows = _table_rows(text)
  assert header[:4] == ['configuration', 'n', 'test mAP (voc)', 'Δ vs row 1']
  assert header[4:7] == ['AP d (2.0%)', 'AP b (4.0%)', 'AP e (10.0%)']
  assert 'paper' not in header  # Synthetic data: no paper column.
  plain, focal = rows
  # plain: mAP 70, 72, 74 -> mean 72, sample std 2; AP(d) 10, 20, 60 -> mean 30,
  # std sqrt(((-20)^2 + (-10)^2 + 30^2) / 2) = sqrt(700) = 26.4575...
  assert plain[:4] == ['plain', '3', '72.00 ± 2.00', '—']
  assert plain[4] == '30.00 ± 26.46'
  assert plain[7:9] == ['—', '—']  # No pointing game without attention.
  # Best step / steps: 50, 100, 100 % -> mean 83.3, std sqrt((33.3^2 + 2 * 16.7^2) / 2) = 28.9.
  assert header[9] == 'best step, % of training'
  assert plain[9] == '83 ± 29'
  # focal: mAP 80, 81 -> mean 80.5, std sqrt(0.5) = 0.7071; Δ = 80.5 - 72 = +8.50.
  assert focal[:4] == ['focal', '2 of 3', '80.50 ± 0.71', '+8.50']
  assert focal[4] == '35.00 ± 7.07'
  assert focal[7:9] == ['—', '30.0 ± 7.1']  # Level 3 absent; level 4: 25, 35.
  assert focal[9] == '100 ± 0'
  # Gains 1, 3, 0.5 -> mean 1.5, std sqrt((0.5^2 + 1.5^2 + 1^2) / 2) = sqrt(1.75) = 1.32;
  # the focal runs logged no validation: no value.
  assert header[10] == 'validation mAP (voc) gained in the last fifth'
  assert plain[10] == '1.50 ± 1.32'
  assert focal[10] == '—'
  assert 'train.num_epochs=6' in text
  assert '5 of 6 runs finished' in text
  assert 'best validation step is their last: 4 of 5.' in text  # All but mAP 0.70.
  assert 'differ' not in text


def test_summarize_flags_mixed_budgets_and_real_data(fake_sweep, tmp_path):
  workdir = tmp_path / 'runs'
  dirs = fake_sweep.run_dirs(workdir)
  _write_run(dirs[0], 0.70, 0.1, epochs=6)
  _write_run(dirs[1], 0.75, 0.1, epochs=8)
  for d in dirs[:2]:
    results = json.loads((d / 'results.json').read_text())
    results['dataset'] = 'wider_attribute/1.0.0'
    (d / 'results.json').write_text(json.dumps(results))
  text = summarize.summarize(fake_sweep, workdir, note='Code: abc.')
  assert text.startswith('# Sweep `fake_sweep_x`\n\nCode: abc.\n')
  assert 'differ in budget fields' in text and 'train.num_epochs' in text
  header, rows = _table_rows(text)
  assert header[4] == 'paper'
  assert [r[4] for r in rows] == ['80.0', '81.0']
  assert [r[2] for r in rows] == ['70.00', '75.00']  # One seed each: no std.


def test_mean_std():
  mean, std, n = summarize.mean_std([1.0, 2.0, 4.0])
  assert (mean, n) == (7 / 3, 3)
  assert std == pytest.approx(np.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
  assert math.isnan(summarize.mean_std([0.5])[1])
  assert summarize.format_mean_std([]) == '—'


# --- bench_train ------------------------------------------------------------------


def test_bench_time_in_blocks_runs_consecutive_blocks_after_an_untimed_step():
  from experiments import bench_train

  calls = []
  benches = {
    v: {k: (lambda v=v, k=k: calls.append((v, k))) for k in ('train', 'eval')} for v in 'ab'
  }
  bench_train.time_in_blocks(benches, steps=5, block=2)
  train = [v for v, k in calls if k == 'train']
  # Blocks of 1 untimed + 2 timed, 1 + 2, then 1 + 1 for the last odd step.
  assert ''.join(train) == 'aaabbbaaabbbaabb'
  assert [k for _, k in calls] == ['train'] * 16 + ['eval'] * 16
  for b in benches.values():
    assert len(b['train_steps']) == len(b['eval_steps']) == 5
    assert b['train_s'] == sorted(b['train_steps'])[2]
    assert b['train_faults'] >= 0 and b['train_sys_s'] >= 0


@pytest.mark.slow
def test_bench_train_prints_every_figure():
  result = _run_module(
    'experiments.bench_train',
    '--backbone=resnet18',
    '--width=0.0625',
    '--image_size=64',
    '--batch=4',
    '--steps=2',
    '--block=1',
    '--compare_torch',
    '--pieces',
    timeout=600,
  )
  out = result.stdout
  for variant in ('full', 'primary'):
    line = next(x for x in out.splitlines() if x.startswith(f'JAX {variant}:'))
    assert 'compile train' in line and 'img/s' in line and 'minor page faults' in line
    assert line.count(', ') >= 2  # Two timed steps listed per kind.
    assert f'PyTorch {variant}: train' in out
  assert 'full / primary train step time:' in out and 'method overhead' in out
  assert 'JAX / PyTorch full train step time:' in out
  for level in (3, 4):
    assert f'stage {level} attention classifier: forward' in out
    assert re.search(rf'stage {level} \d+x\d+ full-spatial conv 32->32 as matmul: forward', out)


# --- memory_table ---------------------------------------------------------------------


def test_memory_table_remat_estimate_and_fits_by_hand():
  from experiments import memory_table

  # Remat keeps 2 of 10 GB of residuals; XLA kept 6 GB of temporaries without remat:
  # at least the 2 kept, and at least 6 - (10 - 2) = -2: 1 + 2 = 3.
  assert memory_table.remat_estimate(1.0, 6.0, 10.0, 2.0) == 3.0
  # Residuals XLA keeps almost whole: 12 - (10 - 2) = 4 decides.
  assert memory_table.remat_estimate(1.0, 12.0, 10.0, 2.0) == 5.0
  assert memory_table.fits(21.6) == '24, 40, 80'
  assert memory_table.fits(21.7) == '40, 80'
  assert memory_table.fits(80.0) == 'none'


@pytest.mark.slow
def test_memory_table_writes_a_row_per_setting(tmp_path):
  out = tmp_path / 'table.md'
  _run_module(
    'experiments.memory_table',
    '--backbones=resnet18',
    '--batches=2',
    '--dtypes=float32',
    '--remats=false,true',
    '--image_size=64',
    f'--table_out={out}',
    timeout=600,
  )
  lines = out.read_text().splitlines()
  rows = [line.split(' | ') for line in lines if line.startswith('| resnet18')]
  assert [(r[3], r[1]) for r in rows] == [('off', '2'), ('on', '2')]
  for row in rows:
    arguments, outputs, aliased, temporaries, peak = map(float, row[4:9])
    assert abs(arguments + outputs - aliased + temporaries - peak) <= 0.011
  # With remat the traced residuals (what the backward keeps) shrink.
  assert float(rows[1][9]) < float(rows[0][9])
