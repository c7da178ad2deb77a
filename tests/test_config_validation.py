"""schema.validate and config_validation: every bad value gives one line naming its field.

Most cases call `validate` in-process on configs/test.py with one value changed; one
real `python -m jaxattr.main` checks the command line: exit code 2, one line per
problem, and a workdir that is never created.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxattr import config_validation, schema
from tests.conftest import run_tool

REPO = Path(__file__).resolve().parents[1]


def _config(**changes):
  config = schema.load_recipe('test').get_config()
  for field, value in changes.items():
    node = config
    *parents, leaf = field.split('.')
    for part in parents:
      node = node[part]
    with config.unlocked():
      node[leaf] = value
  return config


@pytest.mark.parametrize(
  'recipe', ['default', 'test', 'demo', 'wider', 'peta', 'pa100k', 'rap2', 'custom', 'localisation']
)
def test_shipped_configs_are_valid(recipe):
  config = schema.load_recipe(recipe).get_config()
  assert schema.validate(config, num_devices=4) == []


# (field, bad value, words the line must contain). The first three are the issue's.
BAD = [
  ('train.batch_size', 0, 'must be a positive multiple of 4 devices, got 0'),
  ('optimizer.name', 'adamx', "'sgd', 'adam', 'adamw'; got 'adamx'"),
  ('data.name', 'nosuch', "got 'nosuch'"),
  ('train.batch_size', 18, 'must be a positive multiple of 4 devices, got 18'),
  ('eval.batch_size', -4, 'must be a positive multiple of 4 devices, got -4'),
  ('seed', -1, 'must be an integer >= 0'),
  ('data.builder_config', 'huge', "'tiny', 'small', 'large'"),
  ('data.image_size', 0, 'must be a positive integer, got 0'),
  ('data.crop_max', 100, 'crop_min <= crop_max <= resize_size, got 48, 100, 72'),
  ('data.std', (0.2, 0.0, 0.2), 'must be a tuple of 3 positive numbers'),
  ('data.unknown_label', 'positive', "'negative', 'ignore'; got 'positive'"),
  ('data.on_bad_image', 'retry', "got 'retry'"),
  ('data.manual_dir', '/no/such/folder', 'no such folder: /no/such/folder'),
  ('model.backbone', 'resnet19', "got 'resnet19'"),
  ('model.width', 0.0, 'must be > 0'),
  ('model.depth', 0.0, 'must be > 0'),
  ('model.depth', 2.0, 'must be <= 1'),
  ('model.dtype', 'float8', "got 'float8'"),
  ('model.pretrained', '/no/such/weights', 'no such file or folder: /no/such/weights'),
  ('model.pretrained', 'torchvision:resnet1000', "unknown architecture 'resnet1000'"),
  ('model.pretrained', 'torchvision:resnet50', 'weights of resnet50, but config.model.backbone'),
  ('model.attention.levels', (2, 3), 'must be one of (), (3,), (4,), (3, 4)'),
  ('model.attention.aggregation', 'sum', "got 'sum'"),
  ('model.attention.classifier_channels', (256, 512), 'must be a tuple of 3 positive integers'),
  ('loss.primary', 'focal', "got 'focal'"),
  ('loss.class_weights', 'inverse', "got 'inverse'"),
  ('loss.gamma', -0.5, 'must be >= 0'),
  ('history.length', 0, 'must be a positive integer'),
  ('history.source', 'primary', "got 'primary'"),
  ('optimizer.learning_rate', 0.0, 'must be > 0'),
  ('optimizer.momentum', 1.5, 'must be in [0, 1)'),
  ('schedule.name', 'linear', "got 'linear'"),
  ('schedule.factor', 10.0, 'must be in (0, 1)'),
  ('schedule.min_lr', 1.0, 'must be <= config.optimizer.learning_rate'),
  ('schedule.step_epochs', (60, 30), 'must be increasing'),
  ('train.num_epochs', 0, 'must be > 0'),
  ('train.log_every_steps', 0, 'must be a positive integer'),
  ('train.keep_checkpoints', 0, 'must be a positive integer'),
  ('train.max_steps', -1, 'must be an integer >= 0'),
  ('eval.metric', 'auc', "got 'auc'"),
  ('eval.threshold', 1.5, 'must be <= 1'),
  ('eval.every_epochs', 0, 'must be a positive integer'),
  ('train.checkpoint_every_steps', 0, 'must be a positive integer'),
  # The traps: values that would train, but not as anyone means to.
  ('model.param_dtype', 'bfloat16', "must be 'float32' (Adam's updates vanish"),
  ('model.dtype', 'float16', "'float16' needs loss scaling, which jaxattr has not"),
  ('optimizer.layer_decay', 0.75, 'defined for ViT backbones, not resnet18'),
  ('optimizer.layer_decay', 1.5, 'must be <= 1'),
  ('recipe', 'transformer', "'transformer' is not the recipe of resnet18 ('paper')"),
]


@pytest.mark.parametrize(('field', 'value', 'words'), BAD, ids=[f'{f}={v}' for f, v, _ in BAD])
def test_each_bad_value_gives_one_line_naming_its_field(field, value, words):
  problems = schema.validate(_config(**{field: value}), num_devices=4)
  assert len(problems) == 1, problems
  # crop_max's line names the three fields of the relation.
  name = 'data.crop_min, crop_max, resize_size' if field == 'data.crop_max' else field
  assert problems[0].startswith(f'config.{name}: '), problems
  assert words in problems[0], problems


def test_named_weights_are_valid():
  for value in (schema.PUBLISHED, schema.SCRATCH):
    config = _config(**{'model.pretrained': value, 'model.width': 1.0})
    config.train.freeze_backbone_epochs = 0
    assert schema.validate(config, num_devices=1) == []


def test_published_weights_need_the_full_size_model():
  config = _config(**{'model.pretrained': schema.PUBLISHED, 'train.freeze_backbone_epochs': 0})
  (line,) = schema.validate(config, num_devices=1)  # configs/test.py: width 1/16.
  assert line == (
    "config.model.pretrained: 'published' weights exist at model.width=1.0 and "
    "model.depth=1.0 only, got model.width=0.0625, model.depth=1.0; use 'scratch' for a "
    'smaller model'
  )
  config.model.width = 1.0
  assert schema.validate(config, num_devices=1) == []


def test_random_weights_on_real_data_must_be_asked_for():
  config = _config(
    **{'data.name': 'wider_attribute', 'data.builder_config': '', 'model.pretrained': ''}
  )
  config.train.freeze_backbone_epochs = 0
  (line,) = schema.validate(config, num_devices=4)
  assert line.startswith("config.model.pretrained: '' on real data (wider_attribute) starts ")
  assert "use 'published'" in line and 'docs/pretrained.md' in line and "'scratch'" in line
  config.model.pretrained = schema.SCRATCH
  assert schema.validate(config, num_devices=4) == []
  # Made-up data starts from random weights by default.
  config.data.name, config.data.builder_config = 'synthetic_attributes', 'tiny'
  config.model.pretrained = ''
  assert schema.validate(config, num_devices=4) == []


@pytest.mark.parametrize('pretrained', ['', schema.SCRATCH])
def test_freezing_a_random_backbone_needs_the_explicit_field(pretrained):
  config = _config(**{'model.pretrained': pretrained, 'train.allow_frozen_scratch': False})
  (line,) = schema.validate(config, num_devices=4)
  assert line.startswith('config.train.freeze_backbone_epochs: 1 freezes a randomly ')
  config.train.allow_frozen_scratch = True
  assert schema.validate(config, num_devices=4) == []
  config.train.allow_frozen_scratch = False
  config.train.freeze_backbone_epochs = 0
  assert schema.validate(config, num_devices=4) == []


def test_vit_has_no_strided_feature_conv():
  config = _config(
    **{'model.backbone': 'vit_b_16', 'model.attention.aggregation': 'feature_strided_conv'}
  )
  (line,) = schema.validate(config, num_devices=4)
  assert line == (
    "config.model.attention.aggregation: vit_b_16's two taps share one grid, which a "
    'stride-2 conv cannot halve'
  )
  config.model.backbone = 'swin_t'
  assert schema.validate(config, num_devices=4) == []
  config.model.backbone, config.recipe = 'clip_vit_b_16', 'own'  # CLIP's taps share one too.
  (line,) = schema.validate(config, num_devices=4)
  assert line.startswith("config.model.attention.aggregation: clip_vit_b_16's two taps")


# (config file, flags, the one problem line's start): each trap through the command line.
TRAPS = [
  (
    'custom',
    ['--config.model.pretrained=', '--config.train.freeze_backbone_epochs=0'],
    "config.model.pretrained: '' on real data (custom_attributes)",
  ),
  (
    'custom',
    ['--config.model.pretrained=scratch'],
    'config.train.freeze_backbone_epochs: 3 freezes a randomly initialised backbone',
  ),
  ('test', ['--config.model.param_dtype=bfloat16'], "config.model.param_dtype: must be 'float32'"),
  ('test', ['--config.model.dtype=float16'], "config.model.dtype: 'float16' needs loss scaling"),
  (
    'test',
    [
      '--config.model.backbone=vit_b_16',
      '--config.model.attention.aggregation=feature_strided_conv',
    ],
    "config.model.attention.aggregation: vit_b_16's two taps share one grid",
  ),
  (
    'wider',
    ['--config.model.backbone=swin_t'],
    "config.recipe: 'paper' is not the recipe of swin_t",
  ),
]


@pytest.mark.slow
@pytest.mark.parametrize(('recipe', 'flags', 'start'), TRAPS, ids=[t[2][:40] for t in TRAPS])
def test_each_trap_exits_2_with_one_line_and_writes_nothing(tmp_path, recipe, flags, start):
  workdir = tmp_path / 'parent' / 'run'
  proc = run_tool(
    'jaxattr.main', f'--config=configs/{recipe}.py', f'--workdir={workdir}', *flags, num_devices=1
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[-2] == 'jaxattr.main: 1 problem, nothing was done:'
  assert lines[-1].startswith(start), lines[-1]
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'parent').exists()


def test_torchvision_weights_of_the_backbone_are_valid():
  config = _config(**{'model.pretrained': 'torchvision:resnet18'})
  assert schema.validate(config, num_devices=1) == []


def test_feature_aggregation_needs_both_levels():
  config = _config(
    **{
      'model.attention.levels': (4,),
      'model.attention.aggregation': 'feature_upsample',
    }
  )
  (problem,) = schema.validate(config)
  assert problem.startswith('config.model.attention.aggregation: ')


def test_several_bad_values_give_one_line_each_in_field_order():
  config = _config(
    **{
      'train.batch_size': 0,
      'optimizer.name': 'adamx',
      'data.name': 'nosuch',
      'loss.gamma': -1.0,
    }
  )
  problems = schema.validate(config, num_devices=4)
  assert [p.split(':')[0] for p in problems] == [
    'config.data.name',
    'config.loss.gamma',
    'config.optimizer.name',
    'config.train.batch_size',
  ]


def test_a_missing_field_is_named():
  config = schema.load_recipe('test').get_config()
  with config.unlocked():
    del config.eval['metric']
  assert schema.validate(config) == ['config.eval.metric: missing']


def test_exit_if_problems_prints_one_line_each_and_exits_2(capsys):
  config_validation.exit_if_problems([], 'prog')  # Nothing to say: returns.
  with pytest.raises(SystemExit) as exit_info:
    config_validation.exit_if_problems(['a: bad', 'b: worse'], 'prog')
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.splitlines() == [
    'prog: 2 problems, nothing was done:',
    'a: bad',
    'b: worse',
  ]


def test_cli_reports_every_problem_and_creates_no_workdir(tmp_path):
  workdir = tmp_path / 'parent' / 'run'
  env = dict(
    os.environ,
    PYTHONPATH=str(REPO),
    TF_CPP_MIN_LOG_LEVEL='2',
    JAX_PLATFORMS='cpu',
    JAX_NUM_CPU_DEVICES='4',
  )
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'jaxattr.main',
      '--config=configs/test.py',
      f'--workdir={workdir}',
      '--config.train.batch_size=0',
      '--config.optimizer.name=adamx',
      '--config.data.name=nosuch',
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[-4] == 'jaxattr.main: 3 problems, nothing was done:'
  assert lines[-3].startswith("config.data.name: must be one of 'custom_attributes', ")
  assert lines[-3].endswith("; got 'nosuch'")
  assert lines[-2:] == [
    "config.optimizer.name: must be one of 'sgd', 'adam', 'adamw'; got 'adamx'",
    'config.train.batch_size: must be a positive multiple of 4 devices, got 0',
  ]
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'parent').exists()


def test_tool_cli_reports_every_bad_flag_with_exit_code_2(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'jaxattr.export',
      f'--workdir={tmp_path / "nope"}',
      f'--output={tmp_path}',
      '--platforms=gpu',
    ],
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu'),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-4:] == [
    'jaxattr.export: 3 problems, nothing was done:',
    f'--workdir: no such folder: {tmp_path / "nope"}',
    f'--output: {tmp_path} is a folder; give a file name',
    '--platforms: each must be one of cpu, cuda, rocm, tpu; got gpu',
  ]


def test_sweep_launcher_checks_every_run_before_launching(tmp_path):
  from experiments import launch

  sweep = 'experiments/wider_table2.py:synthetic'
  assert launch.check(sweep, str(tmp_path)) == []
  blocker = tmp_path / 'file'
  blocker.write_text('')
  passthrough = ['--config.train.batch_size=0', '--config.nosuch.x=1']
  assert launch.check(sweep, str(blocker), passthrough) == [
    f'--workdir: {blocker} is a file, not a folder',
    'config.nosuch.x: no such field',
    'config.train.batch_size: must be a positive integer, got 0',
  ]
  assert launch.check('experiments/nope.py', str(tmp_path)) == [
    '--sweep: Sweep file experiments/nope.py not found.'
  ]
