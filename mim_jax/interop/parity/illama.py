"""Parity adapter for iLLaMA (techmonsterwang/iLLaMA, ``models/illama.py``): a supervised backbone, so the check
is one classifier forward/backward.

Builds the ViT with iLLaMA's options from the recorded config (CLS last, learned positions, RoPE-1D, RMSNorm,
SwiGLU, the soft causal mask) under :class:`~mim_jax.models.classifier.Classifier` reading the CLS feature, runs
``input/images`` at the recorded ``soft_mask_rate`` and compares the features (final norm, last token), the logits,
the cross-entropy with ``input/labels`` and every gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mim_jax.interop import parity
from mim_jax.interop.official_illama import RULES, from_official
from mim_jax.interop.parity import torch_names


def check(fx: parity.Fixture) -> list[parity.Check]:
  from mim_jax.models.classifier import Classifier
  from mim_jax.models.encoders import build_encoder

  images, labels = fx.need('inputs', 'images', 'labels')
  features_ref, logits_ref, loss_ref = fx.need('outputs', 'features', 'logits', 'loss')
  cfg = fx.config()
  encoder = build_encoder(cfg.model.encoder, attention_impl='auto')
  model = Classifier(encoder, int(cfg.num_classes), global_pool=False)
  x = jnp.asarray(images.transpose(0, 2, 3, 1))  # NCHW -> NHWC
  rate = float(cfg.soft_mask_rate)
  params = jax.tree.map(jnp.asarray, from_official(fx.params))

  def forward(p):
    features = encoder.apply({'params': p['encoder']}, x, soft_mask_rate=rate)['cls']
    logits = model.apply({'params': p}, x, soft_mask_rate=rate)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels)).mean()
    return {'features': features, 'logits': logits, 'loss': loss}

  out, grads = parity.forward_and_grads(forward, params)
  checks = [
      parity.activation('features (final RMSNorm, last token)', out['features'], features_ref),
      parity.activation('logits', out['logits'], logits_ref),
      parity.loss('loss', out['loss'], loss_ref),
  ]
  ours = torch_names.state_from_tree(jax.tree.map(np.asarray, grads), fx.grads, RULES, cfg.model.encoder.patch_size)
  return checks + parity.gradients(ours, fx.grads)
