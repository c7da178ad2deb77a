"""The peers' datasets and splits, from Rethinking_of_PAR's dataset files.

  python -m jaxattr.main --config=configs/peers.py:petazs --workdir=runs/petazs \
      --config.data.manual_dir=/path/to/PETA
  # A partition other than 0 of a five-partition file:
  python -m jaxattr.main --config=configs/peers.py:rap2 --workdir=runs/rap2_p2 \
      --config.data.manual_dir=/path/to/RAP2 --config.data.builder_config=part2

NAME (after ':') is one of `peta`, `petazs`, `pa100k`, `rap1`, `rap2`, `rapzs`;
a backbone name may follow (`configs/peers.py:rapzs,resnet50`). The manual dir
holds the file the peers' `format_*.py` wrote (`dataset_all.pkl`, or
`dataset_zs_run0.pkl` for `petazs` / `rapzs`) and the image folder beside it
(`images/`, `data/` or `RAP_dataset/`); `jaxattr/data/peers.py` describes both
and the builder configs (`part<p>`, `zs<k>`, `_allattr`, `_unknown`).

The recipe is PETA's ImageNet-pretrained one (`configs/peta.py`: Adam, lr 1e-4,
crops in [160, 224]) with 30 epochs, as jaxattr's PA-100K and RAP v2 recipes, from
the backbone's published ImageNet weights (`model.pretrained='published'`;
docs/pretrained.md).
Selection is on `validation` as everywhere in jaxattr (docs/protocol.md says how
the peers differ). The peers feed 256x192 (height x width) crops with their
pad-and-crop augmentation; these runs use PETA's square 224² unless the argument
`rethinking` gives them the peers' input (`configs/peers.py:pa100k,rethinking`).
"""

from jaxattr import schema

# PETA's recipe, the base of this one (configs/peta.py, loaded by its path).
peta = schema.load_recipe('peta')

# NAME -> (TFDS builder, builder config).
DATASETS = {
  'peta': ('peers_peta', 'part0'),
  'petazs': ('peers_peta', 'zs0'),
  'pa100k': ('peers_pa100k', 'part0'),
  'rap1': ('peers_rap1', 'part0'),
  'rap2': ('peers_rap2', 'part0'),
  'rapzs': ('peers_rap2', 'zs0'),
}


def get_config(arg: str | None = None):
  tokens = [t for t in (arg or '').split(',') if t]
  names = [t for t in tokens if t in DATASETS]
  if len(names) != 1:
    raise ValueError(
      f'configs/peers.py needs exactly one dataset name among its arguments, one of '
      f'{sorted(DATASETS)}; got {arg!r}.'
    )
  tokens.remove(names[0])
  config = peta.get_config()
  config.data.name, config.data.builder_config = DATASETS[names[0]]
  config.train.num_epochs = 30
  return schema.apply_args(config, ','.join(tokens))
