"""Evaluators: the evaluations of a run, declared in the config, in one registry.

  config.evals.val = dict(type='attributes', split='validation', every_epochs=1,
                          at_end=True, select=True, results_key='validation')
  config.evals.test = dict(type='attributes', split='test', at_end=True)

Each entry of `config.evals` is one evaluator: its `type` (a key of `EVALUATORS`),
the `split` it reads (a role, 'train' / 'validation' / 'test', or a TFDS split
name), how often it runs (`every_epochs`: at the end of every n-th epoch, 0 =
never during training; `at_end`: once after training, on the selected
checkpoint), `results_key` (its key in results.json; default its name) and the
options of its type (`OPTIONS` of its class). Its metrics are logged as
`<name>/<metric>`; the selection metric is `<name>/<config.eval.metric>` of the
one periodic evaluator with `select=True` (`selection_metric`). Evaluators due at the
same step run in name order.

An empty `config.evals` (the default) is `default_evals`: validation every
`config.eval.every_epochs` epochs, selecting, and the test split once at the end.
It is derived rather than spelled in configs/default.py so that the config.json
of a run made before evaluators were declared resumes unchanged.

`add_peers_protocol(config)` adds the test split every epoch, reported as the
peers' protocol (optimistic; never selects).

Adding a type: its module (a subclass of `common.Evaluator`) and one
`EVALUATORS` line below.
"""

from typing import Any

import ml_collections

from jaxattr.evaluators import attributes, common, pointing, thresholds
from jaxattr.evaluators.common import Context, Evaluator, create_context  # noqa: F401

EVALUATORS: dict[str, type[common.Evaluator]] = {
  'attributes': attributes.AttributesEvaluator,
  'pointing': pointing.PointingEvaluator,
  'thresholds': thresholds.ThresholdsEvaluator,
}

# Options every evaluator has, with their defaults (`type` and `split` are required).
COMMON_OPTIONS = {'every_epochs': 0, 'at_end': False, 'results_key': ''}
# results.json keys that the loop writes itself: no evaluator may report under them.
RESERVED_RESULTS_KEYS = ('workdir', 'dataset', 'steps', 'best_step', 'wall_time_s')


def default_evals(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  """The evaluators of a config with an empty `config.evals` (see the module docstring)."""
  return {
    'val': dict(
      type='attributes',
      split='validation',
      every_epochs=config.eval.every_epochs,
      at_end=True,
      select=True,
      results_key='validation',
    ),
    'test': dict(type='attributes', split='test', at_end=True),
  }


def declared(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  """`config.evals` as plain dicts in name order, or `default_evals` if it is empty."""
  evals = config.get('evals')
  if not evals:
    return default_evals(config)
  return {name: dict(spec) for name, spec in evals.to_dict().items()}


def resolve(name: str, spec: dict[str, Any]) -> dict[str, Any]:
  """One declared entry with every option of its type filled in from the defaults."""
  cls = EVALUATORS[spec['type']]
  return {**COMMON_OPTIONS, 'results_key': name, **cls.OPTIONS, **spec}


def validate(config: ml_collections.ConfigDict) -> list[str]:
  """Problem lines of `config.evals` (empty: fine), `config.evals.<name>...: what is wrong`."""
  from jaxattr import config_validation as cv

  if not config.get('evals'):
    return []  # `default_evals`: valid whenever the `config.eval` fields it reads are.
  problems, keys, selecting = [], {}, []
  for name, spec in declared(config).items():
    where = f'config.evals.{name}'
    if not isinstance(spec, dict):
      problems.append(f'{where}: must be a dict of options, got {spec!r}')
      continue
    kind = spec.get('type')
    if kind not in EVALUATORS:
      problems.append(cv.check_choice(f'{where}.type', kind, EVALUATORS))
      continue
    if not isinstance(spec.get('split'), str) or not spec['split']:
      problems.append(f'{where}.split: must be a split role or name, got {spec.get("split")!r}')
      continue
    spec = resolve(name, spec)
    cls = EVALUATORS[kind]
    known = {'type', 'split', *COMMON_OPTIONS, *cls.OPTIONS}
    for option in sorted(set(spec) - known):
      options = ', '.join(sorted(known))
      problems.append(f'{where}.{option}: not an option of type {kind!r} ({options})')
    problems.append(cv.check_int(f'{where}.every_epochs', spec['every_epochs'], 0))
    if not isinstance(spec['at_end'], bool):
      problems.append(f'{where}.at_end: must be True or False, got {spec["at_end"]!r}')
    elif not spec['at_end'] and spec['every_epochs'] == 0:
      problems.append(f'{where}: never runs; set every_epochs > 0 or at_end=True')
    key = spec['results_key']
    if key in RESERVED_RESULTS_KEYS or key in keys:
      taken = keys.get(key, 'the training loop')
      problems.append(f'{where}.results_key: {key!r} is already used by {taken}')
    keys[key] = where
    problems += cls.check(name, spec)
    if spec.get('select') is True:
      selecting.append(name)
      if spec['split'] == 'test' or spec['every_epochs'] == 0:
        problems.append(
          f'{where}.select: the selecting evaluator runs during training (every_epochs > 0) '
          'on a split other than test'
        )
  if len(selecting) != 1:
    problems.append(
      f'config.evals: exactly one evaluator must have select=True, got {len(selecting)}'
      + (f' ({", ".join(selecting)})' if selecting else '')
    )
  return [p for p in problems if p]


def add_peers_protocol(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds `test_every_epoch`: the test split every epoch, reported as the peers' protocol.

  Published comparisons often report the best test epoch; this reports it beside (never
  instead of) the validation-selected checkpoint (`attributes.PEERS_LABEL`). An empty
  `config.evals` is declared as `default_evals` first.

  Args:
    config: the run config, changed in place (unlocked by the caller if locked).

  Returns:
    The same config.
  """
  if not config.evals:
    config.evals = default_evals(config)
  config.evals.test_every_epoch = dict(
    type='attributes', split='test', every_epochs=config.eval.every_epochs, peers_protocol=True
  )
  return config


def selection_metric(config: ml_collections.ConfigDict) -> str:
  """The logged metric that picks the best checkpoint, e.g. 'val/map_voc'."""
  (name,) = [n for n, spec in declared(config).items() if spec.get('select') is True]
  return f'{name}/{attributes.metric_key(config.eval)}'


def create(
  ctx: common.Context, specs: dict[str, dict[str, Any]] | None = None
) -> dict[str, common.Evaluator]:
  """Builds evaluators, in the order given.

  Args:
    ctx: the run's `Context`.
    specs: {name: declared options}; default the config's (`declared`).

  Returns:
    {name: evaluator}.
  """
  specs = declared(ctx.config) if specs is None else specs
  return {n: EVALUATORS[s['type']](n, resolve(n, s), ctx) for n, s in specs.items()}
