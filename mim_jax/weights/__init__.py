"""The mim_jax weight file and what describes it, below the methods so that anything (a frozen teacher, an
evaluation, a converter) can read it: :mod:`~mim_jax.weights.tensors` (flat tensor files: safetensors, ``.npz``,
``.pth``), :mod:`~mim_jax.weights.spec` (:class:`ModelSpec` / :class:`Checkpoint`: a param tree and the model it
runs in) and :mod:`~mim_jax.weights.file` (the mim_jax ``.safetensors`` checkpoint: tensors + the spec as
metadata). Converters from other formats are in :mod:`mim_jax.interop`."""
