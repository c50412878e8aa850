"""Training: the loop (loop.py) and what its stanzas share (session.py), the run's state on
disk (state.py), scores (evaluation.py), the divergence guard, experiment tracking and the
torchrun launcher."""
