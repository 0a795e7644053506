#!/usr/bin/env bash
# A multi-host run simulated on one machine: N processes x D fake CPU devices each, joined through a
# coordinator on localhost - the same code path as a TPU pod or a GPU cluster (jax.distributed, per-host data
# shards, global arrays, cooperative checkpoints), useful for testing on a laptop.
#
#   launch/local_multiprocess.sh [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] [-l LOG_DIR] -- \
#       python -m mim_jax.main --config=configs/mae/digits.py:tiny --workdir=/tmp/mae_2x4 --mode=train
#
# Defaults: 2 processes x 4 devices, a free port. Process 0 prints to this terminal; process i > 0 writes to
# LOG_DIR/process_i.log (default: a temporary directory, printed); LOG_DIR/process_i.pid holds each pid.
# Ctrl-C / SIGTERM reach every process as SIGTERM (the trainers save a checkpoint of the same step and exit with
# 143). The exit status is the first non-zero status among the processes, else 0.
set -euo pipefail

procs=2
devices=4
port=""
log_dir=""
while getopts "n:d:p:l:h" opt; do
  case "$opt" in
    n) procs="$OPTARG" ;;
    d) devices="$OPTARG" ;;
    p) port="$OPTARG" ;;
    l) log_dir="$OPTARG" ;;
    h) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "usage: $0 [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] [-l LOG_DIR] -- COMMAND..." >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
if [[ $# -eq 0 ]]; then
  echo "error: no command given; e.g. $0 -- python -m mim_jax.main --config=configs/mae/digits.py:tiny --workdir=/tmp/x" >&2
  exit 2
fi
if ! [[ "$procs" =~ ^[1-9][0-9]*$ && "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: -n and -d must be positive integers (got -n $procs -d $devices)" >&2
  exit 2
fi
if [[ -z "$port" ]]; then  # a port nobody listens on right now
  port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
log_dir="${log_dir:-$(mktemp -d -t mim_jax_local_XXXX)}"
mkdir -p "$log_dir"

pids=()
forward() {  # pass the signal on; the trainers checkpoint at the next step and exit
  for pid in "${pids[@]}"; do kill -s "$1" "$pid" 2>/dev/null || true; done
}
# Ctrl-C goes on as SIGTERM: background processes of a script start with SIGINT ignored, and SIGTERM is what the
# trainer (and JAX's preemption service in a multi-process run) reacts to from the very start.
trap 'forward TERM' TERM INT

echo "local multi-process run: $procs processes x $devices CPU devices, coordinator 127.0.0.1:$port, logs in $log_dir" >&2
for ((i = 0; i < procs; i++)); do
  env_vars=(MIM_JAX_COORDINATOR="127.0.0.1:$port" MIM_JAX_NUM_PROCESSES="$procs" MIM_JAX_PROCESS_ID="$i"
            JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$devices ${XLA_FLAGS:-}")
  if [[ $i -eq 0 ]]; then
    env "${env_vars[@]}" "$@" &
  else
    env "${env_vars[@]}" "$@" > "$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
  echo $! > "$log_dir/process_$i.pid"  # to signal one process alone (e.g. a simulated preemption of one host)
done

# Poll rather than `wait -n` (bash 3 on macOS lacks it). When one process fails the others would block in
# their next collective until JAX's heartbeat timeout, so they are stopped at once.
status=0
running=("${!pids[@]}")
while [[ ${#running[@]} -gt 0 ]]; do
  still=()
  for i in "${running[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then still+=("$i"); continue; fi
    set +e
    wait "${pids[$i]}"
    code=$?
    set -e
    if [[ $code -ne 0 ]]; then
      [[ $i -gt 0 ]] && echo "process $i exited with $code; its log: $log_dir/process_$i.log" >&2
      if [[ $status -eq 0 ]]; then
        status=$code
        forward TERM
      fi
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  [[ ${#running[@]} -gt 0 ]] && sleep 0.5
done
exit $status
