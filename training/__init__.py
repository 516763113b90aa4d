"""Training runs, evaluations and checkpoints; ``engine/`` is the pure-torch core."""
