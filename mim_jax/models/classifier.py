"""An encoder with a classification head: what fine-tuning and supervised training from scratch train.

The head reads the encoder's feature contract (:mod:`mim_jax.models.encoders`), never its token layout:

* ``global_pool=True``: the ``pooled`` feature, normalized by ``fc_norm`` (LayerNorm, eps 1e-6) when
  ``fc_norm=True`` (MAE's fine-tune recipe; its encoder then skips its own final norm); a ConvNet's pooled feature
  goes to the head as it is (``fc_norm=False``: timm's ResNet and ConvNeXt heads, whose norm the encoder applies);
* ``global_pool=False``: the ``cls`` feature (the class token after the encoder's final norm; iLLaMA's is the last
  token).

The linear head's weights are ``trunc_normal(head_init_std)``, its bias 0.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.vit import EMBED


class Classifier(nn.Module):
  """Encoder + (``pooled`` feature [+ fc_norm] | ``cls`` feature) + linear head. Params: encoder, fc_norm, head."""

  encoder: nn.Module
  num_classes: int
  global_pool: bool = True
  head_init_std: float = 2e-5
  fc_norm: bool = True

  @nn.compact
  def __call__(self, images: jax.Array, deterministic: bool = True,
               soft_mask_rate: jax.Array | float | None = None) -> jax.Array:
    """Logits ``[B, num_classes]`` float32. ``soft_mask_rate``: iLLaMA's causal-mask rate, for an encoder with
    ``causal_mask='soft'``."""
    extra = {} if soft_mask_rate is None else {'soft_mask_rate': soft_mask_rate}
    out = self.encoder(images, deterministic=deterministic, **extra)
    if self.global_pool:
      x = out['pooled']
      if self.fc_norm:
        x = nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, use_fast_variance=False,
                         scale_init=nn.with_logical_partitioning(nn.initializers.ones, (EMBED,)),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (EMBED,)),
                         name='fc_norm')(x)
    else:
      if out.get('cls') is None:
        raise ValueError('this encoder has no CLS token: fine-tune it with global_pool=True.')
      x = out['cls']
    head_init = nn.initializers.truncated_normal(self.head_init_std)
    return nn.Dense(self.num_classes, dtype=jnp.float32,
                    kernel_init=nn.with_logical_partitioning(head_init, (EMBED, None)),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                    name='head')(x.astype(jnp.float32))
