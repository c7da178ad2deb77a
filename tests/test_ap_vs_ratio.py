"""experiments/ap_vs_ratio.py: the points it plots come from the run's files, and it draws."""

import json
import subprocess
import sys

import pytest

from experiments import ap_vs_ratio
from jaxattr.run import layout
from tests.conftest import REPO


@pytest.fixture
def run(tmp_path):
  workdir = tmp_path / 'demo'
  workdir.mkdir()
  names = ['Male', 'Hat', 'faceMask']
  (workdir / 'attributes.json').write_text(
    json.dumps({'names': names, 'positive_ratio': [0.5, 0.1, 0.03]})
  )
  per_attribute = {'Male': {'ap_voc': 0.9}, 'Hat': {'ap_voc': None}, 'faceMask': {'ap_voc': 0.2}}
  results = {'test': {'map_voc': 0.55, 'per_attribute': per_attribute}}
  (workdir / 'results.json').write_text(json.dumps(results))
  return workdir


def test_points_pair_each_ratio_with_its_ap(run):
  # Hat has no positive in the split (AP null): left out.
  points = ap_vs_ratio.points(run)
  assert [name for name, _, _ in points] == ['Male', 'faceMask']
  # The ratios pass through float32 (attributes.json is read as the model's array).
  assert [(r, ap) for _, r, ap in points] == [(0.5, 0.9), (pytest.approx(0.03, rel=1e-6), 0.2)]


def test_plot_writes_a_png(run, tmp_path):
  out = ap_vs_ratio.plot(run, tmp_path / 'figures' / 'ap.png')
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert out.stat().st_size > 5000  # Axes, points and labels, not an empty canvas.


def test_unfinished_run_is_named(run):
  (run / 'results.json').unlink()
  with pytest.raises(layout.RunError, match=r'results\.json: no such file'):
    ap_vs_ratio.points(run)
  with pytest.raises(layout.RunError, match='no "validation" block'):
    (run / 'results.json').write_text(json.dumps({'test': {}}))
    ap_vs_ratio.points(run, 'validation')


def test_command_refuses_a_missing_workdir(tmp_path):
  missing = tmp_path / 'nothing'
  process = subprocess.run(
    [sys.executable, '-m', 'experiments.ap_vs_ratio', f'--workdir={missing}'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert process.returncode == 2
  assert f'--workdir: no such folder: {missing}' in process.stderr
