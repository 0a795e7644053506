"""Online monitors during pre-training, configured by a dict like big_vision's evaluators.

``config.monitors`` maps a name to a block with ``kind`` (default: the name) and ``every_steps``; :func:`build`
turns it into callables ``monitor(step, params) -> dict[str, float]`` that the train loop runs every
``every_steps`` (and at the last step) and writes to metrics.jsonl / TensorBoard as ``monitor/<name>/<key>``.

Kinds (fields after ``every_steps``; defaults in parentheses):

* ``knn``: weighted k-NN top-1/top-5 of the frozen features of ``num_eval`` (500) eval-split images against
  ``num_train`` (1000) train-split images; ``k`` (20), ``temperature`` (0.07), ``feature`` ('cls' | 'pooled').
* ``least_squares``: closed-form ridge probe top-1/top-5 on the same kind of subsets; ``l2_reg`` (1e-3).
* ``reconstruction``: ``reconstruction_step{N}.png`` in the workdir (original | masked | prediction |
  prediction + visible) for the first ``num_images`` (8) eval images with fixed masks (``seed``), and the loss on
  them; only for methods that reconstruct pixels.
* ``val_loss``: the pre-training loss on a fixed batch of ``batch_size`` (256) eval-split images with a fixed
  rng (``seed``), so the masks are the same every time and the curve shows the model, not the masks.

Images are eval-transformed (no augmentation), read once when the run starts. Example (the digits quickstart)::

  c.monitors = ml_collections.ConfigDict(dict(
      knn=dict(every_steps=100), val_loss=dict(every_steps=100), reconstruction=dict(every_steps=500)))
"""

from __future__ import annotations

import os
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mim_jax.eval.features import extract_features


class Monitor(Protocol):
  name: str
  every_steps: int

  def __call__(self, step: int, params: Any) -> dict[str, float]:
    ...


_KINDS: dict[str, Callable[..., Monitor]] = {}


def register(kind: str):
  def wrap(factory):
    _KINDS[kind] = factory
    return factory
  return wrap


def kinds() -> list[str]:
  return sorted(_KINDS)


def build(monitors_cfg: ml_collections.ConfigDict | None, *, method, config, workdir: str) -> list[Monitor]:
  """Instantiates every configured monitor; an empty or missing block gives no monitors."""
  out = []
  shared = _SharedData(config)
  for name, cfg in (monitors_cfg or {}).items():
    kind = cfg.get('kind', name)
    if kind not in _KINDS:
      raise ValueError(f'config.monitors.{name}: unknown kind {kind!r}; available: {sorted(_KINDS)}.')
    every = cfg.get('every_steps', None)
    if not isinstance(every, int) or every < 1:
      raise ValueError(f'config.monitors.{name}.every_steps must be a positive int, got {every!r}.')
    out.append(_KINDS[kind](name=name, cfg=cfg, method=method, config=config, workdir=workdir, shared=shared))
  return out


