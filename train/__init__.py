"""Training: data pipeline, degradations, losses, discriminators and loops."""
