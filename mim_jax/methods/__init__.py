"""Pre-training methods: one file each, found by discovery (see :mod:`mim_jax.methods.base` for the contract)."""

from mim_jax.methods.base import Facts, Method, Objective, build, eval_params_from_workdir, method_names, register

__all__ = ['Facts', 'Method', 'Objective', 'build', 'eval_params_from_workdir', 'method_names', 'register']
