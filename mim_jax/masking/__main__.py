"""Command line for the mask generators.

  python -m mim_jax.masking --list
  python -m mim_jax.masking --show NAME --out FILE.png [--grid 14] [--ratio R] [--seed S] [--set key=value ...]
  python -m mim_jax.masking --stats [--grid 14] [--ratio R] [--batch 512] [--seed S]

``--show`` draws a grid of sample masks (masked tokens dark) and writes it with matplotlib's Agg backend;
the title gives the settings, the visible count and the mean neighbour agreement (see ``ops``).
``--stats`` prints, for every generator (and every ColorMAE colour), the masked fraction, the neighbour
agreement against the same masks with their tokens shuffled, the mean number of connected masked groups
and the time of one jitted call (after compilation, fastest of 7) on the default device.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
from typing import Any

import jax
import numpy as np

from mim_jax.masking import ops
from mim_jax.masking.core import Grid
from mim_jax.masking.registry import build, get, names
from mim_jax.masking.video import VideoGrid


def describe(name: str) -> str:
  """One-line description: the class docstring's first line, else the module docstring's first line."""
  cls = get(name)
  doc = cls.__doc__ or ''
  if not doc or doc.startswith(cls.__name__ + '('):  # dataclass' generated signature, not a description
    doc = inspect.getmodule(cls).__doc__ or ''
  return doc.strip().splitlines()[0] if doc.strip() else ''


def parse_value(text: str) -> Any:
  """``--set`` values: Python literals (numbers, True/False/None, tuples) where they parse, else strings."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_settings(pairs: list[str]) -> dict[str, Any]:
  settings = {}
  for pair in pairs:
    if '=' not in pair:
      raise SystemExit(f'--set expects key=value, got {pair!r}')
    key, value = pair.split('=', 1)
    settings[key.strip()] = parse_value(value.strip())
  return settings


def parse_grid(text: str) -> Grid:
  if 'x' in text:
    h, w = text.lower().split('x')
    return Grid(int(h), int(w))
  return Grid(int(text), int(text))


def show(name: str, out: str, grid: Grid, settings: dict[str, Any], seed: int, rows: int, cols: int,
         frames: int = 8) -> str:
  """Draws ``rows x cols`` sample masks of generator ``name`` into ``out`` (a video generator: ``rows`` clips of
  ``frames`` frames); returns the title line."""
  if getattr(get(name), 'video', False):
    return show_video(name, out, grid, settings, seed, rows, frames)
  gen = build(name, grid, **settings)
  n = rows * cols
  info = jax.jit(gen, static_argnums=1)(jax.random.key(seed), n)
  mask = np.asarray(info.mask).reshape(n, grid.height, grid.width)
  agree = float(ops.neighbour_agreement(info.mask, grid).mean())
  ratio = 1.0 - gen.len_keep / grid.num_tokens
  shown = ', '.join(f'{k}={v}' for k, v in sorted(settings.items()))
  title = (f'{name}({shown})  grid {grid.height}x{grid.width}, {grid.num_tokens - gen.len_keep} masked '
           f'({ratio:.3f}), neighbour agreement {agree:.3f} (iid {ops.random_agreement(ratio):.3f})')
  _draw(mask.reshape(rows, cols, grid.height, grid.width), title, out, cell=1.3)
  return title


def _draw(masks: np.ndarray, title: str, out: str, cell: float) -> None:
  """``masks`` ``[rows, cols, h, w]`` (1 = masked, drawn dark) as a grid of panels under ``title``."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  rows, cols = masks.shape[:2]
  head = 0.35  # inches for the title
  fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows + head), squeeze=False)
  for (r, c), ax in np.ndenumerate(np.asarray(axes, dtype=object)):
    ax.imshow(1.0 - masks[r, c], cmap='gray', vmin=0.0, vmax=1.0, interpolation='nearest')
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(title, fontsize=6, y=1.0 - 0.1 * head / (cell * rows + head))
  fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1.0 - head / (cell * rows + head), wspace=0.08,
                      hspace=0.08)
  fig.savefig(out, dpi=80)
  plt.close(fig)


def show_video(name: str, out: str, grid: Grid, settings: dict[str, Any], seed: int, rows: int, frames: int) -> str:
  """``rows`` sample clips of a video mask generator, one frame per column (masked tokens dark)."""
  vgrid = VideoGrid(frames, grid.height, grid.width)
  gen = build(name, vgrid, **settings)
  info = jax.jit(gen, static_argnums=1)(jax.random.key(seed), rows)
  mask = np.asarray(info.mask).reshape(rows, frames, grid.height, grid.width)
  shown = ', '.join(f'{k}={v}' for k, v in sorted(settings.items()))
  title = (f'{name}({shown})  grid {frames}x{grid.height}x{grid.width} (frames x h x w), '
           f'{vgrid.num_tokens - gen.len_keep} of {vgrid.num_tokens} masked; rows: clips, columns: frames')
  _draw(mask, title, out, cell=1.0)
  return title


def stats_variants() -> list[tuple[str, str, dict[str, Any]]]:
  """(label, generator name, settings) for --stats: every generator's defaults, every ColorMAE colour."""
  out = []
  for name in names():
    if getattr(get(name), 'video', False):
      continue  # video token grids: --show draws them; the statistics here are per image
    if name == 'colormae':
      out += [(f'colormae:{c}', name, {'color': c}) for c in ('red', 'green', 'blue', 'purple')]
    elif name == 'gmml':
      out += [('gmml', name, {}), ('gmml:ellipse', name, {'shape': 'ellipse'})]
    else:
      out.append((name, name, {}))
  return out


