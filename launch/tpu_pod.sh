#!/usr/bin/env bash
# Pre-train on a Cloud TPU VM slice (one host per 4/8 chips): create the slice, install mim_jax on every worker,
# run the same command on all workers (jax.distributed finds the others by itself on TPU VMs), delete the slice.
#
#   export TPU_NAME=mae-large ZONE=us-west4-a ACCELERATOR=v5litepod-256 RUNTIME=v2-alpha-tpuv5-lite
#   export BUCKET=gs://my-bucket   # checkpoints, metrics and the run's files end up under $BUCKET/runs/$RUN
#   launch/tpu_pod.sh create
#   launch/tpu_pod.sh setup                       # copies this checkout (git HEAD) to every worker, installs it
#   launch/tpu_pod.sh run configs/mae/vit_large_in1k.py --config.data.data_dir=gs://my-bucket/tensorflow_datasets
#   launch/tpu_pod.sh logs                        # follow process 0's output
#   launch/tpu_pod.sh sync                        # copy worker 0's metrics/TensorBoard/summary to the bucket
#   launch/tpu_pod.sh delete
#
# Environment: TPU_NAME, ZONE, ACCELERATOR, RUNTIME (the TPU VM software version for that generation), optional
# PROJECT, SPOT=1 (preemptible capacity), RUN (run name; default: TPU_NAME), BUCKET (required for `run`).
#
# Where things go: checkpoints are written by all workers together straight to $BUCKET/runs/$RUN/checkpoints
# (orbax writes gs:// natively; a GCS "directory" is committed with a marker file, so a preempted save never
# looks complete). Process 0 writes metrics.jsonl, TensorBoard events, config.json and summary.json into the local
# workdir ~/runs/$RUN on worker 0; `sync` (and the end of `run`) copies it to $BUCKET/runs/$RUN/workdir.
# Re-running `run` with the same RUN resumes from the latest checkpoint in the bucket, also after the slice was
# preempted and re-created. Before renting the slice, check that the step fits (no TPU needed):
#   python -m mim_jax.train.aot --config=configs/mae/vit_large_in1k.py --topology=v5e-256   (see docs/scale.md)
set -euo pipefail

cmd="${1:-help}"
shift || true
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
RUN="${RUN:-$TPU_NAME}"
project_flag=()
[[ -n "${PROJECT:-}" ]] && project_flag=(--project="$PROJECT")
tpu=(gcloud compute tpus tpu-vm)
on_all() { "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --worker=all --command="$1"; }
on_0() { "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --worker=0 --command="$1"; }

case "$cmd" in
  create)
    : "${ACCELERATOR:?set ACCELERATOR, e.g. v5litepod-256 or v4-64}" "${RUNTIME:?set RUNTIME, e.g. v2-alpha-tpuv5-lite}"
    spot=()
    [[ "${SPOT:-0}" == "1" ]] && spot=(--spot)
    "${tpu[@]}" create "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --accelerator-type="$ACCELERATOR" \
      --version="$RUNTIME" "${spot[@]}"
    ;;
  setup)
    # The exact code of this checkout (committed files), the same on every worker.
    archive="$(mktemp -t mim_jax_XXXX).tar.gz"
    git -C "$(dirname "$0")/.." archive --format=tar.gz --prefix=mim_jax/ -o "$archive" HEAD
    "${tpu[@]}" scp "$archive" "$TPU_NAME":mim_jax.tar.gz --zone="$ZONE" "${project_flag[@]}" --worker=all
    on_all "rm -rf mim_jax && tar xzf mim_jax.tar.gz && cd mim_jax && pip install -q -U 'jax[tpu]==0.10.2' && \
      pip install -q -e . gcsfs"
    ;;
  run)
    : "${BUCKET:?set BUCKET=gs://... (checkpoints and run files go there)}"
    [[ $# -ge 1 ]] || { echo "usage: $0 run CONFIG [--config.key=value ...]" >&2; exit 2; }
    config="$1"
    shift
    script="$(mktemp -t mim_jax_run_XXXX).sh"
    # The same script on every worker. MIM_JAX_DISTRIBUTED=1: jax.distributed.initialize() reads the slice's
    # workers from the TPU VM metadata. Worker 0 copies its run files to the bucket when the run ends.
    cat > "$script" <<SCRIPT
#!/usr/bin/env bash
cd \$HOME/mim_jax
export MIM_JAX_DISTRIBUTED=1 JAX_COMPILATION_CACHE_DIR=$BUCKET/runs/$RUN/jax_cache
python -m mim_jax.main --config=$config --workdir=\$HOME/runs/$RUN \\
  --config.checkpoint.directory=$BUCKET/runs/$RUN/checkpoints $(printf ' %q' "$@")
status=\$?
worker=\$(curl -s -H 'Metadata-Flavor: Google' \\
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)
if [[ "\$worker" == 0 ]]; then gsutil -m -q rsync -r \$HOME/runs/$RUN $BUCKET/runs/$RUN/workdir; fi
exit \$status
SCRIPT
    "${tpu[@]}" scp "$script" "$TPU_NAME":mim_jax_run.sh --zone="$ZONE" "${project_flag[@]}" --worker=all
    # Detached (nohup ... &): the run outlives this ssh session; each worker logs to ~/runs/RUN.log.
    on_all "mkdir -p \$HOME/runs && nohup bash \$HOME/mim_jax_run.sh > \$HOME/runs/$RUN.log 2>&1 < /dev/null &"
    echo "started on all workers; follow with: $0 logs"
    ;;
  logs)
    on_0 "tail -n 100 -f \$HOME/runs/$RUN.log"
    ;;
  sync)
    : "${BUCKET:?set BUCKET}"
    on_0 "gsutil -m -q rsync -r \$HOME/runs/$RUN $BUCKET/runs/$RUN/workdir"
    ;;
  ssh)
    "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --worker="${1:-0}"
    ;;
  stop)  # SIGTERM on every worker: a checkpoint at the next step, then exit (resume with `run`)
    on_all "pkill -TERM -f 'python -m mim_jax.main' || true"
    ;;
  delete)
    "${tpu[@]}" delete "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --quiet
    ;;
  *)
    sed -n '2,25p' "$0"
    ;;
esac
