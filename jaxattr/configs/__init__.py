"""The run configs, installed with the package so they work from any directory.

Every recipe starts from `default.get_config()` and changes what its run needs;
`configs/<name>.py` at the repository root is the short path to each
(`--config=configs/wider.py`). A copy of one of these files, edited anywhere,
works as `--config=/path/to/copy.py`: it imports its base from the package.
"""
