"""The reasoning side of MRT, in one place: the synthetic search task, math data, the answer
verifier, episodes of a reasoning trace, the meta-prover (a sampler: it continues a trace prefix
into an answer and measures how often it is right), the progress reward and MRT's advantages, and
the reasoning evaluation (accuracy against tokens, forced termination, regret)."""
