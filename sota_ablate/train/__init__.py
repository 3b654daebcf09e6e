"""Training: the one-cycle schedule, the optimizer, the loop and evaluation."""
