"""MAE train-step throughput: mim_jax against Hugging Face `transformers`' ViTMAEForPreTraining, in one run.

    python benchmarks/train_step.py                         # ViT-Tiny/4@32 b128, ViT-S/16 b16, ViT-B/16 b8
    python benchmarks/train_step.py --models base16_224 --batch 8 --repeats 3 --json out.json
    python benchmarks/train_step.py --models base16_224,large16_224 --compute-dtype bfloat16 \\
        --attention cudnn --batch auto --frameworks jax      # on a GPU: the largest batch that fits

Each measurement runs in its own child process (clean peak RSS, its own thread settings), the frameworks
alternating within every repeat so that a change in machine load hits both sides alike:

* mim_jax: the library's own train step (`mim_jax.train.state.make_train_step`: masking, MAE forward/backward,
  AdamW with the reference's decay mask, non-finite guard), jitted with donation exactly as the train loop does,
  on a device-resident batch. Compile time = `lower().compile()`; memory = the compiled step's
  `memory_analysis()` (arguments + outputs + temporaries - donated aliases) and the process' peak RSS.
* baseline: `transformers.ViTMAEForPreTraining` with the same shapes, mask ratio 0.75, norm-pix loss, LayerNorm
  eps 1e-6, exact GELU, its default (SDPA) attention, `torch.optim.AdamW` (0.9, 0.95, wd 0.05 with the same
  decay mask), float32, `torch.set_num_threads` = the cores JAX uses; and the same model under `torch.compile`
  when that works here (a failure is reported, not hidden).

Per model: images/s and s/step (median of the timed steps after warm-up; the median over repeats), compile
time, memory, matrix-product FLOPs per step (counted from the jaxpr of our step, see benchmarks/flops.py), and
the achieved FLOP/s against this machine's matmul peak, measured in the same run with a large `jnp.dot`.
Process CPU time per step is printed too: it moves less than wall time when other jobs share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# name: image, patch, encoder (width, depth, heads), decoder (width, depth, heads), default batch.
# ViT-Tiny/4@32 uses a 4 x 192 decoder (the common CIFAR MAE recipe); the 224 models use MAE's 8 x 512 decoder.
MODELS = {
    'tiny4_32': dict(image=32, patch=4, enc=(192, 12, 3), dec=(192, 4, 3), batch=128, label='MAE ViT-Tiny/4@32'),
    'fashion7_28': dict(image=28, patch=7, enc=(128, 4, 4), dec=(64, 2, 4), batch=256,
                        label='MAE Fashion-MNIST recipe ViT/7@28'),
    'small16_224': dict(image=224, patch=16, enc=(384, 12, 6), dec=(512, 8, 16), batch=16,
                        label='MAE ViT-S/16@224'),
    'base16_224': dict(image=224, patch=16, enc=(768, 12, 12), dec=(512, 8, 16), batch=8,
                       label='MAE ViT-B/16@224'),
    'large16_224': dict(image=224, patch=16, enc=(1024, 24, 16), dec=(512, 8, 16), batch=8,
                        label='MAE ViT-L/16@224'),
    'huge14_224': dict(image=224, patch=14, enc=(1280, 32, 16), dec=(512, 8, 16), batch=8,
                       label='MAE ViT-H/14@224'),
}
DEFAULT_MODELS = 'tiny4_32,small16_224,base16_224'
MASK_RATIO = 0.75
CHANNELS = 3


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def pin_cores(threads: int | None) -> int:
  """Restricts this process to ``threads`` cores (so XLA's and torch's thread pools are the same size)."""
  cores = sorted(os.sched_getaffinity(0))
  if threads:
    if threads > len(cores):
      raise SystemExit(f'--threads {threads} exceeds the {len(cores)} cores available to this process.')
    cores = cores[:threads]
    os.sched_setaffinity(0, cores)
  return len(cores)


def timed_steps(step, warmup: int, steps: int) -> dict:
  for _ in range(warmup):
    step()
  wall, cpu = [], []
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(steps):
    t, c = time.perf_counter(), time.process_time()
    step()
    wall.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
  return {'s_per_step': statistics.median(wall), 's_per_step_min': min(wall),
          'cpu_s_per_step': statistics.median(cpu), 'page_faults_per_step': faults / steps, 'step_times': wall}


# ------------------------------------------------------------------------------------------------------------
# mim_jax


def jax_config(spec: dict, args):
  import ml_collections

  width, depth, heads = spec['enc']
  dwidth, ddepth, dheads = spec['dec']
  c = ml_collections.ConfigDict()
  c.method = 'mae'
  c.model = ml_collections.ConfigDict(dict(
      encoder=dict(patch_size=spec['patch'], width=width, depth=depth, num_heads=heads, mlp_ratio=4.0),
      decoder=dict(width=dwidth, depth=ddepth, num_heads=dheads, mlp_ratio=4.0)))
  c.mask = ml_collections.ConfigDict(dict(name='random', ratio=MASK_RATIO))
  c.norm_pix_loss = True
  c.compute_dtype = args.compute_dtype
  c.attention_impl = args.attention or library_default_attention()
  c.remat = args.remat
  c.optimizer = ml_collections.ConfigDict(dict(name='adamw', base_lr=1.5e-4, b1=0.9, b2=0.95, eps=1e-8,
                                               weight_decay=0.05, min_lr=0.0))
  try:  # MaskAlign (no decoder) is a variant of the same model: method=maskalign, with a teacher of the encoder's
    # size (random weights: they do not change the step's cost). Absent from libraries older than the method.
    from mim_jax.methods.maskalign import maskalign_defaults
  except ImportError:
    return c
  c.maskalign = maskalign_defaults()
  c.maskalign.teacher_model = dict(width=width, depth=depth, num_heads=heads)
  c.maskalign.loss_weights = f'top{max(1, round(depth * 5 / 12))}'  # the paper's top5 of 12 levels
  return c


def library_default_attention() -> str:
  """The attention_impl default of the mim_jax being benchmarked (a past commit's, under ab_step's rev=)."""
  from mim_jax.models import vit
  return vit.Attention.__dataclass_fields__['attention_impl'].default


def apply_overrides(config, overrides: dict | None):
  """Sets ``{'remat': 'dots', 'mask.ratio': 0.5, ...}`` on the benchmark config; an unknown key is an error."""
  config.lock()  # ml_collections then refuses keys the config does not have (with a did-you-mean hint)
  try:
    config.update_from_flattened_dict(dict(overrides or {}))
  except (KeyError, AttributeError) as e:
    hint = [line for line in str(e).strip('\'"').split('\\n') if line.startswith('Did you mean')]
    raise ValueError(f'unknown config key in {sorted(overrides)}; the benchmark config has: '
                     f'{sorted(config.keys())} (nested keys with dots, e.g. mask.ratio). {" ".join(hint)}') from None
  return config


def build_jax_step(spec: dict, batch: int, args, *, overrides: dict | None = None, devices=None,
                   compiler_options: dict | None = None, count: bool = True):
  """``(step, compiled, info)``: ``step()`` runs one jitted mim_jax train step on a device-resident batch and
  waits for it; ``info`` has the batch, compile time, memory and FLOPs (``count=False``: no FLOP count).
  ``overrides`` (config keys), ``devices`` (the mesh's) and ``compiler_options`` (extra XLA options) make the
  variants of benchmarks/ab_step.py. Also used by benchmarks/profile_step.py."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  sys.path.insert(0, HERE)
  from flops import count_flops

  from mim_jax import methods
  from mim_jax.train import optim
  from mim_jax.train import sharding as shd
  from mim_jax.train import state as state_lib

  image_shape = (spec['image'], spec['image'], CHANNELS)
  config = apply_overrides(jax_config(spec, args), overrides)

  def build(cfg):
    if hasattr(methods, 'Facts'):  # the method contract since Spine v2 (methods are built from facts)
      method = methods.build(cfg, methods.Facts.for_images(image_shape))
    else:  # an older commit's library (benchmarks/ab_step.py rev=)
      method = methods.build(cfg, image_shape)
    schedule = optim.warmup_cosine(optim.scaled_lr(1.5e-4, batch), total_steps=10_000, warmup_steps=100)
    tx = optim.make_optimizer(cfg.optimizer, schedule)
    return method, tx, schedule

  method, tx, schedule = build(config)
  mesh = shd.make_mesh(-1, 1, devices=devices)
  rules = shd.DEFAULT_RULES
  example = (method.example_batch(2) if hasattr(method, 'example_batch')  # older libraries took images
             else jnp.zeros((2, *image_shape), jnp.float32))
  init_fn = state_lib.make_init_fn(method, tx, example)
  rng = jax.random.PRNGKey(0)
  state, shardings = state_lib.create_sharded_state(init_fn, rng, mesh, rules)
  train_step = state_lib.make_train_step(method, tx, schedule)
  step_fn = state_lib.jit_train_step(train_step, shardings, mesh, rules, compiler_options)
  base_rng = jax.device_put(jax.random.PRNGKey(1), shd.replicated(mesh))

  # --batch auto sizes the step from the memory analyses of several compiles. On a GPU most of a compile is
  # XLA's autotuning of the matmul and fusion kernels (3+ minutes for ViT-B/16 on an H100), which a footprint
  # estimate does not need: 'quick' compiles skip it. The step that runs is always a full compile.
  quick_options = {'xla_gpu_autotune_level': 0} if mesh.devices.flat[0].platform == 'gpu' else None
  compiled_for = {}  # (batch, quick) -> (compiled step, compile seconds)

  def compile_for(b, quick=False):
    options = quick_options if quick else None  # added to the jit's own compiler options
    key = (b, options is not None)
    if key not in compiled_for:
      images = jax.ShapeDtypeStruct((b, *image_shape), jnp.float32, sharding=shd.batch_sharding(mesh))
      t0 = time.perf_counter()
      compiled = step_fn.lower(state, {'image': images}, base_rng).compile(compiler_options=options)
      compiled_for[key] = (compiled, time.perf_counter() - t0)
    return compiled_for[key][0]

  auto = None
  if not batch:
    batch, auto = largest_batch(compile_for, args.memory_fraction, mesh.size)
  shd.check_batch_divisible(batch, mesh)
  images = np.random.RandomState(0).standard_normal((batch, *image_shape)).astype(np.float32)
  batch_arrays = shd.global_batch({'image': images}, mesh)

  compiled = compile_for(batch)  # --batch auto's last full compile is this one: it is not compiled twice
  compile_s = compiled_for[(batch, False)][1]
  mem = footprint_bytes(compiled)
  mem_mib = mem / 2**20 if mem is not None else None

  flops = None
  if count:  # model FLOPs: the same step with XLA attention (a fused kernel hides its matmuls), no remat
    flop_cfg = apply_overrides(jax_config(spec, args), overrides)
    flop_cfg.attention_impl = 'xla'
    flop_cfg.remat = 'none'
    f_method, f_tx, f_schedule = build(flop_cfg)
    f_step = state_lib.make_train_step(f_method, f_tx, f_schedule)
    with nn.logical_axis_rules(rules), jax.set_mesh(mesh):
      flops = count_flops(f_step, state, batch_arrays, base_rng)

  holder = {'state': state}

  def step():
    holder['state'], metrics = compiled(holder['state'], batch_arrays, base_rng)
    jax.block_until_ready((holder['state'], metrics))
    holder['loss'] = metrics['train/loss']

  info = dict(batch=batch, auto_batch=auto, compile_s=compile_s, memory_analysis_mib=mem_mib, flops_per_step=flops,
              last_loss=lambda: float(holder['loss']))
  return step, compiled, info


def run_jax(spec: dict, batch: int, args) -> dict:
  import jax

  step, _, info = build_jax_step(spec, batch, args)
  result = timed_steps(step, args.warmup, args.steps)
  loss = info.pop('last_loss')()
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  result.update(**info, final_loss=loss,
                device_peak_mib=(stats or {}).get('peak_bytes_in_use', 0) / 2**20 or None,
                devices=f'{jax.device_count()} x {device.device_kind}', jax_version=jax.__version__)
  return result


def footprint_bytes(compiled) -> int | None:
  """Device memory a compiled step needs: arguments + outputs + temporaries - donated (aliased) buffers."""
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  return (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes)


def largest_batch(compile_for, fraction: float, devices: int, probes=(64, 128), multiple: int = 32,
                  limit: int | None = None):
  """The largest batch (a multiple of ``multiple`` x devices) whose compiled footprint fits ``fraction`` of the
  device memory (``limit`` bytes; default: what the first device reports).

  ``compile_for(batch, quick=False)`` returns a compiled step; a quick one may skip autotuning and is only used
  to estimate. The footprints of two quick probe batches give a line (memory is linear in the batch); the
  candidate it predicts is checked with quick compiles, stepping down by 10% until one fits, and then with a
  full compile, stepping down again if the full one needs more."""
  import jax

  limit = limit or (jax.devices()[0].memory_stats() or {}).get('bytes_limit')
  if not limit:
    raise ValueError('--batch auto needs an accelerator that reports its memory (memory_stats()["bytes_limit"]).')
  budget = fraction * limit
  step = multiple * devices
  b1, b2 = (p * devices for p in probes)
  m1, m2 = (footprint_bytes(compile_for(b, quick=True)) for b in (b1, b2))
  per_image = (m2 - m1) / (b2 - b1)
  fixed = m1 - per_image * b1
  batch = max(int((budget - fixed) / per_image) // step * step, step)
  tried = []
  for quick in (True, False):
    while True:
      need = footprint_bytes(compile_for(batch, quick=quick))
      tried.append((batch, need, 'quick' if quick else 'full'))
      if need <= budget or batch <= step:
        break
      batch = max(int(batch * 0.9) // step * step, step)
  return batch, {'limit_bytes': limit, 'budget_bytes': budget, 'per_image_bytes': per_image,
                 'fixed_bytes': fixed, 'tried': tried}


def run_matmul_peak(args) -> dict:
  """FLOP/s of a large square matmul in the dtype the models compute in (the utilization denominator)."""
  import jax
  import jax.numpy as jnp

  gpu = jax.devices()[0].platform != 'cpu'
  n = args.matmul_size or (8192 if gpu else 2048)
  dtype = jnp.dtype(args.compute_dtype)
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=dtype))
  res = timed_steps(lambda: jax.block_until_ready(f(a, b)), 3, 10 if not gpu else 50)
  return {'matmul_n': n, 'matmul_dtype': str(dtype), 'peak_flop_s': 2 * n**3 / res['s_per_step'],
          'peak_flop_s_best': 2 * n**3 / res['s_per_step_min']}


# ------------------------------------------------------------------------------------------------------------
# Hugging Face transformers baseline


def run_torch(spec: dict, batch: int, args, compile_model: bool) -> dict:
  import torch
  import transformers
  from transformers import ViTMAEConfig, ViTMAEForPreTraining

  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  device = torch.device(args.torch_device or ('cuda' if torch.cuda.is_available() else 'cpu'))
  width, depth, heads = spec['enc']
  dwidth, ddepth, dheads = spec['dec']
  cfg = ViTMAEConfig(image_size=spec['image'], patch_size=spec['patch'], num_channels=CHANNELS,
                     hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                     intermediate_size=4 * width, decoder_hidden_size=dwidth, decoder_num_hidden_layers=ddepth,
                     decoder_num_attention_heads=dheads, decoder_intermediate_size=4 * dwidth,
                     mask_ratio=MASK_RATIO, norm_pix_loss=True, layer_norm_eps=1e-6, hidden_act='gelu',
                     qkv_bias=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  model = ViTMAEForPreTraining(cfg).to(device).train()
  decay = [p for n, p in model.named_parameters() if p.ndim > 1 and not n.endswith('.bias')]
  no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and not n.endswith('.bias'))]
  opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.05}, {'params': no_decay, 'weight_decay': 0.0}],
                          lr=1.5e-4 * batch / 256, betas=(0.9, 0.95))
  images = torch.randn(batch, CHANNELS, spec['image'], spec['image'], device=device)
  amp = args.compute_dtype != 'float32'
  forward = torch.compile(model) if compile_model else model
  holder = {}

  def step():
    with torch.autocast(device.type, dtype=getattr(torch, args.compute_dtype), enabled=amp):
      loss = forward(pixel_values=images).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    holder['loss'] = loss.detach()
    if device.type == 'cuda':
      torch.cuda.synchronize()

  t0 = time.perf_counter()
  step()  # the first step compiles under torch.compile
  compile_s = time.perf_counter() - t0
  result = timed_steps(step, max(args.warmup - 1, 1), args.steps)
  result.update(compile_s=compile_s, final_loss=float(holder['loss']), threads=threads,
                attn_implementation=getattr(model.config, '_attn_implementation', None),
                torch_version=torch.__version__, transformers_version=transformers.__version__,
                device_peak_mib=(torch.cuda.max_memory_allocated() / 2**20) if device.type == 'cuda' else None)
  return result


