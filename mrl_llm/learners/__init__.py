"""Meta-learners of the LLM side, registered on the platform (:data:`classic.registry.LEARNERS`)."""
