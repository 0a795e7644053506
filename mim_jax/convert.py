"""Convert checkpoints between mim_jax, timm (ViT, ResNet, ConvNeXt), Hugging Face ViTMAE, the official MAE release
and the official iLLaMA release.

  python -m mim_jax.convert --from mae_official --to mim_jax mae_visualize_vit_base.pth vit_b.safetensors
  python -m mim_jax.convert --from mim_jax --to timm workdirs/mae_digits digits_vit.safetensors
  python -m mim_jax.convert --from mim_jax --to hf_vitmae vit_b.safetensors hf_vit_b/
  python -m mim_jax.convert --from timm --to timm --image-size 384 vit_b.safetensors vit_b_384.safetensors
  python -m mim_jax.convert --from timm --to mim_jax resnet50.safetensors resnet50_mim.safetensors
  python -m mim_jax.convert --from mim_jax --to mim_jax workdirs/convnets_fashion/resnet resnet_fashion.safetensors

SRC: a file (.safetensors; .pth/.pt/.bin need torch), a Hugging Face directory (hf_vitmae), or a mim_jax
pre-training or fine-tuning workdir (--from mim_jax). DST: a .safetensors / .pth file, or a directory for hf_vitmae.
See docs/interop.md for what each format holds and how to load the result in timm / transformers.
"""

from __future__ import annotations

import argparse
import sys


def _image_size(text: str) -> tuple[int, int]:
  try:
    parts = [int(v) for v in text.lower().replace('x', ',').split(',')]
  except ValueError:
    raise argparse.ArgumentTypeError(f'image size must be N or HxW, got {text!r}') from None
  if len(parts) == 1:
    parts = parts * 2
  if len(parts) != 2 or min(parts) < 1:
    raise argparse.ArgumentTypeError(f'image size must be N or HxW, got {text!r}')
  return parts[0], parts[1]


def build_parser() -> argparse.ArgumentParser:
  from mim_jax.interop.convert import SOURCES, TARGETS

  p = argparse.ArgumentParser(prog='python -m mim_jax.convert', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--from', dest='from_format', required=True, choices=SOURCES, help='format of SRC')
  p.add_argument('--to', dest='to_format', required=True, choices=TARGETS, help='format to write')
  p.add_argument('src')
  p.add_argument('dst')
  p.add_argument('--num-heads', type=int, default=None,
                 help='encoder attention heads (weights do not record them; default: the standard ViT of that width)')
  p.add_argument('--decoder-num-heads', type=int, default=None, help='MAE decoder heads (default: config or 16)')
  p.add_argument('--image-size', type=_image_size, default=None,
                 help='resize to this input resolution (N or HxW): learned position tables are resampled bicubically')
  p.add_argument('--source-image-size', type=_image_size, default=None,
                 help="SRC's training resolution, when its position table's grid is not square")
  p.add_argument('--pos-embed', choices=('auto', 'sincos', 'learned'), default='auto',
                 help="how to read SRC's position table: auto (sin-cos when it is MAE's, else learned)")
  p.add_argument('--learned-pos-embed', action='store_true',
                 help='store the sin-cos table as a learned one (resized bicubically, as MAE fine-tuning does)')
  p.add_argument('--encoder-only', action='store_true', help='drop the MAE decoder')
  p.add_argument('--step', type=int, default=None, help='workdir checkpoint step (default: latest)')
  p.add_argument('--hf-mask-ratio', type=float, default=None,
                 help='mask_ratio written to the HF config (default 0.75 with a decoder, 0 for encoder-only)')
  return p


def describe(s) -> str:
  """One line for a :class:`~mim_jax.weights.spec.ModelSpec`."""
  image = f'image {s.image_size[0]}x{s.image_size[1]}x{s.channels}'
  head = (', fc_norm' if s.fc_norm else '') + (f', head {s.num_classes}' if s.num_classes else '')
  if not s.is_vit:
    options = ', '.join(f'{k} {v}' for k, v in s.encoder_options)
    return f'{s.encoder} ({options}), feature width {s.width}, {image}{head}'
  options = ''.join(f', {k} {v}' for k, v in s.encoder_options)
  return (f'ViT patch {s.patch_size}, width {s.width}, depth {s.depth}, heads {s.num_heads}, mlp {s.mlp_ratio:g}, '
          f'{image}, positions {s.pos_embed}{options}{head}'
          + (f' | decoder width {s.decoder.width}, depth {s.decoder.depth}, heads {s.decoder.num_heads}'
             if s.decoder else ' | no decoder'))


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from mim_jax.interop.convert import convert
  from mim_jax.interop.timm_vit import timm_model_kwargs, timm_model_name

  try:
    ckpt, written = convert(args.src, args.dst, args.from_format, args.to_format, encoder_only=args.encoder_only,
                            image_size=args.image_size, learned_pos_embed=args.learned_pos_embed,
                            hf_mask_ratio=args.hf_mask_ratio, num_heads=args.num_heads,
                            decoder_num_heads=args.decoder_num_heads, source_image_size=args.source_image_size,
                            pos_embed=args.pos_embed, step=args.step)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  s = ckpt.spec
  print(f'model: {describe(s)}')
  for note in ckpt.notes:
    print(f'note: {note}')
  for path in written:
    print(f'wrote {path}')
  if args.to_format == 'timm':
    kwargs = ', '.join(f'{k}={v!r}' for k, v in timm_model_kwargs(s).items())
    print(f"load: timm.create_model('{timm_model_name(s)}', pretrained=True, "
          f"pretrained_cfg_overlay=dict(file='{written[0]}'), {kwargs})")
  elif args.to_format == 'hf_vitmae':
    cls = 'ViTMAEForPreTraining' if s.decoder is not None else 'ViTMAEModel'
    print(f"load: transformers.{cls}.from_pretrained('{args.dst}')")
  return 0


if __name__ == '__main__':
  sys.exit(main())
