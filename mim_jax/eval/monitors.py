"""Online monitors during pre-training, configured by a dict like big_vision's evaluators.

``config.monitors`` maps a name to a block with ``kind`` (default: the name) and ``every_steps``; :func:`build`
turns it into train-loop hooks ``monitor(step, state) -> dict[str, float]`` that run every ``every_steps`` (and
at the last step) and write to metrics.jsonl / TensorBoard as ``monitor/<name>/<key>``. Features come from the
method (``method.feature``) on the train state's own mesh, so nothing is gathered to one device.

Kinds (fields after ``every_steps``; defaults in parentheses):

* ``knn``: weighted k-NN top-1/top-5 of the frozen features of ``num_eval`` (500) eval-split images against
  ``num_train`` (1000) train-split images; ``k`` (20), ``temperature`` (0.07), ``feature`` ('cls' | 'pooled').
* ``least_squares``: closed-form ridge probe top-1/top-5 on the same kind of subsets; ``l2_reg`` (1e-3).
* ``reconstruction``: ``reconstruction_step{N}.png`` in the workdir (original | masked | prediction |
  prediction + visible) for the first ``num_images`` (8) eval images with fixed masks (``seed``), and the loss on
  them; only for methods that reconstruct pixels.
* ``val_loss``: the pre-training loss on a fixed batch of ``batch_size`` (256) eval-split images with a fixed
  rng (``seed``), so the masks are the same every time and the curve shows the model, not the masks.

Subsets are the method's eval batches (no augmentation), read once when the run starts. Example::

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

from mim_jax.eval import streaming
from mim_jax.methods.base import reconstructs
from mim_jax.utils.registry import Registry


class Monitor(Protocol):
  name: str
  every_steps: int

  def __call__(self, step: int, state: Any) -> dict[str, float]:
    ...


KINDS = Registry('monitor kind', hint=' (config.monitors.<name>.kind)')
register = KINDS.register


def kinds() -> list[str]:
  return KINDS.names()


def build(monitors_cfg: ml_collections.ConfigDict | None, *, method, config, workdir: str, mesh=None,
          rules=None) -> list[Monitor]:
  """Instantiates every configured monitor; an empty or missing block gives no monitors. ``mesh`` / ``rules``:
  where the train state lives (the train loop's run context)."""
  out = []
  shared = _SharedData(config, method, mesh, rules)
  for name, cfg in (monitors_cfg or {}).items():
    kind = cfg.get('kind', name)
    if kind not in KINDS:
      raise ValueError(f'config.monitors.{name}: unknown kind {kind!r}; available: {kinds()}.')
    every = cfg.get('every_steps', None)
    if not isinstance(every, int) or every < 1:
      raise ValueError(f'config.monitors.{name}.every_steps must be a positive int, got {every!r}.')
    out.append(KINDS.get(kind)(name=name, cfg=cfg, method=method, config=config, workdir=workdir, shared=shared))
  return out


def hooks_for(config, workdir: str) -> Callable:
  """``make_hooks`` for :func:`mim_jax.train.loop.train`: the config's monitors on the run's mesh."""

  def make_hooks(context):
    return build(config.get('monitors', None), method=context.objective, config=config, workdir=workdir,
                 mesh=context.mesh, rules=context.rules)

  return make_hooks


def _replicated(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


class _SharedData:
  """Eval subsets read once, and the features of the latest step (knn and least_squares share)."""

  def __init__(self, config, method, mesh, rules):
    self.config, self.method = config, method
    if mesh is None:
      from mim_jax.train import sharding as shd
      mesh = shd.make_mesh(-1, 1)
      rules = shd.DEFAULT_RULES
    self.mesh, self.rules = mesh, rules
    self._arrays: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    self._features: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    self._extractors: dict[str, streaming.FrozenFeatures] = {}

  def arrays(self, split: str, n: int) -> dict[str, np.ndarray]:
    from mim_jax.data import pipeline
    key = (split, int(n))
    if key not in self._arrays:
      self._arrays[key] = pipeline.eval_arrays(self.config.data, split=split, max_examples=int(n),
                                               fields=self.method.batch_fields(False),
                                               record_transform=self.method.record_transform)
    return self._arrays[key]

  def features(self, params, step: int, split: str, n: int, feature: str) -> tuple[np.ndarray, np.ndarray]:
    key = (step, split, int(n), feature)
    if key not in self._features:
      self._features = {k: v for k, v in self._features.items() if k[0] == step}  # keep only this step's
      if feature not in self._extractors:
        self._extractors[feature] = streaming.FrozenFeatures(self.method, params, self.mesh, self.rules, feature)
      self._features[key] = self._extractors[feature].arrays(self.arrays(split, n), 256, params=params)
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
    train = s.features(params, step, self.train_split, self.num_train, self.feature)
    test = s.features(params, step, self.eval_split, self.num_eval, self.feature)
    return (*train, *test)


@register('knn')
class KnnMonitor(_ProbeMonitor):
  def __call__(self, step: int, state) -> dict[str, float]:
    from mim_jax.eval.knn import knn_classify
    out = knn_classify(*self._features(step, self.method.eval_params(state.params, state.extras)),
                       num_classes=self.num_classes,
                       k=int(self.cfg.get('k', 20)), temperature=float(self.cfg.get('temperature', 0.07)))
    return {f'monitor/{self.name}/{k}': v for k, v in out.items()}


@register('least_squares')
class LeastSquaresMonitor(_ProbeMonitor):
  def __call__(self, step: int, state) -> dict[str, float]:
    from mim_jax.eval.linear_probe import least_squares_probe
    out = least_squares_probe(*self._features(step, self.method.eval_params(state.params, state.extras)),
                              num_classes=self.num_classes,
                              l2_reg=float(self.cfg.get('l2_reg', 1e-3)))
    return {f'monitor/{self.name}/{k}': v for k, v in out.items()}


@register('reconstruction')
class ReconstructionMonitor:
  def __init__(self, *, name, cfg, method, config, workdir, shared: _SharedData):
    if not reconstructs(method):
      raise ValueError(f'config.monitors.{name}: method {method.name!r} does not reconstruct pixels; remove '
                       'this monitor.')
    self.name, self.every_steps = name, int(cfg.every_steps)
    self.method, self.workdir, self.config, self.shared = method, workdir, config, shared
    self.images = shared.arrays(config.data.eval_split, int(cfg.get('num_images', 8)))['image']
    self.rng = jax.random.PRNGKey(int(cfg.get('seed', 0)))
    self._fn = None

  def __call__(self, step: int, state) -> dict[str, float]:
    import flax.linen as nn

    from mim_jax.data import pipeline
    from mim_jax.eval.visualize import reconstruction_figure
    mesh = self.shared.mesh
    if self._fn is None:
      self._fn = jax.jit(lambda p, x: self.method.reconstruct(p, x, self.rng), out_shardings=_replicated(mesh))
    with nn.logical_axis_rules(self.shared.rules), jax.set_mesh(mesh):
      out = jax.device_get(self._fn(self.method.eval_params(state.params, state.extras), self.images))
    if jax.process_index() == 0:
      info = pipeline.dataset_info(self.config.data)
      path = os.path.join(self.workdir, f'reconstruction_step{step}.png')
      reconstruction_figure(self.images, np.asarray(out['pred_images']), np.asarray(out['mask_images']), path,
                            mean=info.mean, std=info.std, title=f'{self.method.name} step {step}')
    return {f'monitor/{self.name}/loss': float(out['loss'])}


@register('val_loss')
class ValLossMonitor:
  """The pre-training loss of the train state (params and extras) on a fixed eval batch with a fixed rng. The
  batch is the method's train fields: eval-transformed images for methods with the default transform, else the
  method's own train transform with a fixed seed (its views or clips are then the same every time)."""

  def __init__(self, *, name, cfg, method, config, workdir, shared: _SharedData):
    del workdir
    from mim_jax.data import pipeline
    from mim_jax.methods.base import Objective
    self.name, self.every_steps = name, int(cfg.every_steps)
    self.method, self.shared = method, shared
    own_transform = type(method).record_transform is not Objective.record_transform
    data = pipeline.eval_arrays(config.data, split=config.data.eval_split, max_examples=int(cfg.get('batch_size', 256)),
                                fields=method.batch_fields(True), record_transform=method.record_transform,
                                train=own_transform, seed=int(cfg.get('seed', 0)))
    self.batch = {k: data[k] for k in method.batch_fields(True)}
    self.rng = jax.random.PRNGKey(int(cfg.get('seed', 0)))
    self._fn = None

  def __call__(self, step: int, state) -> dict[str, float]:
    import flax.linen as nn
    mesh = self.shared.mesh
    if self._fn is None:
      def loss(p, e, batch, s):
        return self.method.loss_fn(p, e, batch, self.rng, s)[0].astype(jnp.float32)
      self._fn = jax.jit(loss, out_shardings=_replicated(mesh))
    with nn.logical_axis_rules(self.shared.rules), jax.set_mesh(mesh):
      value = self._fn(state.params, state.extras, self.batch, jnp.asarray(step, jnp.int32))
    return {f'monitor/{self.name}/loss': float(value)}