def _replicated_like(params):
  """A replicated sharding on the params' mesh (so outputs are readable on every host), or None."""
  leaf = jax.tree.leaves(params)[0]
  sharding = getattr(leaf, 'sharding', None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  return None


class _SharedData:
  """Eval-transformed subsets read once, and the features of the latest step (knn and least_squares share)."""

  def __init__(self, config):
    self.config = config
    self._arrays: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    self._features: dict[tuple, np.ndarray] = {}
    self._feature_fns: dict[str, Callable] = {}

  def arrays(self, split: str, n: int) -> dict[str, np.ndarray]:
    from mim_jax.data import pipeline
    key = (split, int(n))
    if key not in self._arrays:
      self._arrays[key] = pipeline.eval_arrays(self.config.data, split=split, max_examples=int(n))
    return self._arrays[key]

  def features(self, method, params, step: int, split: str, n: int, feature: str) -> np.ndarray:
    key = (step, split, int(n), feature)
    if key not in self._features:
      self._features = {k: v for k, v in self._features.items() if k[0] == step}  # keep only this step's
      if feature not in self._feature_fns:
        self._feature_fns[feature] = jax.jit(lambda p, x: method.encode(p, x)[feature].astype(jnp.float32),
                                             out_shardings=_replicated_like(params))
      fn = self._feature_fns[feature]
      self._features[key] = extract_features(lambda x: fn(params, x), self.arrays(split, n)['image'], 256,
                                             jit=False)
    return self._features[key]


class _ProbeMonitor:
  """Shared by ``knn`` and ``least_squares``: features of a train subset (fit) and an eval subset (score)."""

  def __init__(self, *, name, cfg, method, config, workdir, shared: _SharedData):
    del workdir
    self.name, self.every_steps = name, int(cfg.every_steps)
    self.method, self.shared, self.cfg = method, shared, cfg
    self.train_split, self.eval_split = config.data.train_split, config.data.eval_split
    self.num_train, self.num_eval = int(cfg.get('num_train', 1000)), int(cfg.get('num_eval', 500))
    self.feature = cfg.get('feature', 'cls')
    if self.feature not in ('cls', 'pooled'):
      raise ValueError(f"config.monitors.{name}.feature must be 'cls' or 'pooled', got {self.feature!r}.")
    train = shared.arrays(self.train_split, self.num_train)
    if np.all(train['label'] < 0):
      raise ValueError(f'config.monitors.{name}: the dataset has no labels; remove this monitor.')
    test = shared.arrays(self.eval_split, self.num_eval)
    self.num_classes = int(max(train['label'].max(), test['label'].max()) + 1)

  def _features(self, step, params):
    s = self.shared
    train = s.features(self.method, params, step, self.train_split, self.num_train, self.feature)
    test = s.features(self.method, params, step, self.eval_split, self.num_eval, self.feature)
    return (train, s.arrays(self.train_split, self.num_train)['label'], test,
            s.arrays(self.eval_split, self.num_eval)['label'])


@register('knn')
class KnnMonitor(_ProbeMonitor):
  def __call__(self, step: int, params) -> dict[str, float]:
    from mim_jax.eval.knn import knn_classify
    return knn_classify(*self._features(step, params), num_classes=self.num_classes, k=int(self.cfg.get('k', 20)),
                        temperature=float(self.cfg.get('temperature', 0.07)))


@register('least_squares')
class LeastSquaresMonitor(_ProbeMonitor):
  def __call__(self, step: int, params) -> dict[str, float]:
    from mim_jax.eval.linear_probe import least_squares_probe
    return least_squares_probe(*self._features(step, params), num_classes=self.num_classes,
                               l2_reg=float(self.cfg.get('l2_reg', 1e-3)))


@register('reconstruction')
class ReconstructionMonitor:
  def __init__(self, *, name, cfg, method, config, workdir, shared: _SharedData):
    from mim_jax.methods.base import Method
    if type(method).reconstruct is Method.reconstruct:
      raise ValueError(f'config.monitors.{name}: method {method.name!r} does not reconstruct pixels; remove '
                       'this monitor.')
    self.name, self.every_steps = name, int(cfg.every_steps)
    self.method, self.workdir, self.config = method, workdir, config
    self.images = shared.arrays(config.data.eval_split, int(cfg.get('num_images', 8)))['image']
    self.rng = jax.random.PRNGKey(int(cfg.get('seed', 0)))
    self._fn = None

  def __call__(self, step: int, params) -> dict[str, float]:
    from mim_jax.data import pipeline
    from mim_jax.eval.visualize import reconstruction_figure
    if self._fn is None:
      self._fn = jax.jit(lambda p, x: self.method.reconstruct(p, x, self.rng), out_shardings=_replicated_like(params))
    out = jax.device_get(self._fn(params, self.images))
    if jax.process_index() == 0:
      info = pipeline.dataset_info(self.config.data)
      path = os.path.join(self.workdir, f'reconstruction_step{step}.png')
      reconstruction_figure(self.images, np.asarray(out['pred_images']), np.asarray(out['mask_images']), path,
                            mean=info.mean, std=info.std, title=f'{self.method.name} step {step}')
    return {'loss': float(out['loss'])}


@register('val_loss')
class ValLossMonitor:
  def __init__(self, *, name, cfg, method, config, workdir, shared: _SharedData):
    del workdir
    self.name, self.every_steps = name, int(cfg.every_steps)
    self.method = method
    data = shared.arrays(config.data.eval_split, int(cfg.get('batch_size', 256)))
    self.batch = {'image': data['image'], 'label': data['label']}
    self.rng = jax.random.PRNGKey(int(cfg.get('seed', 0)))
    # Methods with state outside the params (EMA teachers) are scored with their initial state unless the
    # caller passes the current one.
    example = jnp.zeros((2, *data['image'].shape[1:]), jnp.float32)
    abstract_extras = jax.eval_shape(method.init, jax.random.PRNGKey(0), example)[1]
    self.initial_extras = abstract_extras
    if jax.tree.leaves(abstract_extras):
      import flax.linen as nn
      self.initial_extras = nn.meta.unbox(jax.jit(method.init)(jax.random.PRNGKey(0), example)[1])
    self._fn = None

  def __call__(self, step: int, params, extras=None) -> dict[str, float]:
    if self._fn is None:
      def loss(p, e, batch, s):
        return self.method.loss_fn(p, e, batch, self.rng, s)[0].astype(jnp.float32)
      self._fn = jax.jit(loss, out_shardings=_replicated_like(params))
    extras = self.initial_extras if extras is None else extras
    return {'loss': float(self._fn(params, extras, self.batch, jnp.asarray(step, jnp.int32)))}
