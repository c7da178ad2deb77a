"""Per-attribute test AP against the attribute's positive ratio, for one finished run.

  python -m experiments.ap_vs_ratio --workdir=runs/demo --out=docs/demo_ap_vs_ratio.png

The paper's argument is that rare attributes are the hard ones; this plot shows it for
one run: one point per attribute, x = its share of positive training examples (log
scale), y = its test AP (VOC, the headline of `results.json`), labelled with its name.
It reads `attributes.json` (names, train positive ratios) and `results.json` of the run
folder and writes a PNG.
"""

import json
from pathlib import Path

import numpy as np
from absl import app, flags
from matplotlib.figure import Figure

from jaxattr import config_validation
from jaxattr.run import files, layout


def points(workdir: str | Path, split: str = 'test') -> list[tuple[str, float, float]]:
  """(name, train positive ratio, AP) per attribute with a defined AP, as fractions.

  Args:
    workdir: a finished run folder.
    split: the block of `results.json` to read ('test' or 'validation').

  Returns:
    One tuple per attribute in the run's attribute order; attributes whose AP is
    undefined (no positive in the split: `null`) are left out.

  Raises:
    layout.RunError: if the folder lacks `results.json` or the train ratios, or the
      split is not in it.
  """
  workdir = Path(workdir)
  names, ratios = files.load_attributes(workdir)
  results_path = workdir / layout.RESULTS
  if not results_path.is_file():
    raise layout.RunError(f'{results_path}: no such file (the run has not finished)')
  if ratios is None:
    raise layout.RunError(f'{workdir / layout.ATTRIBUTES}: no positive_ratio to plot against')
  results = json.loads(results_path.read_text())
  if split not in results:
    raise layout.RunError(f'{results_path}: no "{split}" block (has {sorted(results)})')
  per_attribute = results[split]['per_attribute']
  return [
    (name, float(ratio), float(per_attribute[name]['ap_voc']))
    for name, ratio in zip(names, ratios, strict=True)
    if per_attribute[name]['ap_voc'] is not None
  ]


def plot(workdir: str | Path, out: str | Path, split: str = 'test', dpi: int = 100) -> Path:
  """Writes the AP-against-positive-ratio scatter of a run to `out` (a PNG).

  Args:
    workdir: a finished run folder.
    out: the PNG's path (its folder is created).
    split: the block of `results.json` to plot.
    dpi: resolution.

  Returns:
    `out` as a Path.
  """
  rows = points(workdir, split)
  ratios = np.array([r for _, r, _ in rows]) * 100
  aps = np.array([a for _, _, a in rows]) * 100
  fig = Figure(figsize=(6.4, 4.0))
  ax = fig.add_subplot()
  ax.scatter(ratios, aps, color='tab:blue', s=18)
  for (name, _, _), x, y in zip(rows, ratios, aps, strict=True):
    ax.annotate(name, (x, y), xytext=(3, 3), textcoords='offset points', fontsize=7)
  ax.set_xscale('log')
  ticks = [t for t in (1, 2, 5, 10, 20, 50, 100) if ratios.min() / 1.5 <= t <= ratios.max() * 1.5]
  ax.set_xticks(ticks, [str(t) for t in ticks])
  ax.minorticks_off()
  ax.set_xlabel('positive ratio in the train split (%, log scale)')
  ax.set_ylabel(f'{split} AP (VOC, %)')
  ax.set_ylim(0, 105)
  mean = float(np.mean(aps)) if len(aps) else float('nan')
  ax.axhline(mean, color='grey', lw=0.8, ls='--')
  ax.set_title(f'{split} AP per attribute (dashed: their mean, {mean:.1f})', fontsize=9)
  fig.tight_layout()
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, format='png', dpi=dpi, facecolor='white')
  return out


def define_flags() -> None:
  """The script's flags (defined only when it runs, so tests can import it beside others)."""
  flags.DEFINE_string('workdir', None, f'A finished run folder (with its {layout.RESULTS}).')
  flags.DEFINE_string('out', '', 'The PNG to write ("" = <workdir>/ap_vs_ratio.png).')
  flags.DEFINE_string('split', 'test', "Which split of the run's results: test or validation.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  workdir, out, split = flags.FLAGS.workdir, flags.FLAGS.out, flags.FLAGS.split
  problem = config_validation.run_folder('--workdir', workdir)
  config_validation.exit_if_problems([problem] if problem else [], 'experiments.ap_vs_ratio')
  out = out or Path(workdir) / 'ap_vs_ratio.png'
  try:
    print(plot(workdir, out, split))
  except layout.RunError as error:
    raise SystemExit(f'experiments.ap_vs_ratio: {error}') from None


if __name__ == '__main__':
  define_flags()
  app.run(main)
