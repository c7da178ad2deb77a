"""The run folder (workdir), one module per job.

layout   the name and path of every file in it; `RunError`; creating it
files    its JSON files: the saved config, attributes, thresholds, results
restore  which checkpoint, and its variables (Orbax partial restore)
logs     the run's log file, the quiet console, the metrics writer
lock     `run.lock`: one writer per folder
resume   config.json against a new config, and config_history.jsonl
"""
