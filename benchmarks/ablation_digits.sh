#!/usr/bin/env bash
# The digits ablation: MAE vs SimMIM vs MAE+ColorMAE vs MAE+HPM vs MAE+block masks (each run's summary also holds
# the random-init encoder's probes), all with the quickstart's data, ViT, optimizer and 1000 steps
# (configs/ablation/digits.py). Runs sequentially, then prints the table with mim_jax.report.
#
#   bash benchmarks/ablation_digits.sh [ROOT [VARIANT ...]]
#     ROOT     where the workdirs go (default workdirs/ablation); one workdir and one .log per variant
#     VARIANT  any of configs/ablation/digits.py's (default: mae simmim colormae_green hpm block)
#   FORCE=1 re-evaluates variants that already have a summary.json (training itself resumes from the workdir).
#   EXTRA="--config.seed=1" passes overrides to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-workdirs/ablation}
shift $(( $# > 0 ? 1 : 0 ))
VARIANTS=("$@")
if [ ${#VARIANTS[@]} -eq 0 ]; then
  VARIANTS=(mae simmim colormae_green hpm block)
fi
mkdir -p "$ROOT"
for v in "${VARIANTS[@]}"; do
  if [ -f "$ROOT/$v/summary.json" ] && [ "${FORCE:-0}" != 1 ]; then
    echo "== $v: $ROOT/$v/summary.json exists, skipping (FORCE=1 to redo)"
    continue
  fi
  echo "== $v ($(date +%H:%M:%S))"
  start=$SECONDS
  # shellcheck disable=SC2086
  python -m mim_jax.main --config="configs/ablation/digits.py:$v" --workdir="$ROOT/$v" ${EXTRA:-} 2>&1 \
    | tee "$ROOT/$v.log"
  echo "== $v took $(( SECONDS - start ))s"
done
dirs=()
for v in "${VARIANTS[@]}"; do dirs+=("$ROOT/$v"); done
python -m mim_jax.report "${dirs[@]}" \
  --keys 'method,linear_probe/top1,knn/top1,logreg/top1,random_init/linear_probe/top1,random_init/knn/top1,random_init/logreg/top1,raw_pixels/logreg/top1,checkpoint_step'
