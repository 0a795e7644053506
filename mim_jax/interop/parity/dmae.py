"""Parity adapter for DMAE (UCSC-VLAA/DMAE, ``models_mae_distill.py`` and ``engine_distill.py``).

One distillation step: the teacher's masking from ``draw/noise`` (mask, ``ids_restore``, ``ids_keep``), the teacher's
hidden states at its distilled blocks on the visible tokens (``teacher_hidden/k``), the student's reconstruction
``pred``, the pixel loss, each pair's distance (``distill/k``), the total and every student gradient (projection
heads included). The teacher's weights are an input (``input/teacher/<official name>``, its encoder).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.interop import parity
from mim_jax.interop.official_mae import from_official, to_official

HEADS = 'aligned_feature_projection_heads.'


def _student_from_official(state: dict) -> dict:
  params = from_official({k: v for k, v in state.items() if not k.startswith(HEADS)})
  heads: dict = {}
  for key, value in state.items():
    if key.startswith(HEADS):
      k, leaf = key[len(HEADS):].split('.')
      heads.setdefault(f'head_{k}', {})['kernel' if leaf == 'weight' else 'bias'] = (
          np.asarray(value).T if leaf == 'weight' else np.asarray(value))
  params['heads'] = heads
  return params


def _student_to_official(grads: dict, patch_size: int) -> dict:
  out = to_official({'encoder': grads['encoder'], 'decoder': grads['decoder']}, patch_size=patch_size)
  for name, head in grads['heads'].items():
    k = name.split('_')[1]
    out[f'{HEADS}{k}.weight'] = np.asarray(head['kernel']).T
    out[f'{HEADS}{k}.bias'] = np.asarray(head['bias'])
  return out


def check(fx: parity.Fixture) -> list[parity.Check]:
  from mim_jax.methods import Facts, build

  (images_nchw,), (noise,) = fx.need('inputs', 'images'), fx.need('draws', 'noise')
  mask, ids_restore, ids_keep, pred, pix, loss = fx.need('outputs', 'mask', 'ids_restore', 'ids_keep', 'pred',
                                                         'pix_loss', 'loss')
  cfg = fx.config()
  n_pairs = len(cfg.dmae.teacher_layers)
  hidden_ref = fx.need('outputs', *[f'teacher_hidden/{k}' for k in range(n_pairs)])
  distill_ref = fx.need('outputs', *[f'distill/{k}' for k in range(n_pairs)])
  images = jnp.asarray(images_nchw.transpose(0, 2, 3, 1))
  method = build(cfg, Facts.for_images(images.shape[1:]))
  params = jax.tree.map(jnp.asarray, _student_from_official(fx.params))
  teacher_state = {k[len('teacher/'):]: v for k, v in fx.inputs.items() if k.startswith('teacher/')}
  teacher = from_official(teacher_state)['encoder']
  depth = method.teacher_encoder.depth
  teacher = {k: jnp.asarray(v) if not isinstance(v, dict) else jax.tree.map(jnp.asarray, v)
             for k, v in teacher.items()
             if k != 'norm' and not (k.startswith('blocks_') and int(k.split('_')[1]) >= depth)}
  info = method.masker.from_noise(jnp.asarray(noise))
  with jax.default_matmul_precision('highest'):
    hidden = jax.jit(method.teacher_hidden)(teacher, images, info)
  out, grads = parity.forward_and_grads(lambda p: method.forward(p, images, info, teacher), params)
  checks = [
      parity.exact('mask', info.mask, mask),
      parity.exact('ids_restore', info.ids_restore, ids_restore),
      parity.exact('ids_keep', info.ids_keep, ids_keep),
      *[parity.activation(f'teacher_hidden/{k}', h, r) for k, (h, r) in enumerate(zip(hidden, hidden_ref))],
      parity.activation('pred', out['pred'], pred),
      parity.loss('pix_loss', out['pix_loss'], pix),
      *[parity.loss(f'distill/{k}', out['distill'][k], r) for k, r in enumerate(distill_ref)],
      parity.loss('loss', out['loss'], loss),
  ]
  ours = _student_to_official(jax.tree.map(np.asarray, grads), cfg.model.encoder.patch_size)
  return checks + parity.gradients(ours, fx.grads)
