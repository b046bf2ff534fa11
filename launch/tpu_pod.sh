#!/usr/bin/env bash
# Runs an lbt config or study on a Cloud TPU VM slice: create (spot), install,
# run on all workers, stream process 0, copy the report, delete.
# See launch/tpu_pod.py for the flags and the spot (resume) flow, e.g.:
#   bash launch/tpu_pod.sh --accelerator=v4-32 --zone=us-central2-b \
#     --workdir=gs://BUCKET/run --study=configs/studies/imagenet_limit.py:lars --dry-run
set -euo pipefail
exec python3 "$(dirname "$0")/tpu_pod.py" "$@"