# ------------------------------------------------------------------------------------------------------------
# Orchestration


def parse_batch(value: str) -> int:
  """A positive int, or 'auto' (0): the largest batch whose compiled step fits the device memory."""
  if value == 'auto':
    return 0
  if not value.isdigit() or int(value) < 1:
    raise argparse.ArgumentTypeError(f"--batch must be a positive int or 'auto', got {value!r}")
  return int(value)


def worker(args) -> None:
  threads = pin_cores(args.threads)
  if args.worker == 'jax' or (args.worker != 'matmul' and args.baseline_malloc_tuning):
    # What `python -m mim_jax.main` does first (mim_jax.perf); --baseline-malloc-tuning gives torch the same.
    from mim_jax import perf
    perf.tune_host_allocator()
  load = os.getloadavg()[0]
  spec = MODELS.get(args.model)
  try:
    if args.worker == 'matmul':
      result = run_matmul_peak(args)
    elif args.worker == 'jax':
      result = run_jax(spec, args.batch, args)
    else:
      result = run_torch(spec, args.batch, args, compile_model=args.worker == 'torch_compile')
    result['ok'] = True
  except Exception as e:  # reported in the table: a baseline that does not run here is a result too
    result = {'ok': False, 'error': f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}'}
  result.update(threads=threads, peak_rss_mib=peak_rss_mib(), load_before=load, load_after=os.getloadavg()[0])
  print('RESULT ' + json.dumps(result), flush=True)


