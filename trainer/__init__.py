"""Training and fine-tuning Pengi.

Entry points: `trainer.loop.run_training` (what `python -m trainer` and `pengi-search train` call),
`trainer.loop.train` (the same run as a function returning the model) and `trainer.dry_run.dry_run_report`.
The package itself imports nothing, so that reading manifests does not load the model code.
"""
