"""Training: the loop, distributed set-up, checkpoints, logging and optimisers."""
