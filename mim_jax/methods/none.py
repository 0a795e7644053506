"""Method 'none': the encoder alone, with nothing to pre-train.

What evaluations start from when there is no pre-training: the random-init baseline of an encoder MAE cannot build
(a ConvNet; a ViT with iLLaMA's causal mask, which is undefined over MAE's shuffled visible tokens), supervised
training from scratch (``finetune`` with ``random_init=True``) and imported weights. Any registered encoder works.

Its params are ``{'encoder': weights}`` plus, for encoders with BatchNorm, ``'encoder_batch_stats'``: the running
statistics the frozen encoder evaluates with. They sit in the params tree because this method never trains (its
loss refuses), so no optimizer ever sees them; fine-tuning moves them into its train state's extras.
"""

from __future__ import annotations

import flax.linen as nn

from mim_jax.methods.base import Method, register
from mim_jax.models.encoders import build_encoder

BATCH_STATS = 'encoder_batch_stats'


@register('none')
class NoPretraining(Method):
  class_tokens = ('first', 'last', 'none')  # only the feature contract is read

  def __init__(self, config, facts):
    super().__init__(config, facts)
    self.encoder = build_encoder(config.model.encoder, **self.module_settings())

  def init(self, rng, batch):
    variables = nn.meta.unbox(self.encoder.init({'params': rng, 'dropout': rng}, self.images(batch)))
    params = {'encoder': variables['params']}
    if 'batch_stats' in variables:
      params[BATCH_STATS] = variables['batch_stats']
    return params, {}

  def loss_fn(self, params, extras, batch, rng, step):
    raise ValueError("method 'none' has nothing to pre-train: use it for evaluation (random_init=True) and "
                     'fine-tuning from scratch, or pick a pre-training method (config.method).')

  def encoder_variables(self, params) -> dict:
    out = {'params': params['encoder']}
    if BATCH_STATS in params:
      out['batch_stats'] = params[BATCH_STATS]
    return out
