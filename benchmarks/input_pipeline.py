"""Input-pipeline throughput: decoded + augmented images per second per core at 224x224, ours vs a plain PIL loop.

    python benchmarks/input_pipeline.py [--num-images 300] [--image-size 224] [--json out.json]
    python benchmarks/input_pipeline.py --decode-costs   # re-measure transforms.DCT_DECODE_COST on this CPU

1. Makes `--num-images` realistic JPEGs (real photos shipped with scikit-learn / scikit-image / matplotlib,
   randomly cropped to ImageNet-typical sizes around 500x375 and re-encoded at quality 75-95; no network).
2. Converts them with `python -m mim_jax.data.prepare` into a tfds ArrayRecord dataset.
3. Times, in this one process and on the same files:
   - baseline: what a PyTorch user's loader does per image in a plain Python loop, written with PIL/numpy:
     `Image.open(path).convert('RGB')`, torchvision's RandomResizedCrop(scale 0.2-1, ratio 3/4-4/3, bicubic)
     as crop + resize, random horizontal flip, ToTensor (CHW float32 / 255), Normalize(mean, std), then the
     default collate (np.stack) into batches;
   - ours: `mim_jax.data.pipeline.train_iterator` on the ArrayRecord dataset (same crop/flip recipe), single
     process and single thread (`num_workers=0, read_threads=0`), per `--variants` entry `DECODER[:OUT]`:
     DECODER is 'pil_full' (PIL, full size), 'pil' (PIL draft), 'simplejpeg' / 'simplejpeg_fast' (if installed;
     M/8 DCT scaling); plain = float32 batches normalized on the host (the baseline's output, in NHWC);
     ':uint8' = uint8 batches as the trainer gets them with data.normalize_on_device (the accelerator then
     normalizes); ':canvas' = uint8 canvases + crop boxes as the trainer gets them with data.resize_on_device
     (the accelerator then resamples, flips and normalizes). The device work of ':uint8' / ':canvas' is timed
     separately, on this machine's jax backend (`device.preprocess` on one batch).
   Per-core throughput = images / CPU seconds of this process (robust when other jobs share the cores), the
   median over `--rounds` rounds in which the variants take turns (so they see the machine's load alike); wall
   time is reported too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


# ------------------------------------------------------------------------------------------------------------
# The baseline: a per-image Python loop as torchvision's transforms would run it (written with PIL + numpy).


def _rrc_params(width, height, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * random.uniform(*scale)
    aspect = math.exp(random.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return random.randint(0, height - h), random.randint(0, width - w), h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def baseline_transform(path: str, size: int) -> np.ndarray:
  img = Image.open(path).convert('RGB')
  i, j, h, w = _rrc_params(*img.size)
  img = img.crop((j, i, j + w, i + h)).resize((size, size), Image.Resampling.BICUBIC)
  if random.random() < 0.5:
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  # ToTensor: uint8 HWC -> CHW contiguous -> float / 255; Normalize in place: (x - mean) / std per channel,
  # the same array operations torchvision's transforms run on a tensor.
  x = np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)).astype(np.float32) / 255.0
  x -= MEAN[:, None, None]
  x /= STD[:, None, None]
  return x


class Baseline:
  """Per-image PIL/numpy loop, batches collated with np.stack (a torch DataLoader with num_workers=0)."""

  def __init__(self, files: list[str], size: int, batch: int):
    self.files, self.size, self.batch, self.pos = files, size, batch, 0
    random.seed(0)

  def step(self, num_images: int) -> int:
    done = 0
    while done < num_images:
      n = min(self.batch, num_images - done)
      np.stack([baseline_transform(self.files[(self.pos + k) % len(self.files)], self.size) for k in range(n)])
      self.pos += n
      done += n
    return done


# ------------------------------------------------------------------------------------------------------------
# Ours


class Ours:
  """`train_iterator` batches (float32 normalized, or uint8 for normalization on the device), single process
  and single thread."""

  def __init__(self, cfg, batch: int, out: str):
    from mim_jax.data import device_crop, pipeline

    cfg.normalize_on_device = out in ('uint8', 'canvas')
    cfg.resize_on_device = out == 'canvas'
    self.it = pipeline.train_iterator(cfg, batch, seed=0, allow_uint8_images=out != '')
    side = device_crop.default_canvas(cfg.image_size) if out == 'canvas' else cfg.image_size
    self.shape = (side, side, 3)
    self.dtype = np.float32 if out == '' else np.uint8

  def step(self, num_images: int) -> int:
    done = 0
    while done < num_images:
      b = next(self.it)
      assert b['image'].shape[1:] == self.shape and b['image'].dtype == self.dtype
      done += len(b['label'])
    return done

  def next_batch(self):
    return next(self.it)


def device_cost(variant: Ours, size: int, repeats: int = 5) -> dict[str, float | str]:
  """Wall time of `mim_jax.data.device.preprocess` on one of `variant`'s batches on jax's default device (the
  work data.normalize_on_device / resize_on_device move off the host), after compilation."""
  import jax

  from mim_jax.data import device, pipeline

  info = pipeline.DatasetInfo((size, size, 3), 0, 0, None, tuple(MEAN.tolist()), tuple(STD.tolist()))
  batch = {k: jax.device_put(v) for k, v in variant.next_batch().items()}
  device.preprocess(batch, info)['image'].block_until_ready()
  t = time.perf_counter()
  for _ in range(repeats):
    out = device.preprocess(batch, info)['image']
  out.block_until_ready()
  per_batch = (time.perf_counter() - t) / repeats
  n = len(batch['label'])
  return {'backend': jax.default_backend(), 'device': str(jax.devices()[0].device_kind), 'batch': n,
          'ms_per_batch': per_batch * 1e3, 'us_per_image': per_batch / n * 1e6}


def decode_costs(files: list[str], size: int) -> dict[str, dict[int, float] | float]:
  """CPU time of simplejpeg decoding at each M/8 scale relative to a full decode, and of PIL's bicubic resize
  per input-box pixel in units of a full decode per pixel: the constants `transforms.dct_eighths` uses."""
  import simplejpeg

  datas = [open(f, 'rb').read() for f in files]
  dims = [simplejpeg.decode_jpeg_header(d)[:2] for d in datas]
  pixels = sum(h * w for h, w in dims)
  per_pixel = {}
  for m in list(range(1, 9)) * 3:  # three passes, keep the fastest of each
    c = time.process_time()
    for d, (h, w) in zip(datas, dims):
      simplejpeg.decode_jpeg(d, colorspace='RGBX', min_width=math.ceil(w * m / 8), min_height=math.ceil(h * m / 8))
    per_pixel[m] = min(per_pixel.get(m, math.inf), (time.process_time() - c) / pixels)
  images = [Image.frombuffer('RGBX', (a.shape[1], a.shape[0]), a, 'raw', 'RGBX', 0, 1)
            for a in (simplejpeg.decode_jpeg(d, colorspace='RGBX') for d in datas)]
  resize = math.inf
  for frac in (0.6, 0.8, 1.0) * 2:
    c, box_pixels = time.process_time(), 0
    for img in images:
      bw, bh = img.size[0] * frac, img.size[1] * frac
      if min(bw, bh) >= size:
        img.resize((size, size), Image.Resampling.BICUBIC, box=(0, 0, bw, bh))
        box_pixels += bw * bh
    if box_pixels:
      resize = min(resize, (time.process_time() - c) / box_pixels)
  return {'decode_cost': {m: round(v / per_pixel[8], 2) for m, v in per_pixel.items()},
          'resize_cost_per_box_pixel': round(resize / per_pixel[8], 2),
          'psnr_db_vs_pil_full': decoder_psnr(datas, size)}


def decoder_psnr(datas: list[bytes], size: int) -> dict[str, dict[str, float]]:
  """PSNR of each decoder's RandomResizedCrop output against the plain full-size PIL decode + resize (the same
  boxes): what reduced-size and fast decoding cost in fidelity."""
  from mim_jax.data import transforms

  crop = transforms.RandomResizedCrop(size, scale=(0.2, 1.0))
  decoders = ['pil'] + (['simplejpeg', 'simplejpeg_fast'] if transforms.resolve_decoder('auto') == 'simplejpeg'
                        else [])
  psnr = {d: [] for d in decoders}
  for i, data in enumerate(datas):
    ref = np.asarray(crop(transforms.LazyImage(data, 'RGB', 'pil_full'), np.random.default_rng(i)), np.float64)
    for d in decoders:
      out = np.asarray(crop(transforms.LazyImage(data, 'RGB', d), np.random.default_rng(i)), np.float64)
      mse = np.mean((out - ref) ** 2)
      psnr[d].append(99.0 if mse == 0 else 10 * math.log10(255 ** 2 / mse))  # 99: identical
  return {d: {'median': round(float(np.median(v)), 1), 'p5': round(float(np.percentile(v, 5)), 1)}
          for d, v in psnr.items()}


def measure(variants: dict, images_per_round: int, rounds: int) -> dict[str, dict[str, float]]:
  """Runs the variants in turn, round after round, so that they share the machine's load alike."""
  rows: dict[str, list[tuple[int, float, float]]] = {k: [] for k in variants}
  for v in variants.values():
    v.step(64)  # warm-up: caches, the first epoch's permutation, lazy imports
  for _ in range(rounds):
    for name, v in variants.items():
      w0, c0 = time.perf_counter(), time.process_time()
      n = v.step(images_per_round)
      rows[name].append((n, time.process_time() - c0, time.perf_counter() - w0))
  out = {}
  for name, r in rows.items():
    cpu = np.array([c / n for n, c, _ in r])
    wall = np.array([w / n for n, _, w in r])
    out[name] = {'images': int(sum(n for n, _, _ in r)), 'rounds': len(r),
                 'img_per_s_per_core': float(1 / np.median(cpu)), 'img_per_s_per_core_best': float(1 / cpu.min()),
                 'img_per_s_wall': float(1 / np.median(wall))}
  return out


