#!/usr/bin/env bash
# A real multi-process fmjax job on this machine: N CPU processes with D simulated devices each,
# joined through a coordinator on 127.0.0.1 (gloo collectives). Every output line is prefixed
# with its process id; if one process fails, the others are stopped and its exit code returned.
#
#   launch/local.sh --num_processes 2 --devices_per_process 4 -- \
#       --config experiments/bert_tiny.py:smoke --workdir runs/two_procs
#
# Env: PYTHON (interpreter, default python), JAX_PLATFORMS (default cpu).
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: launch/local.sh --num_processes N --devices_per_process D [--port P]
                       [--grace_seconds S] -- <python -m fmjax.main arguments>
  --num_processes N        processes to start (>= 1)
  --devices_per_process D  simulated CPU devices per process (>= 1)
  --port P                 coordinator port on 127.0.0.1 (default: a free one)
  --grace_seconds S        after one process fails, seconds between SIGTERM and SIGKILL
                           of the others (default 5)
EOF
  exit 2
}

num_processes="" devices_per_process="" port="" grace_seconds=5
while (($#)); do
  case "$1" in
    --num_processes) num_processes="${2-}"; shift 2 || usage ;;
    --num_processes=*) num_processes="${1#*=}"; shift ;;
    --devices_per_process) devices_per_process="${2-}"; shift 2 || usage ;;
    --devices_per_process=*) devices_per_process="${1#*=}"; shift ;;
    --port) port="${2-}"; shift 2 || usage ;;
    --port=*) port="${1#*=}"; shift ;;
    --grace_seconds) grace_seconds="${2-}"; shift 2 || usage ;;
    --grace_seconds=*) grace_seconds="${1#*=}"; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "launch/local.sh: unknown option $1" >&2; usage ;;
  esac
done
is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
is_count "$num_processes" || { echo "launch/local.sh: --num_processes must be >= 1" >&2; usage; }
is_count "$devices_per_process" || {
  echo "launch/local.sh: --devices_per_process must be >= 1" >&2; usage; }
[[ "$grace_seconds" =~ ^[0-9]+$ ]] || { echo "launch/local.sh: bad --grace_seconds" >&2; usage; }
(($#)) || { echo "launch/local.sh: give the fmjax.main arguments after --" >&2; usage; }

python="${PYTHON:-python}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "$port" ]]; then
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
[[ "$port" =~ ^[0-9]+$ ]] || { echo "launch/local.sh: bad --port $port" >&2; usage; }

# Each process sees D devices; any device count already in XLA_FLAGS is replaced.
xla_flags="$(sed -E 's/--xla_force_host_platform_device_count=[^ ]*//g' <<<"${XLA_FLAGS:-}")"
export XLA_FLAGS="${xla_flags} --xla_force_host_platform_device_count=${devices_per_process}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1
export FMJAX_COORDINATOR="127.0.0.1:${port}" FMJAX_NUM_PROCESSES="${num_processes}"

pids=()
stop_all() {  # SIGTERM the processes still running (by pid), SIGKILL them after the grace time
  local pid waited=0
  for pid in "${pids[@]}"; do [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true; done
  while ((waited < grace_seconds * 10)); do
    local alive=0
    for pid in "${pids[@]}"; do [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
    waited=$((waited + 1))
  done
  for pid in "${pids[@]}"; do [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do [[ -n "$pid" ]] && wait "$pid" 2>/dev/null || true; done
}
trap 'echo "[launch] interrupted; stopping all processes" >&2; stop_all; exit 130' INT TERM

echo "[launch] ${num_processes} processes x ${devices_per_process} devices, coordinator 127.0.0.1:${port}" >&2
for ((rank = 0; rank < num_processes; rank++)); do
  FMJAX_PROCESS_ID="$rank" "$python" -m fmjax.main "$@" \
    > >(sed -u "s/^/[${rank}] /") 2> >(sed -u "s/^/[${rank}] /" >&2) &
  pids+=("$!")
  echo "[launch] process ${rank}: pid $!" >&2
done

running="$num_processes"
while ((running > 0)); do
  running=0
  for rank in "${!pids[@]}"; do
    pid="${pids[$rank]}"
    [[ -z "$pid" ]] && continue
    if kill -0 "$pid" 2>/dev/null; then
      running=$((running + 1))
      continue
    fi
    code=0
    wait "$pid" || code=$?
    pids[rank]=""
    if ((code != 0)); then
      echo "[launch] process ${rank} exited with code ${code}; stopping the others" >&2
      stop_all
      wait  # the output prefixers
      exit "$code"
    fi
  done
  ((running == 0)) || sleep 0.2
done
wait  # the output prefixers
echo "[launch] all ${num_processes} processes finished" >&2
