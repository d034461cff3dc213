#!/usr/bin/env bash
# Runs fmjax on every worker of a Cloud TPU VM pod slice: creates the slice unless it exists,
# copies this checkout to all workers and installs it with the exact package versions of the
# environment you run this script from (pip freeze of $PYTHON, default python3, as a pip
# constraints file), then starts the same command on all of them. JAX finds the coordinator,
# process count and id from the TPU metadata.
#
#   launch/tpu_pod.sh --tpu_name my-v4-32 --zone us-central2-b --accelerator_type v4-32 -- \
#       --config experiments/bert_base.py --workdir gs://my-bucket/runs/bert_base
#
# The workdir must be on storage every worker sees: a gs:// bucket (see README, "Workdirs on
# GCS") or a Filestore/NFS mount. Process 0 writes metrics, config and manifest, and every
# process writes its shards of each checkpoint. A persistent compilation cache goes to
# <workdir>/jax_compilation_cache unless the command sets --config.compilation_cache_dir.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: launch/tpu_pod.sh --tpu_name NAME --zone ZONE [--accelerator_type TYPE] [--project P]
                         [--runtime_version V] [--spot] [--skip_setup] [--dry_run]
                         -- <python -m fmjax.main arguments>
  --tpu_name NAME          the TPU VM slice to create or reuse
  --zone ZONE              its zone, e.g. us-central2-b
  --accelerator_type TYPE  e.g. v4-32, v5p-64 (needed only to create the slice)
  --project P              GCP project (default: gcloud's configured one)
  --runtime_version V      TPU VM software version (default tpu-ubuntu2204-base)
  --spot                   create the slice as Spot VMs (preemptible; resume by re-running)
  --skip_setup             reuse the slice's existing copy of the project: no copy, no install
  --dry_run                print every command instead of running it
EOF
  exit 2
}

tpu_name="" zone="" accelerator_type="" project="" runtime_version="tpu-ubuntu2204-base"
spot=0 skip_setup=0 dry_run=0
while (($#)); do
  case "$1" in
    --tpu_name | --zone | --accelerator_type | --project | --runtime_version)
      (($# >= 2)) || { echo "launch/tpu_pod.sh: $1 needs a value" >&2; usage; }
      declare "${1#--}=$2"
      shift 2
      ;;
    --tpu_name=* | --zone=* | --accelerator_type=* | --project=* | --runtime_version=*)
      name="${1%%=*}"
      declare "${name#--}=${1#*=}"
      shift
      ;;
    --spot) spot=1; shift ;;
    --skip_setup) skip_setup=1; shift ;;
    --dry_run) dry_run=1; shift ;;
    --) shift; break ;;
    -h | --help) usage ;;
    *) echo "launch/tpu_pod.sh: unknown option $1" >&2; usage ;;
  esac
done
[[ -n "$tpu_name" ]] || { echo "launch/tpu_pod.sh: --tpu_name is required" >&2; usage; }
[[ -n "$zone" ]] || { echo "launch/tpu_pod.sh: --zone is required" >&2; usage; }
(($#)) || { echo "launch/tpu_pod.sh: give the fmjax.main arguments after --" >&2; usage; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
staging="${TMPDIR:-/tmp}/fmjax-${tpu_name}"
archive="${staging}.tar.gz"
where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")

quote() {  # one word as a shell reads it back: bare when safe, else in single quotes
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

run() {  # prints the command, copy-pastable; runs it unless --dry_run
  local word line="+"
  for word in "$@"; do line+=" $(quote "$word")"; done
  echo "$line"
  ((dry_run)) || "$@"
}

# 1. Create the slice unless it already exists.
if ((dry_run)); then
  run gcloud compute tpus tpu-vm describe "$tpu_name" "${where[@]}" --format='value(state)'
  echo "# if it does not exist:"
  exists=0
else
  exists=1
  run gcloud compute tpus tpu-vm describe "$tpu_name" "${where[@]}" --format='value(state)' \
    || exists=0
fi
if ((!exists)) && ((dry_run)) && [[ -z "$accelerator_type" ]]; then
  echo "# (creating it needs --accelerator_type)"
elif ((!exists)); then
  [[ -n "$accelerator_type" ]] || {
    echo "launch/tpu_pod.sh: slice $tpu_name does not exist; pass --accelerator_type" >&2
    exit 2
  }
  create=(gcloud compute tpus tpu-vm create "$tpu_name" "${where[@]}"
    --accelerator-type="$accelerator_type" --version="$runtime_version")
  ((spot)) && create+=(--spot)
  run "${create[@]}"
fi

# 2. Copy this checkout (tracked and new files, not ignored ones) plus constraints.txt, the
#    pinned versions of this environment (editable and direct-URL installs left out), and
#    install it everywhere: jax, jaxlib, flax, orbax, ... exactly as here; libtpu as jax's
#    [tpu] extra pins it for that jax.
if ((!skip_setup)); then
  freeze="$(quote "$python") -m pip freeze --exclude-editable | grep -v -e ' @ ' -e '^-e '"
  run bash -c "mkdir -p $(quote "$staging") && $freeze > $(quote "$staging/constraints.txt")"
  if ((!dry_run)) && ! grep -q '^jax==' "$staging/constraints.txt"; then
    echo "launch/tpu_pod.sh: $python has no jax installed; run it from fmjax's environment" \
      "(or set PYTHON)" >&2
    exit 2
  fi
  listing="git -C $(quote "$repo") ls-files -z --cached --others --exclude-standard"
  run bash -c "$listing | tar -czf $(quote "$archive") -C $(quote "$repo") --null -T - \
-C $(quote "$staging") constraints.txt"
  run gcloud compute tpus tpu-vm scp "$archive" "$tpu_name":fmjax.tar.gz --worker=all \
    "${where[@]}"
  run gcloud compute tpus tpu-vm ssh "$tpu_name" --worker=all "${where[@]}" --command \
    'mkdir -p ~/fmjax && tar -xzf ~/fmjax.tar.gz -C ~/fmjax && python3 -m pip install -q -c ~/fmjax/constraints.txt "jax[tpu]" -e ~/fmjax"[gcs]"'
fi

# 3. The same command on every worker (a worker that dies takes the others down through the
#    JAX coordinator's heartbeat; re-running the script resumes from the latest checkpoint).
extra=(--config.distributed.cluster=tpu)
workdir="" previous=""
for arg in "$@"; do
  [[ "$previous" == "--workdir" ]] && workdir="$arg"
  [[ "$arg" == --workdir=* ]] && workdir="${arg#*=}"
  previous="$arg"
done
if [[ -n "$workdir" && " $* " != *" --config.compilation_cache_dir"* ]]; then
  extra+=("--config.compilation_cache_dir=${workdir%/}/jax_compilation_cache")
fi
command="cd ~/fmjax && python3 -m fmjax.main$(printf ' %q' "$@" "${extra[@]}")"
run gcloud compute tpus tpu-vm ssh "$tpu_name" --worker=all "${where[@]}" --command "$command"