def _version(package: str) -> str | None:
  from importlib import metadata

  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--num-images', type=int, default=300, help='distinct JPEG files to generate')
  p.add_argument('--image-size', type=int, default=224)
  p.add_argument('--source-scale', type=float, default=1.0,
                 help='scale of the generated photos relative to ImageNet-typical sizes (2: ~1000x750)')
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--rounds', type=int, default=8, help='timed rounds; each variant runs once per round')
  p.add_argument('--images-per-round', type=int, default=128)
  p.add_argument('--variants', default=None,
                 help='comma-separated DECODER[:uint8|:canvas] entries for our pipeline (default: pil_full,pil'
                      '[,simplejpeg,simplejpeg:uint8,simplejpeg_fast:uint8,simplejpeg:canvas])')
  p.add_argument('--decode-costs', action='store_true',
                 help='only measure the M/8 decode and resize cost constants of transforms.dct_eighths')
  p.add_argument('--workdir', default=None, help='where to put the JPEGs and dataset (default: a temp dir)')
  p.add_argument('--json', default=None, help='also write the results to this JSON file')
  args = p.parse_args(argv)

  import tensorflow_datasets as tfds

  from mim_jax.data import pipeline, prepare, sample_images, transforms

  tfds.disable_progress_bar()
  tmp = None
  workdir = args.workdir or (tmp := tempfile.mkdtemp(prefix='mim_jax_bench_'))
  try:
    jpeg_dir = os.path.join(workdir, 'jpegs')
    t0 = time.perf_counter()
    stamp = os.path.join(workdir, 'jpegs.json')
    want = {'num_images': args.num_images, 'source_scale': args.source_scale}
    if not os.path.exists(stamp) or json.load(open(stamp)) != want:
      shutil.rmtree(jpeg_dir, ignore_errors=True)
      shutil.rmtree(os.path.join(workdir, 'tfds'), ignore_errors=True)
      sample_images.write_jpeg_folder(jpeg_dir, args.num_images, seed=0, size_scale=args.source_scale)
      with open(stamp, 'w') as f:
        json.dump(want, f)
    files = sorted(os.path.join(jpeg_dir, f) for f in os.listdir(jpeg_dir))
    sizes = np.array([Image.open(f).size for f in files])
    nbytes = np.array([os.path.getsize(f) for f in files])
    data_dir = os.path.join(workdir, 'tfds')
    prepare.prepare(jpeg_dir, data_dir, name='bench_photos', val_fraction=0.0, progress=False,
                    options=prepare.Options(compute_stats=False))
    print(f'{len(files)} JPEGs, mean size {sizes[:, 0].mean():.0f}x{sizes[:, 1].mean():.0f}, '
          f'mean {nbytes.mean() / 1024:.0f} KiB; setup {time.perf_counter() - t0:.1f} s; '
          f'{args.rounds} rounds x {args.images_per_round} images per variant, output {args.image_size}px')

    if args.decode_costs:
      costs = decode_costs(files, args.image_size)
      print(json.dumps(costs, indent=1))
      return 0
    if args.variants:
      specs = args.variants.split(',')
    else:
      specs = ['pil_full', 'pil']
      if transforms.resolve_decoder('auto') == 'simplejpeg':
        specs += ['simplejpeg', 'simplejpeg:uint8', 'simplejpeg_fast:uint8', 'simplejpeg:canvas']
    variants = {'baseline: PIL loop (open+convert, RRC, flip, ToTensor, normalize)':
                Baseline(files, args.image_size, args.batch)}
    for spec in specs:
      dec, _, out = spec.partition(':')
      if out not in ('', 'uint8', 'canvas'):
        p.error(f'bad variant {spec!r}: expected DECODER, DECODER:uint8 or DECODER:canvas')
      cfg = pipeline.default_data_config('bench_photos')
      cfg.data_dir = data_dir
      cfg.image_size = args.image_size
      cfg.num_workers = 0
      cfg.read_threads = 0
      cfg.decoder = dec
      cfg.mean, cfg.std = tuple(MEAN.tolist()), tuple(STD.tolist())
      name = f'mim_jax train_iterator, decoder={dec}, ' + {'': 'float32 out', 'uint8': 'uint8 out',
                                                            'canvas': 'canvas out (resize on device)'}[out]
      variants[name] = Ours(cfg, args.batch, out)
    results = measure(variants, args.images_per_round, args.rounds)
    device_costs = {}
    for name, v in variants.items():
      if isinstance(v, Ours) and v.dtype == np.uint8:
        device_costs[name] = device_cost(v, args.image_size)
  finally:
    if tmp:
      shutil.rmtree(tmp, ignore_errors=True)

  base = next(iter(results.values()))['img_per_s_per_core']
  width = max(len(k) for k in results)
  print(f"\n{'variant':{width}s}  {'img/s/core':>10s}  {'wall img/s':>10s}  {'speedup':>7s}")
  for k, r in results.items():
    r['speedup_vs_baseline'] = r['img_per_s_per_core'] / base
    print(f"{k:{width}s}  {r['img_per_s_per_core']:10.0f}  {r['img_per_s_wall']:10.0f}  "
          f"{r['speedup_vs_baseline']:6.2f}x")
  print('(img/s/core: images per CPU-second of this process, median over rounds; speedup: per core vs baseline)')
  for name, cost in device_costs.items():
    print(f"{name}: device.preprocess on the {cost['backend']} device ({cost['device']}) takes "
          f"{cost['ms_per_batch']:.2f} ms per batch of {cost['batch']} ({cost['us_per_image']:.1f} µs per image, wall)")
  load = os.getloadavg() if hasattr(os, 'getloadavg') else None
  if load:
    print(f'load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs')
  if args.json:
    meta = {'command': 'python benchmarks/input_pipeline.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
            'num_images': args.num_images, 'source_scale': args.source_scale, 'image_size': args.image_size,
            'batch': args.batch,
            'rounds': args.rounds, 'images_per_round': args.images_per_round, 'python': sys.version.split()[0],
            'machine': platform.machine(), 'cpu_count': os.cpu_count(), 'pillow': Image.__version__,
            'simplejpeg': _version('simplejpeg'), 'cpu': _cpu_model(),
            'mean_image_size': sizes.mean(0).round().tolist(), 'mean_kib': round(float(nbytes.mean() / 1024), 1),
            'load_average_end': list(load) if load else None}
    with open(args.json, 'w') as f:
      json.dump({'meta': meta, 'results': results, 'device_preprocess': device_costs}, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
