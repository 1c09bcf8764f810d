"""Experiment kinds built on the one evaluator: ``compare`` (and sweeps over it)."""
