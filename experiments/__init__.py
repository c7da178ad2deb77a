"""jaxattr's experiments: the paper's ablation sweeps, their launcher and summary, benchmarks.

Run each script as a module from the repository root, e.g.

  python -m experiments.launch --sweep=experiments/wider_table2.py:synthetic \
      --workdir=runs/table2

A sweep file (wider_table2.py, peta_table4.py, wider_backbones.py) is also the
config file of its runs (`--config=experiments/wider_table2.py:synthetic`); what
the three share is in `sweeps.py`.
"""
