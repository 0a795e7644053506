"""MAE on the bundled digits dataset (scikit-learn's 1797 real 8x8 digits, upsampled to 16x16): the quickstart.

  python -m mim_jax.main --config=configs/mae/digits.py --workdir=workdirs/mae_digits

Pre-trains a small ViT (patch 4 -> a 4x4 token grid, width 128) with MAE's recipe scaled to the data
(mask 0.75, norm-pix MSE, AdamW 0.9/0.95, wd 0.05, warmup + cosine), then evaluates the frozen encoder
(linear probe, kNN, logistic regression) next to the same probes on a randomly initialised encoder, and
draws a reconstruction figure (6 min of CPU time for training on the 2-core box; see the README).
"""

from mim_jax.config import base_config
from mim_jax.data.pipeline import default_data_config


def get_config(arg: str | None = None):
  c = base_config()
  c.data = default_data_config('mim_digits')
  c.batch_size = 128
  c.total_steps = 2000
  c.warmup_steps = 50
  c.optimizer.base_lr = 1.5e-3
  c.model.encoder = dict(patch_size=4, width=128, depth=4, num_heads=4, mlp_ratio=4.0)
  c.model.decoder = dict(width=64, depth=2, num_heads=4, mlp_ratio=4.0)
  c.mask.ratio = 0.75
  c.checkpoint.every_steps = 500
  c.log_every = 50
  c.eval.max_train_examples = 2000
  # LARS moves each weight by ~lr x 0.001 of its norm per step: on 1.4k images (5 steps per epoch) the paper's
  # base_lr 0.1 leaves the head untrained; 10 at batch 256 is close to the paper's peak lr of 6.4 (docs/evaluation.md).
  c.eval.linear_probe = dict(epochs=90, batch_size=256, base_lr=10.0, warmup_epochs=10)
  if arg == 'tiny':  # a few seconds: used by the end-to-end tests
    c.total_steps = 6
    c.warmup_steps = 2
    c.batch_size = 16
    c.model.encoder = dict(patch_size=4, width=32, depth=1, num_heads=2, mlp_ratio=2.0)
    c.model.decoder = dict(width=16, depth=1, num_heads=2, mlp_ratio=2.0)
    c.checkpoint.every_steps = 2
    c.log_every = 2
    c.eval.linear_probe.epochs = 2
    c.eval.max_train_examples = 256
    c.eval.max_eval_examples = 128
  elif arg:
    raise ValueError(f"unknown argument {arg!r} for configs/mae/digits.py (use no argument or ':tiny').")
  return c
