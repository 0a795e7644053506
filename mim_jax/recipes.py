"""Paper recipes as functions; the files in configs/ are thin wrappers around them."""

from mim_jax.config import base_config
from mim_jax.data.pipeline import default_data_config


def mae_in1k(variant: str, epochs: float, arg: str | None):
  """ImageNet-1k pre-training: mask 0.75, norm-pix, decoder 512x8x16, AdamW(0.9, 0.95) wd 0.05,
  blr 1.5e-4 at batch 4096 (lr 2.4e-3), 40 warmup epochs + cosine, RandomResizedCrop(224, 0.2-1) + flip.

  ``arg``: 'cpu' shrinks everything to a few steps on the bundled digits at 32x32 (same code path);
  'epochs=N' changes the schedule length (800 / 1600 in the paper)."""
  c = base_config()
  c.model.encoder = dict(variant=variant, mlp_ratio=4.0)
  c.epochs = epochs
  c.data = default_data_config('imagenet2012')  # set data.data_dir to where its ArrayRecord lives
  for part in (arg or '').split(','):
    if not part:
      continue
    if part == 'cpu':
      c.data = default_data_config('mim_digits')
      c.data.image_size = 32
      c.model.encoder = dict(patch_size=8, width=64, depth=2, num_heads=4, mlp_ratio=4.0)
      c.model.decoder = dict(width=32, depth=1, num_heads=4, mlp_ratio=4.0)
      c.batch_size = 16
      c.total_steps = 4
      c.warmup_steps = 1
      c.checkpoint.every_steps = 2
      c.log_every = 1
      c.eval.linear_probe.epochs = 2
      c.eval.max_train_examples = 256
      c.eval.max_eval_examples = 128
    elif part.startswith('epochs='):
      c.epochs = float(part.split('=', 1)[1])
    else:
      raise ValueError(f"unknown config argument {part!r}; use 'cpu' and/or 'epochs=N'.")
  return c
