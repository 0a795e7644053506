"""The encoder contract and the encoder registry: ``config.model.encoder.name`` picks the backbone.

An encoder is a flax ``nn.Module`` registered under a name (``@register_encoder('vit')``), found by discovery
(every module of ``mim_jax.models`` is imported on first lookup; an encoder defined elsewhere registers when its
module is imported). It provides:

* ``from_config(cfg, *, dtype, attention_impl, remat, **overrides)`` (classmethod): the module from the
  ``config.model.encoder`` block and the run's precision/attention/remat settings (an encoder ignores those that do
  not apply to it);
* ``__call__(inputs, *, deterministic=True, ...) -> dict``: the **feature contract** (:data:`FEATURE_KEYS`):

  ``cls``           ``[B, D]`` the class token after the final norm, or None for encoders without one (ConvNets)
  ``patch_tokens``  ``[B, N, D]`` one feature per token / position, in raster order
  ``pooled``        ``[B, D]`` the mean over positions (what global-pool heads and the 'pooled' probe read)
  ``feature_map``   ``[B, h, w, C]`` ConvNets' last stage (optional)
  ``tokens``        the full token sequence in the encoder's own layout (optional; what its decoders take)

  Every consumer (probes, k-NN, monitors, feature export, the fine-tune classifier) reads these keys and never
  indexes tokens itself, so where an encoder keeps its CLS token (first, last, none) is its own business;
* ``num_layers`` and ``layer_id(names) -> int`` for layer-wise lr decay: 0 for the embeddings, ``i + 1`` for
  block ``i``, ``num_layers`` for everything after the last block (final norm, heads);
* ``for_finetuning(*, drop_path, pooled, dtype, remat)``: the same architecture set up for fine-tuning
  (``pooled=True``: the classifier reads ``pooled`` and applies its own norm).
"""

from __future__ import annotations

from typing import Any

from mim_jax.utils.registry import Registry

ENCODERS = Registry('encoder', 'mim_jax.models', skip=('encoders',),
                    hint=' (config.model.encoder.name; an encoder registers itself with @register_encoder)')
register_encoder = ENCODERS.register

FEATURE_KEYS = ('cls', 'patch_tokens', 'pooled', 'feature_map', 'tokens')
DEFAULT_ENCODER = 'vit'


def encoder_names() -> list[str]:
  return ENCODERS.names()


def module_fields(cls, cfg, what: str, **runtime: Any) -> dict[str, Any]:
  """The keyword arguments of a dataclass encoder module from a ``config.model.encoder`` block (None fields
  dropped, lists as tuples) and the run's settings; unknown settings are a one-line error naming ``what``."""
  import dataclasses

  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(cfg or {}).items() if v is not None}
  fields.update(runtime)
  known = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f'unknown encoder setting(s) {unknown} for {what}; known: {sorted(known)}.')
  return fields


def build_encoder(cfg, **runtime: Any):
  """The encoder named by ``cfg.name`` (default 'vit') built from the rest of ``cfg`` and ``runtime`` settings."""
  fields = dict(cfg or {})
  name = fields.pop('name', None) or DEFAULT_ENCODER
  return ENCODERS.get(name).from_config(fields, **runtime)