def spawn(kind: str, args, model: str | None = None, batch: int | None = None) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), '--worker', kind, '--steps', str(args.steps),
         '--warmup', str(args.warmup), '--compute-dtype', args.compute_dtype, '--attention', args.attention,
         '--remat', args.remat, '--memory-fraction', str(args.memory_fraction)]
  cmd += ['--baseline-malloc-tuning'] if args.baseline_malloc_tuning else []
  for flag, value in (('--model', model), ('--batch', 'auto' if batch == 0 else batch), ('--threads', args.threads),
                      ('--matmul-size', args.matmul_size), ('--torch-device', args.torch_device)):
    if value:
      cmd += [flag, str(value)]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
  if not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {'ok': False, 'error': f'worker exited {proc.returncode}: ' + ' | '.join(tail)[:400]}
  return json.loads(lines[-1][len('RESULT '):])


def median_of(runs: list[dict], key: str):
  values = [r[key] for r in runs if r.get('ok') and r.get(key) is not None]
  return statistics.median(values) if values else None


def summarize(name: str, batch: int, runs: dict[str, list[dict]], peak: float | None) -> dict:
  rec = {'model': name, 'label': MODELS[name]['label'], 'batch': batch}
  for fw, fw_runs in runs.items():
    ok = [r for r in fw_runs if r.get('ok')]
    if not ok:
      rec[f'{fw}_error'] = next((r.get('error') for r in fw_runs), 'not run')
      continue
    s = median_of(ok, 's_per_step')
    rec[f'{fw}_s_per_step'] = s
    rec[f'{fw}_img_s'] = batch / s
    rec[f'{fw}_cpu_s_per_step'] = median_of(ok, 'cpu_s_per_step')
    rec[f'{fw}_compile_s'] = median_of(ok, 'compile_s')
    rec[f'{fw}_peak_rss_mib'] = median_of(ok, 'peak_rss_mib')
    rec[f'{fw}_page_faults_per_step'] = median_of(ok, 'page_faults_per_step')
    rec[f'{fw}_final_loss'] = ok[-1].get('final_loss')
    rec[f'{fw}_repeats_s_per_step'] = [r['s_per_step'] for r in ok]
    if fw != 'jax':
      rec[f'{fw}_attn_implementation'] = ok[-1].get('attn_implementation')
    for key in ('jax_version', 'torch_version', 'transformers_version'):
      if ok[-1].get(key):
        rec[key] = ok[-1][key]
  jax_ok = [r for r in runs.get('jax', []) if r.get('ok')]
  if jax_ok:
    rec['mim_jax_img_s'] = rec['jax_img_s']
    rec['flops_per_step'] = jax_ok[-1]['flops_per_step']
    rec['memory_analysis_mib'] = jax_ok[-1]['memory_analysis_mib']
    rec['device_peak_mib'] = jax_ok[-1].get('device_peak_mib')
    rec['devices'] = jax_ok[-1]['devices']
    rec['mim_jax_flop_s'] = rec['flops_per_step'] / rec['jax_s_per_step']
    if peak:
      rec['mim_jax_utilization'] = rec['mim_jax_flop_s'] / peak
    for fw in ('torch', 'torch_compile'):
      if f'{fw}_s_per_step' in rec:
        rec[f'{fw}_flop_s'] = rec['flops_per_step'] / rec[f'{fw}_s_per_step']
        if peak:
          rec[f'{fw}_utilization'] = rec[f'{fw}_flop_s'] / peak
    over = [k for k in rec if k.endswith('_utilization') and rec[k] is not None and rec[k] > 1.0]
    if over:  # not a real utilization: the denominator was measured under load
      for k in over:
        rec[k] = None
      rec['utilization_note'] = ('not shown: above 100% of the matmul peak, which was measured while the machine '
                                 'was busy; rerun on a quiet machine')
  if 'torch_img_s' in rec:
    rec['baseline_img_s'] = rec['torch_img_s']
  if 'mim_jax_img_s' in rec and 'baseline_img_s' in rec:
    rec['ratio'] = rec['mim_jax_img_s'] / rec['baseline_img_s']
  if 'mim_jax_img_s' in rec and 'torch_compile_img_s' in rec:
    rec['ratio_vs_compile'] = rec['mim_jax_img_s'] / rec['torch_compile_img_s']
  return rec


