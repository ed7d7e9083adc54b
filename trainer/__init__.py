"""Training and fine-tuning Pengi.

Entry points: `pengi-search train` (also as `python -m trainer`) with `train init` (labels CSV -> manifests and a
config from a recipe, `trainer.recipes`) and `train export` (a checkpoint -> a model directory, `trainer.export`),
and as functions `trainer.run.train` (a run that returns the model) and `trainer.dry_run.dry_run_report`.
The package itself imports nothing, so that reading manifests does not load the model code.
"""
