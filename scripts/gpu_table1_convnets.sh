#!/usr/bin/env bash
# A few timed epochs of each Table 1 ConvNet recipe on the GPU; scripts/gpu_check.sh runs it as one step.
#
# The numbers to read are the epoch times. The error rates mean little after two epochs, and the
# data are not the papers' anyway:
# * CIFAR-10 recipes run on the cifar10-jpeg stand-in, built here from .data/cifar10-reconstruction/
#   (92% of its pixels JPEG-compressed); the runs are recorded as cifar10-jpeg, never as CIFAR-10.
# * SVHN recipes run on synthetic .mat files written here in the exact format of train_32x32.mat,
#   extra_32x32.mat and test_32x32.mat (random pixels, digits in rotation); the runs are recorded
#   as svhn-synthetic.
# Environment: EPOCHS (default 2), PER_RUN (seconds per training run, default 45), OUT (runs
# folder, default runs/gpu-check), DATA (default .data), DEVICE (default cuda), EXTRA (more --set
# arguments for every run, e.g. to try the script on a CPU with tiny limits).
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-2}
PER_RUN=${PER_RUN:-45}
OUT=${OUT:-runs/gpu-check}
DATA=${DATA:-.data}
DEVICE=${DEVICE:-cuda}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"

if [ ! -f "$DATA/cifar10-jpeg.npz" ]; then
  timeout 60 python3 "$DATA/cifar10-reconstruction/build.py" "$DATA/cifar10-jpeg.npz"
fi

# Synthetic SVHN: enough images of each digit for the pylearn2 split (400 per digit from train,
# 200 from extra) and a tail split for the Torch7 recipe.
timeout 60 python3 - "$DATA/svhn-synthetic/SVHN" <<'EOF'
import sys
from pathlib import Path

import numpy as np
import scipy.io

folder = Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for split, n in (("train", 5000), ("extra", 2500), ("test", 2000)):
    digits = np.arange(n) % 10
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)            # (H, W, C, N) as in the originals
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)  # digit 0 stored as 10
    scipy.io.savemat(str(folder / f"{split}_32x32.mat"), {"X": x, "y": y})
print(f"synthetic SVHN .mat files in {folder}")
EOF

train() {
  local recipe=$1
  shift
  timeout "$PER_RUN" python3 -m bnnctl train "recipes/$recipe.yaml" --device "$DEVICE" --runs-dir "$OUT" \
    --run-id "$recipe" --set "train.epochs=$EPOCHS" "$@" "${EXTRA_ARGS[@]}"
}
rm -rf "$OUT"
status=0
train cifar10 --data-dir "$DATA" --set data.source=npz --set data.npz=cifar10-jpeg.npz || status=1
train cifar10_torch7 --data-dir "$DATA" --set data.source=npz --set data.npz=cifar10-jpeg.npz || status=1
train svhn --data-dir "$DATA/svhn-synthetic" --set data.variant=svhn-synthetic || status=1
train svhn_torch7 --data-dir "$DATA/svhn-synthetic" --set data.variant=svhn-synthetic \
  --set data.train_size=4000 --set data.valid_size=1000 || status=1

python3 - "$OUT" <<'EOF'
import csv
import json
import sys
from pathlib import Path

for run in sorted(Path(sys.argv[1]).glob("*/*/result.json")):
    r = json.loads(run.read_text())
    with open(run.parent / "metrics.csv") as fh:
        times = [float(row["epoch_time_s"]) for row in csv.DictReader(fh)]
    print(f"{r['recipe']:>15} on {r['variant']:<15} {r['train_size']:>6} train images, epoch times (s): "
          f"{', '.join(f'{t:.1f}' for t in times)}; test error after {r['epochs_run']} epochs "
          f"{r['last_test_error_pct']:.2f}% [{r['hardware']}]")
EOF
exit $status