def fmt(x, spec='.2f', none='-'):
  return none if x is None else format(x, spec)


def print_table(records: list[dict], peak: dict, env: dict) -> None:
  print(f"\nmachine: {env['cpu']} | {env['threads']} threads | devices: {env.get('devices', '?')} | "
        f"compute {env['compute_dtype']}, attention {env['attention']}, remat {env['remat']} | "
        f"load {env['load_start']:.1f} -> {env['load_end']:.1f}")
  if peak.get('ok'):
    print(f"matmul peak ({peak['matmul_dtype']} {peak['matmul_n']}^3 jnp.dot): "
          f"{peak['peak_flop_s'] / 1e9:.1f} GFLOP/s")
  head = ('model', 'batch', 'GFLOP/step', 'mim_jax img/s', 's/step', 'cpu s', 'compile s', 'mem MiB (XLA/RSS)',
          'util', 'HF eager img/s', 's/step', 'util', 'HF compile img/s', 'vs eager', 'vs compile')
  rows = []
  for r in records:
    mem = f"{fmt(r.get('memory_analysis_mib'), '.0f')}/{fmt(r.get('jax_peak_rss_mib'), '.0f')}"
    rows.append((r['label'], str(r['batch']), fmt(r.get('flops_per_step', 0) / 1e9 or None, '.1f'),
                 fmt(r.get('jax_img_s'), '.1f'), fmt(r.get('jax_s_per_step'), '.3f'),
                 fmt(r.get('jax_cpu_s_per_step'), '.3f'), fmt(r.get('jax_compile_s'), '.1f'), mem,
                 fmt(r.get('mim_jax_utilization'), '.0%'),
                 fmt(r.get('torch_img_s'), '.1f', r.get('torch_error', '-')[:20]),
                 fmt(r.get('torch_s_per_step'), '.3f'), fmt(r.get('torch_utilization'), '.0%'),
                 fmt(r.get('torch_compile_img_s'), '.1f', (r.get('torch_compile_error') or '-')[:20]),
                 fmt(r.get('ratio'), '.2f') + ('x' if r.get('ratio') else ''),
                 fmt(r.get('ratio_vs_compile'), '.2f') + ('x' if r.get('ratio_vs_compile') else '')))
  widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
  print(' | '.join(h.ljust(w) for h, w in zip(head, widths)))
  print('-|-'.join('-' * w for w in widths))
  for row in rows:
    print(' | '.join(c.ljust(w) for c, w in zip(row, widths)))
  for r in records:
    for fw in ('jax', 'torch', 'torch_compile'):
      if r.get(f'{fw}_error'):
        print(f"note: {r['label']} {fw}: {r[f'{fw}_error']}")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--models', default=DEFAULT_MODELS, help=f'comma-separated, from {sorted(MODELS)}')
  p.add_argument('--batch', type=parse_batch, default=None,
                 help="batch for every model (default: per model); 'auto': the largest that fits (accelerators, jax)")
  p.add_argument('--memory-fraction', type=float, default=0.9, help='device memory --batch auto may use')
  p.add_argument('--steps', type=int, default=10, help='timed steps per measurement (>= 10 for the README)')
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--repeats', type=int, default=1, help='alternating repeats; the median is reported')
  p.add_argument('--frameworks', default='jax,torch,torch_compile')
  p.add_argument('--compute-dtype', default='float32', choices=('float32', 'bfloat16', 'float16'))
  p.add_argument('--attention', default='', choices=('', 'auto', 'einsum', 'cpu_fused', 'xla', 'cudnn'),
                 help="attention_impl (default: the library's default, 'auto')")
  p.add_argument('--remat', default='none')
  p.add_argument('--threads', type=int, default=None, help='cores for both sides (default: all available)')
  p.add_argument('--matmul-size', type=int, default=None)
  p.add_argument('--torch-device', default=None, help="'cpu' or 'cuda' (default: cuda when available)")
  p.add_argument('--baseline-malloc-tuning', action='store_true',
                 help='apply mim_jax.perf.tune_host_allocator() in the torch processes too (mim_jax always uses it)')
  p.add_argument('--timeout', type=float, default=1800, help='seconds per child process')
  p.add_argument('--json', default=None, help='write one record per model to this file')
  p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  p.add_argument('--model', default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    return worker(args)
  if args.steps < 1 or args.repeats < 1:
    p.error('--steps and --repeats must be >= 1')
  if args.batch == 0 and args.frameworks != 'jax':
    p.error("--batch auto sizes the jax step to the device memory: use it with --frameworks jax")
  models = [m.strip() for m in args.models.split(',') if m.strip()]
  unknown = [m for m in models if m not in MODELS]
  if unknown:
    p.error(f'unknown model(s) {unknown}; choose from {sorted(MODELS)}')
  frameworks = [f.strip() for f in args.frameworks.split(',') if f.strip()]
  bad = [f for f in frameworks if f not in ('jax', 'torch', 'torch_compile')]
  if bad:
    p.error(f'unknown framework(s) {bad}; use jax, torch, torch_compile')

  env = {'cpu': platform.processor() or platform.machine(), 'python': platform.python_version(),
         'threads': args.threads or len(os.sched_getaffinity(0)), 'compute_dtype': args.compute_dtype,
         'attention': args.attention or 'default', 'remat': args.remat, 'steps': args.steps, 'warmup': args.warmup,
         'repeats': args.repeats, 'baseline_malloc_tuning': args.baseline_malloc_tuning,
         'load_start': os.getloadavg()[0], 'command': ' '.join(sys.argv)}
  print(f"measuring matmul peak ({env['threads']} threads)...", flush=True)
  peak = spawn('matmul', args)
  # the fastest repeat: a peak measured while other jobs run is low, which would push utilization above 100%
  peak_flop_s = (peak.get('peak_flop_s_best') or peak.get('peak_flop_s')) if peak.get('ok') else None
  records = []
  for name in models:
    batch = MODELS[name]['batch'] if args.batch is None else args.batch
    runs: dict[str, list[dict]] = {fw: [] for fw in frameworks}
    for rep in range(args.repeats):
      for fw in frameworks:
        print(f'{name} batch {batch}: {fw} (repeat {rep + 1}/{args.repeats})...', flush=True)
        r = spawn(fw, args, name, batch)
        runs[fw].append(r)
        msg = (f"  {r.get('batch', batch) / r['s_per_step']:.1f} img/s, {r['s_per_step']:.3f} s/step, "
               f"load {r['load_after']:.1f}" if r.get('ok') else f"  failed: {r.get('error')}")
        print(msg, flush=True)
        if r.get('devices'):
          env['devices'] = r['devices']
    if batch == 0:  # auto: the batch the jax worker chose
      batch = next((r['batch'] for r in runs.get('jax', []) if r.get('ok')), 0)
    rec = summarize(name, batch, runs, peak_flop_s)
    rec['env'] = {**env, 'matmul_peak_flop_s': peak_flop_s}
    records.append(rec)
  env['load_end'] = os.getloadavg()[0]
  for rec in records:
    rec['env']['load_end'] = env['load_end']
  print_table(records, peak, env)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(records, f, indent=2)
    print(f'wrote {args.json}')


if __name__ == '__main__':
  main()
