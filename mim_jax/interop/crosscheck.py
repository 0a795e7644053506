"""Checks this install against timm and Hugging Face transformers: ``python -m mim_jax.interop.crosscheck``.

Builds small randomly initialised PyTorch models locally (no downloads), converts them to mim_jax, runs both, and
prints the largest difference of every output; then exports back and checks that PyTorch reproduces its outputs.
Exits non-zero when any difference exceeds its tolerance. Needs torch, timm and transformers (``pip install -e
.[torch]``); the same comparisons run as tests with ``pytest -m torch``.
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np

TOL = 1e-5


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _randomize(torch, model):
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))


def check_timm(torch, timm, tmp: str, global_pool: str) -> list[tuple[str, float, float]]:
  from safetensors.torch import load_file

  from mim_jax import interop
  from mim_jax.interop.features import features
  from mim_jax.weights.tensors import write_tensors
  from mim_jax.interop.timm_vit import timm_model_kwargs

  torch.manual_seed(0)
  kw = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5, global_pool=global_pool)
  model = timm.create_model('vit_base_patch16_224', pretrained=False, **kw).eval()
  _randomize(torch, model)
  images = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    tokens = model.forward_features(x)
    pre, logits = model.forward_head(tokens, pre_logits=True).numpy(), model.forward_head(tokens).numpy()
  src = write_tensors(f'{tmp}/timm_{global_pool}.safetensors',
                      {k: v.numpy() for k, v in model.state_dict().items()})
  ckpt = interop.load(src, 'timm', num_heads=4)
  f = features(ckpt, images)
  ours_pre = f['cls'] if global_pool == 'token' else f['pooled']
  head = ckpt.params['head']
  rows = [(f'timm[{global_pool}] tokens', _max_diff(np.concatenate([f['cls'][:, None], f['patch_tokens']], 1),
                                                   tokens.numpy()), TOL),
          (f'timm[{global_pool}] pre-logits', _max_diff(ours_pre, pre), TOL),
          (f'timm[{global_pool}] logits', _max_diff(ours_pre @ head['kernel'] + head['bias'], logits), TOL)]
  dst = f'{tmp}/back_{global_pool}.safetensors'
  interop.save(ckpt, dst, 'timm')
  fresh = timm.create_model('vit_base_patch16_224', pretrained=False, **timm_model_kwargs(ckpt.spec)).eval()
  fresh.load_state_dict(load_file(dst), strict=True)
  with torch.no_grad():
    again = fresh.forward_head(fresh.forward_features(x)).numpy()
  rows.append((f'timm[{global_pool}] exported back: logits', _max_diff(again, logits), 0.0))
  return rows


def check_hf(torch, transformers, tmp: str) -> list[tuple[str, float, float]]:
  import jax
  import jax.numpy as jnp

  from mim_jax import interop
  from mim_jax.interop.pos_embed import sincos_with_cls
  from mim_jax.methods import Facts, build

  torch.manual_seed(0)
  config = transformers.ViTMAEConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=256, image_size=32, patch_size=8, decoder_hidden_size=32,
                                     decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
                                     decoder_intermediate_size=128, layer_norm_eps=1e-6, norm_pix_loss=True)
  model = transformers.ViTMAEForPreTraining(config).eval()
  _randomize(torch, model)
  with torch.no_grad():  # what published checkpoints hold (a fresh transformers-5 model holds zeros)
    model.vit.embeddings.position_embeddings.copy_(torch.from_numpy(sincos_with_cls(64, (4, 4))))
    model.decoder.decoder_pos_embed.copy_(torch.from_numpy(sincos_with_cls(32, (4, 4))))
  images = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
  noise = np.random.default_rng(1).random((4, 16)).astype(np.float32)

  def run_hf(m):
    with torch.no_grad():
      out = m(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), noise=torch.from_numpy(noise))
    return out.loss.numpy(), out.logits.numpy(), out.mask.numpy()

  loss, pred, mask = run_hf(model)
  model.save_pretrained(f'{tmp}/hf')
  ckpt = interop.load(f'{tmp}/hf', 'hf_vitmae')
  method = build(ckpt.spec.mae_config(config.mask_ratio), Facts.for_images(images.shape[1:]))
  info = method.masker.from_noise(jnp.asarray(noise))
  with jax.default_matmul_precision('highest'):
    out = jax.jit(method.forward)(jax.tree.map(jnp.asarray, ckpt.params), jnp.asarray(images), info)
  rows = [('hf_vitmae loss (relative)', _max_diff(out['loss'], loss) / abs(float(loss)), TOL),
          ('hf_vitmae prediction', _max_diff(out['pred'], pred), TOL),
          ('hf_vitmae mask', _max_diff(info.mask, mask), 0.0)]
  interop.save(ckpt, f'{tmp}/hf_back', 'hf_vitmae')
  back = transformers.ViTMAEForPreTraining.from_pretrained(f'{tmp}/hf_back').eval()
  rows.append(('hf_vitmae exported back: prediction', _max_diff(run_hf(back)[1], pred), 0.0))
  return rows


def main() -> int:
  try:
    import timm
    import torch
    import transformers
  except ImportError as e:
    print(f'needs torch, timm and transformers (pip install -e .[torch]): {e}')
    return 2
  print(f'torch {torch.__version__}, timm {timm.__version__}, transformers {transformers.__version__}')
  with tempfile.TemporaryDirectory() as tmp:
    rows = check_timm(torch, timm, tmp, 'token') + check_timm(torch, timm, tmp, 'avg') + check_hf(
        torch, transformers, tmp)
  bad = 0
  for name, diff, tol in rows:
    ok = diff <= tol
    bad += not ok
    print(f'  {"ok  " if ok else "FAIL"} {name:<40} max|diff| {diff:.2e}  tol {tol:.0e}')
  return 1 if bad else 0


if __name__ == '__main__':
  sys.exit(main())
