"""MAE linear probing of a frozen pre-trained ViT on ImageNet-1k: the paper's recipe (He et al. 2022, A.2).

  python -m mim_jax.main --config=configs/eval/linear_probe.py:large --config.init=<pretrain workdir>

Arguments (comma-separated): ``base`` (default, ViT-B/16, 90 epochs), ``large`` (ViT-L/16, 50 epochs),
``huge`` (ViT-H/14, 50 epochs); ``cpu`` shrinks the run to a few local steps on cached features.

Protocol: features are the CLS token after the encoder's final norm, computed without masking; the head is
BatchNorm without affine (eps 1e-6) + a linear layer (std 0.01 init); LARS (momentum 0.9, trust 0.001, no
decay or trust ratio on 1-D params, lr applied after momentum), lr = base_lr * batch / 256, per-step warmup
then cosine; train aug RandomResizedCrop(224, bicubic) + horizontal flip, eval resize 256 + center crop 224.
The probe itself is mim_jax.eval.linear_probe (cached-feature path: train_linear_probe).

Wiring: the fields marked [trainer] are read by the evaluation driver in mim_jax.main, which loads
``init``, builds the encoder, streams the augmented data and feeds features to the probe step.
"""

import ml_collections
from ml_collections import config_dict

# model size -> (encoder variant, probe epochs, published linear-probe top-1 on ImageNet-1k, %)
_SIZES = {
  'base': ('base/16', 90, 68.0),
  'large': ('large/16', 50, 75.8),
  'huge': ('huge/14', 50, 76.6),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  tokens = [t.strip() for t in (arg or '').split(',') if t.strip()]
  unknown = [t for t in tokens if t not in (*_SIZES, 'cpu')]
  sizes = [t for t in tokens if t in _SIZES]
  if unknown or len(sizes) > 1:
    raise ValueError(f'bad argument {arg!r} for configs/eval/linear_probe.py; use one of {sorted(_SIZES)}, '
                     "optionally with ',cpu'")
  size = sizes[0] if sizes else 'base'
  variant, epochs, paper_top1 = _SIZES[size]

  c = ml_collections.ConfigDict()
  c.protocol = 'linear_probe'
  c.seed = 0
  c.init = config_dict.placeholder(str)  # [trainer] pre-training workdir or converted checkpoint to probe
  c.model = ml_collections.ConfigDict(dict(encoder=dict(variant=variant)))  # [trainer] must match `init`
  c.feature = 'cls'  # [trainer] CLS token after the final norm (the MAE protocol); 'pooled' = mean of patches

  c.data = ml_collections.ConfigDict(dict(  # [trainer]
    dataset='imagenet2012', train_split='train', eval_split='validation', num_classes=1000,
    image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD))
  c.train_augment = ml_collections.ConfigDict(dict(  # [trainer] MAE's linprobe: weak augmentation
    random_resized_crop=dict(size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation='bicubic'),
    horizontal_flip=True))
  c.eval_augment = ml_collections.ConfigDict(dict(  # [trainer]
    resize=dict(size=256, interpolation='bicubic'),  # shorter side
    center_crop=224))
  # [trainer] Cache features once: valid only without train augmentation (the fast path for small data).
  c.cache_features = False

  c.linear_probe = ml_collections.ConfigDict(dict(
    batch_size=16384,  # global batch; lr = base_lr * batch / 256 = 6.4
    base_lr=0.1,
    epochs=epochs,
    warmup_epochs=10,
    min_lr=0.0,
    optimizer='lars',
    momentum=0.9,
    trust_coefficient=0.001,
    weight_decay=0.0,
    bn_epsilon=1e-6,  # BatchNorm without affine before the linear layer
    head_init_std=0.01))
  c.knn = ml_collections.ConfigDict(dict(enabled=True, k=20, temperature=0.07))
  c.paper_top1 = paper_top1  # for the report: what the published number is

  if 'cpu' in tokens:
    c.linear_probe.batch_size = 256
    c.linear_probe.epochs = 2
    c.linear_probe.warmup_epochs = 1
    c.data.max_train_examples = 2048
    c.data.max_eval_examples = 512
    c.cache_features = True
    c.train_augment = ml_collections.ConfigDict(dict(random_resized_crop=None, horizontal_flip=False))
  return c
