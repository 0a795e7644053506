"""Hand-written kernels for what XLA does not do well on some backend (see each module)."""
