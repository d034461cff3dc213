"""Training: the one trainer, optimizers, checkpoints and metrics."""
