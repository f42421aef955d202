"""Training (notebook 03): one setup, one optimiser step, the epoch loop."""
