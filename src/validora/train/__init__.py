"""Training an adapter: the Trainer, its recipe, report, resume, prefix store and process group."""
