"""Meta-learners: one file per algorithm, its config dataclass beside it."""
