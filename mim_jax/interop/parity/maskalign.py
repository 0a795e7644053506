"""Parity adapter for MaskAlign (OpenDriveLab/maskalign, ``models_pretrain.py``).

One step with random keep: ``ids_keep`` from ``draw/noise``, the teacher's normalized targets at CLS + ``ids_keep``
(``target/a``), the student's aligned head outputs (``student/a``), the loss and every student gradient (the
alignment matrix and heads included), plus the teacher's last-layer CLS attention averaged over heads
(``teacher_cls_attention``, the input of the attention keep). The teacher is a Hugging Face ``ViTModel``
(``input/teacher/<name>``, read by :mod:`mim_jax.interop.hf_vitmae`). mim_jax builds heads only for the levels with
a loss weight; the official gradients of the others must be zero, and are checked to be.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.interop import parity
from mim_jax.interop.hf_vitmae import from_hf
from mim_jax.interop.official_mae import from_official, to_official

HEADS = 'distill_heads.'
MATRIX = 'distill_weights'


def _student_from_official(state: dict, levels: tuple[int, ...]) -> dict:
  params = from_official({k: v for k, v in state.items() if not k.startswith((HEADS, MATRIX))})
  for a in levels:
    params[f'distill_heads_{a}'] = {'kernel': np.asarray(state[f'{HEADS}{a}.weight']).T,
                                    'bias': np.asarray(state[f'{HEADS}{a}.bias'])}
  if MATRIX in state:
    params[MATRIX] = np.asarray(state[MATRIX])
  return params


def _student_to_official(grads: dict, patch_size: int) -> dict:
  out = to_official({'encoder': grads['encoder']}, patch_size=patch_size)
  for name, value in grads.items():
    if name.startswith('distill_heads_'):
      a = name.split('_')[-1]
      out[f'{HEADS}{a}.weight'] = np.asarray(value['kernel']).T
      out[f'{HEADS}{a}.bias'] = np.asarray(value['bias'])
  if MATRIX in grads:
    out[MATRIX] = np.asarray(grads[MATRIX])
  return out


def check(fx: parity.Fixture) -> list[parity.Check]:
  from mim_jax.methods import Facts, build

  (images_nchw,), (noise,) = fx.need('inputs', 'images'), fx.need('draws', 'noise')
  ids_keep_ref, loss_ref, attention_ref = fx.need('outputs', 'ids_keep', 'loss', 'teacher_cls_attention')
  cfg = fx.config()
  images = jnp.asarray(images_nchw.transpose(0, 2, 3, 1))
  method = build(cfg, Facts.for_images(images.shape[1:]))
  levels = method.levels
  students_ref = fx.need('outputs', *[f'student/{a}' for a in levels])
  targets_ref = fx.need('outputs', *[f'target/{a}' for a in levels])
  params = jax.tree.map(jnp.asarray, _student_from_official(fx.params, levels))
  teacher_state = {k[len('teacher/'):]: v for k, v in fx.inputs.items() if k.startswith('teacher/')}
  teacher_all = from_hf(teacher_state, fx.meta.get('teacher_config'), pos_embed='learned').params['encoder']
  full = method.teacher.module(final_norm=False)

  def blocks_below(tree, depth):
    return {k: jax.tree.map(jnp.asarray, v) for k, v in tree.items()
            if k != 'norm' and not (k.startswith('blocks_') and int(k.split('_')[1]) >= depth)}

  teacher = blocks_below(teacher_all, method.teacher_encoder.depth)
  info = method.masker.from_noise(jnp.asarray(noise))
  with jax.default_matmul_precision('highest'):
    targets = jax.jit(method.teacher_targets)(teacher, images)
    attention = jax.jit(lambda p, x: full.apply({'params': p}, x, cls_attention=True)['cls_attention'])(
        blocks_below(teacher_all, full.depth), images)
  out, grads = parity.forward_and_grads(lambda p: method.forward(p, images, info, targets), params)
  checks = [
      parity.exact('ids_keep', info.ids_keep, ids_keep_ref),
      parity.activation('teacher_cls_attention', attention, attention_ref),
      *[parity.activation(f'target/{a}', out[f'target/{a}'], r) for a, r in zip(levels, targets_ref)],
      *[parity.activation(f'student/{a}', out[f'student/{a}'], r) for a, r in zip(levels, students_ref)],
      parity.loss('loss', out['loss'], loss_ref),
  ]
  ours = _student_to_official(jax.tree.map(np.asarray, grads), cfg.model.encoder.patch_size)
  unused = {k: v for k, v in fx.grads.items() if k.startswith(HEADS) and k not in ours}
  checks += [parity.Check(f'grad/{k} (a level without loss weight: zero)', float(np.max(np.abs(v))), 0.0)
             for k, v in sorted(unused.items())]
  return checks + parity.gradients(ours, {k: v for k, v in fx.grads.items() if k not in unused})
