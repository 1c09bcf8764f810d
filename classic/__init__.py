"""Classic (tabular and control) meta-RL in PyTorch: task distributions, baselines, meta-learners."""
