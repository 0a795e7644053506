#!/usr/bin/env bash
# The GPU measurements of issue #8, in parts that each fit one 10-minute call on a lent machine:
#
#   bash benchmarks/run_gpu.sh OUTDIR checks  # devices and versions, then pytest tests/test_gpu.py (~2.5 min on H100)
#   bash benchmarks/run_gpu.sh OUTDIR fixed   # MAE B/16 b512 (and HF ViTMAE eager) and L/16 b256, bf16, cuDNN
#   bash benchmarks/run_gpu.sh OUTDIR auto_b16  # MAE B/16 at the largest batch that fits (one call each: quick
#   bash benchmarks/run_gpu.sh OUTDIR auto_l16  # probe compiles without autotuning, then one full 3+ min compile)
#
# Writes OUTDIR/<part>*.log and .json. Run from the repository root with mim_jax and ml_collections importable.
# docs/performance.md has the results of `checks` and `fixed` (session 5, one H100).
set -uo pipefail
out=${1:?usage: run_gpu.sh OUTDIR checks|fixed|auto_b16|auto_l16}
part=${2:?usage: run_gpu.sh OUTDIR checks|fixed|auto_b16|auto_l16}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}  # what --batch auto may size for
bench=(python3 benchmarks/train_step.py --compute-dtype bfloat16 --attention cudnn --steps 10 --warmup 2)
case $part in
  checks)
    { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
      python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
                  "optax", optax.__version__, jax.devices())'
      python3 -m pytest -v tests/test_gpu.py -p no:cacheprovider
    } 2>&1 | tee "$out/checks.log" ;;
  fixed)
    "${bench[@]}" --frameworks jax,torch --models base16_224 --batch 512 --json "$out/fixed_b16.json" 2>&1 \
      | tee "$out/fixed_b16.log"
    "${bench[@]}" --frameworks jax,torch --models large16_224 --batch 256 --json "$out/fixed_l16.json" 2>&1 \
      | tee "$out/fixed_l16.log" ;;
  auto_b16|auto_l16)
    model=$([ "$part" = auto_b16 ] && echo base16_224 || echo large16_224)
    "${bench[@]}" --frameworks jax --models "$model" --batch auto --json "$out/$part.json" 2>&1 \
      | tee "$out/$part.log" ;;
  *) echo "unknown part $part (checks|fixed|auto_b16|auto_l16)"; exit 2 ;;
esac
