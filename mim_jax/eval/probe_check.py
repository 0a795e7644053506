"""Sanity numbers for the frozen-feature evaluators on scikit-learn digits, no pre-training needed.

  python -m mim_jax.eval.probe_check [--features pixels,random_vit] [--base-lrs 0.1,1,10] [--epochs 90]

Runs the LARS linear probe (for each base lr), the least-squares, logistic-regression and k-NN probes on
(a) raw pixels and (b) the CLS feature of a randomly initialised ViT (patch 4, width 128, depth 6: the digits
quickstart's encoder, two blocks deeper),
and prints a markdown table with the wall time of each probe. The split is sklearn's digits, 75/25 stratified,
seed 0; images are upsampled 8x8 -> 16x16 and standardized like the quickstart.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def digits_split():
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  x, y = load_digits(return_X_y=True)
  images = x.reshape(-1, 8, 8, 1).astype(np.float32) / 16.0
  images = images.repeat(2, axis=1).repeat(2, axis=2)  # 16x16, nearest
  images = (images - images.mean()) / images.std()
  return train_test_split(images, y.astype(np.int32), test_size=0.25, random_state=0, stratify=y)


def random_vit_features(train_images, test_images, seed: int = 0):
  from mim_jax.eval.features import extract_features
  from mim_jax.models.vit import ViTEncoder

  encoder = ViTEncoder(patch_size=4, width=128, depth=6, num_heads=4)
  params = encoder.init(jax.random.PRNGKey(seed), jnp.zeros((1, 16, 16, 1)))['params']

  def cls(x):
    return encoder.apply({'params': params}, x)['cls']

  return extract_features(cls, train_images, 256), extract_features(cls, test_images, 256)


def main(argv=None) -> None:
  from mim_jax.eval import knn, linear_probe

  parser = argparse.ArgumentParser(prog='python -m mim_jax.eval.probe_check')
  parser.add_argument('--features', default='pixels,random_vit')
  parser.add_argument('--base-lrs', default='0.1,1,10')
  parser.add_argument('--epochs', type=int, default=90)
  parser.add_argument('--batch-size', type=int, default=256)
  args = parser.parse_args(argv)

  xtr, xte, ytr, yte = digits_split()
  print(f'digits: {len(xtr)} train / {len(xte)} test, {jax.devices()[0].platform}')
  print('| features | probe | top-1 (%) | top-5 (%) | seconds |')
  print('| :--- | :--- | ---: | ---: | ---: |')
  for name in args.features.split(','):
    if name == 'pixels':
      ftr, fte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    elif name == 'random_vit':
      ftr, fte = random_vit_features(xtr, xte)
    else:
      raise ValueError(f'unknown features {name!r}')
    probes = [
      (
        f'lars base_lr={lr:g} ({args.epochs} ep, batch {args.batch_size})',
        linear_probe.train_linear_probe,
        dict(num_classes=10, epochs=args.epochs, batch_size=args.batch_size, base_lr=lr),
      )
      for lr in map(float, args.base_lrs.split(','))
    ]
    probes += [
      ('least squares', linear_probe.least_squares_probe, dict(num_classes=10)),
      ('logistic regression', linear_probe.logistic_regression_probe, {}),
      ('knn k=20 T=0.07', knn.knn_classify, dict(num_classes=10)),
    ]
    for probe, fn, kwargs in probes:
      t0 = time.perf_counter()
      res = fn(ftr, ytr, fte, yte, **kwargs)
      dt = time.perf_counter() - t0
      top1, top5 = 100 * res['top1'], 100 * res['top5']
      print(f'| {name} ({ftr.shape[1]}-d) | {probe} | {top1:.1f} | {top5:.1f} | {dt:.1f} |')


if __name__ == '__main__':
  main()