def stats(grid: Grid, ratio: float | None, batch: int, seed: int) -> list[str]:
  """One table row per variant: masked fraction, neighbour agreement (mean, sd) vs shuffled, groups."""
  import time

  import scipy.ndimage

  lines = [f'{"generator":16s} {"masked":>7s} {"agree":>6s} {"(sd)":>6s} {"shuffled":>8s} {"groups":>7s}'
           f' {"shuffled":>8s} {"ms/batch":>9s}']
  for label, name, settings in stats_variants():
    if ratio is not None:
      settings = {**settings, 'ratio': ratio}
    gen = build(name, grid, **settings)
    fn = jax.jit(gen, static_argnums=1)
    mask = np.asarray(fn(jax.random.key(seed), batch).mask)
    times = []
    for i in range(7):  # the fastest of a few calls: robust to other processes sharing the CPU
      start = time.perf_counter()
      jax.block_until_ready(fn(jax.random.key(seed + 1 + i), batch))
      times.append(time.perf_counter() - start)
    ms = min(times) * 1e3
    shuffled = np.random.default_rng(seed).permuted(mask, axis=1)
    agree, agree_sh = ops.neighbour_agreement(mask, grid), ops.neighbour_agreement(shuffled, grid)

    def groups(m):
      return np.mean([scipy.ndimage.label(x.reshape(grid.height, grid.width))[1] for x in m.astype(bool)])

    lines.append(f'{label:16s} {mask.mean():7.3f} {agree.mean():6.3f} {agree.std():6.3f} {agree_sh.mean():8.3f}'
                 f' {groups(mask):7.1f} {groups(shuffled):8.1f} {ms:9.2f}')
  return lines


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m mim_jax.masking', description=__doc__.splitlines()[0])
  p.add_argument('--list', action='store_true', help='print the generator names with a description')
  p.add_argument('--show', metavar='NAME', help='draw sample masks of generator NAME')
  p.add_argument('--out', metavar='FILE.png', help='where --show writes its picture')
  p.add_argument('--grid', default='14', help='token grid: 14 or 14x10 (default 14)')
  p.add_argument('--ratio', type=float, default=None, help="mask ratio (default: the generator's own)")
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--stats', action='store_true', help='print mask statistics of every generator')
  p.add_argument('--batch', type=int, default=512, help='masks per generator for --stats')
  p.add_argument('--frames', type=int, default=8, help='frames (tubelets) of a video generator for --show')
  p.add_argument('--rows', type=int, default=3)
  p.add_argument('--cols', type=int, default=6)
  p.add_argument('--set', dest='settings', action='append', default=[], metavar='key=value',
                 help='generator setting, repeatable (e.g. --set color=red --set sigma=2.0)')
  args = p.parse_args(argv)
  if args.list:
    for name in names():
      print(f'{name:10s} {describe(name)}')
    return 0
  if args.stats:
    print('\n'.join(stats(parse_grid(args.grid), args.ratio, args.batch, args.seed)))
    return 0
  if args.show:
    if not args.out:
      p.error('--show needs --out FILE.png')
    settings = parse_settings(args.settings)
    if args.ratio is not None:
      settings['ratio'] = args.ratio
    try:
      title = show(args.show, args.out, parse_grid(args.grid), settings, args.seed, args.rows, args.cols,
                   args.frames)
    except ValueError as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
    print(f'wrote {args.out}: {title}')
    return 0
  p.print_help()
  return 1


if __name__ == '__main__':
  sys.exit(main())
