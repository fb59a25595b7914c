#!/usr/bin/env bash
# The GPU check: everything that needs a GPU, in one run, on a bare machine (torch + CUDA toolkit, no
# internet, no ../shared, bnnctl not installed). Usage:
#
#     scripts/gpu_check.sh OUT_DIR
#
# Each step runs under a timeout, logs to OUT_DIR/<step>.log and appends one line (exit code, seconds)
# to OUT_DIR/summary.txt; a failing step does not stop the next one. The bench JSON lands in OUT_DIR.
# To add a check, append a line at the end:  step NAME CMD...   (STEP_TIMEOUT=SECONDS step ... to
# change its limit from the default 300 s).
set -u

OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."

export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PATH="$CUDA_HOME/bin:$PATH"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"        # run from the checkout, no install needed
export BNNCTL_BUILD_DIR=${BNNCTL_BUILD_DIR:-$PWD/.bnnctl-build}  # git-ignored; kept on a warm machine
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME CMD... : run CMD under $STEP_TIMEOUT seconds (default 300), log, record, go on
  local name=$1; shift
  local limit=${STEP_TIMEOUT:-300} start rc
  # ONLY="name1 name2" runs just those steps (a short first call on a lent GPU, a rerun of one step)
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return 0; fi
  start=$(date +%s)
  echo "=== $name: $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  [ "$rc" -eq 124 ] && echo "(timed out after $limit s)" >> "$OUT/$name.log"
  printf '%-14s rc=%-4s %5ss  %.90s\n' "$name" "$rc" "$(( $(date +%s) - start ))" "$(echo "$*" | tr -s '\n ' ' ')" \
    | tee -a "$SUMMARY"
  tail -n 25 "$OUT/$name.log"
  return 0
}

# Pulls the CUDA-core XOR+POPC ceiling (T ops/s) out of the b1_peak log, for the bench's share column.
popc_peak() {
  awk '/cuda-core xor\+popc\+add/ { for (i = 1; i <= NF; i++) if ($(i + 1) == "T") { print $i; exit } }' \
    "$OUT/gpu_peaks.log" 2>/dev/null
}

STEP_TIMEOUT=60 step info bash -c 'nvidia-smi; nvcc --version; python3 -c "
import sys, torch
print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda)
print(\"gpu\", torch.cuda.is_available() and torch.cuda.get_device_name(0))
import typer, rich, pytest, yaml, numpy  # what bnnctl and its tests need besides torch
"; git log -1 --oneline 2>/dev/null || true'

STEP_TIMEOUT=120 step gpu_peaks bash -c 'nvcc -gencode=arch=compute_90a,code=sm_90a -O3 tools/gpu_peaks/b1_peak.cu \
  -o "$0/b1_peak" && "$0/b1_peak"' "$OUT"

STEP_TIMEOUT=60 step kernel_sass bash -c 'for f in cuda/*.cu; do echo "## $f"; \
  nvcc -c -arch=sm_90 -O3 --resource-usage -o /dev/null "$f" 2>&1 | grep -E "Function properties|registers|spill"; done'

STEP_TIMEOUT=400 step build python3 -c 'from bnnctl import kernels; print(kernels.available())'

STEP_TIMEOUT=300 step kernel_tests python3 -m pytest -q -rs tests/test_kernels.py

PEAK=$(popc_peak)
STEP_TIMEOUT=240 step bench python3 -m bnnctl bench --kernel all --out "$OUT" ${PEAK:+--popc-peak "$PEAK"}

# The 1-bit tensor-core GEMM (cuda/xnor_tc.cu; what these must show: cuda/XNOR_TC.md). Its 8192^3 run is in
# "bench" above (--kernel all); here: exactness, the MNIST MLP hidden layers, the sm_90a wgmma variant (a
# second extension build, TORCH_CUDA_ARCH_LIST=9.0a; the step to drop if time is short), and each kernel's
# rate as a share of its matching b1 ceiling from gpu_peaks.log.
STEP_TIMEOUT=240 step tc_tests python3 -m pytest -q -rs tests/test_tensorcore.py
STEP_TIMEOUT=150 step tc_bench_mlp python3 -m bnnctl bench --kernel xnor-tc,xnor,cublas,bf16 --m 10000 --n 4096 \
  --k 4096 --out "$OUT"
# Every configuration of the mma.sync kernel (tile, stages, fragment double buffering, ...) at 8192^3 and
# 10000 x 4096 x 4096, beside torch bf16 in the same process, taking turns: which one is fastest, and whether
# it reaches 4x torch bf16 (cuda/XNOR_TC.md says how to make the winner the default). JSON: $OUT/tc_configs-*.json.
STEP_TIMEOUT=150 step tc_configs python3 -c 'import sys; from bnnctl.bench import tensorcore as tc; \
  tc.bench_configs(sys.argv[1])' "$OUT"

# The bit-packed engine: its CUDA tests (every activation equal to the float model's), then the paper's
# Figure 3 right half: the MNIST MLP on the 10,000 test images, (a) baseline kernel, (b) XNOR (target >= 7x (a)),
# (c) bit-plane first layer (target: faster than (b)), (d) torch; JSON in $OUT (copy to results/bench/). Trained
# weights when results/mnist*/<run>/model.bnnx (or best.pt) is carried, else random weights (timings hold, the
# error column does not); MNIST from .data/MNIST/raw or data/MNIST/raw, else random images.
STEP_TIMEOUT=60 step engine_tests python3 -m pytest -q -rs tests/test_export_engine.py -k cuda
STEP_TIMEOUT=75 step bench_mlp python3 -m bnnctl bench --model mnist-mlp --device cuda --repeat 5 --out "$OUT" \
  --data-dir "$([ -d .data/MNIST/raw ] && echo .data || echo data)"


# Fast training: the CUDA checks of the fast path (no host sync inside a training step; TF32 exact on
# +-1 products), then timed epochs of the MNIST recipe with `--fast`; it writes epoch times, per-epoch metrics and
# the projected 1000-epoch time to $OUT/fast/*.json (copy to results/fast/). Needs MNIST at .data/MNIST/raw.
STEP_TIMEOUT=60 step fast_tests python3 -m pytest -q -rs tests/test_fast_path.py -k "cuda and not compiled"
STEP_TIMEOUT=90 step fast_mnist python3 scripts/fast_timing.py epochs recipes/mnist.yaml --epochs 3 --fast \
  --data-dir .data --out "$OUT/fast/gpu_mnist_epochs.json"

# Last, what can be dropped when the lease is short (a call that runs out of time loses only these):
# the sm_90a wgmma variant, the CPU kernels on the host CPU, the ConvNet epochs, compiled MNIST epochs.
STEP_TIMEOUT=360 step tc_wgmma env TORCH_CUDA_ARCH_LIST=9.0a bash -c 'python3 -m pytest -q -rs tests/test_tensorcore.py \
  -k cuda_wgmma && python3 -c "import sys; from bnnctl.bench import tensorcore as tc; \
  [tc.bench_wgmma(sys.argv[1], *shape) for shape in ((8192, 8192, 8192), (10000, 4096, 4096))]" "$0"' "$OUT"
STEP_TIMEOUT=60 step tc_share python3 -c 'import sys; from bnnctl.bench import tensorcore as tc; \
  tc.report_peak_shares(sys.argv[1])' "$OUT"

# The CPU kernels on this machine's host CPU (AVX-512 VPOPCNTDQ where it has it), for the CPU target:
# XNOR >= 15x torch fp32 at 1024 x 1024 x 4096.
# and its instruction ceilings (fp32 FMA, XOR+popcount by each method), to read the ratio against.
STEP_TIMEOUT=60 step cpu_peaks bash -c 'g++ -O3 -march=native -fopenmp tools/cpu_peaks/popc_peak.cpp -o "$0/popc_peak" \
  && "$0/popc_peak" 5' "$OUT"
STEP_TIMEOUT=120 step cpu_bench python3 -m bnnctl bench --device cpu --kernel xnor,cublas --out "$OUT"

# The Table 1 ConvNet recipes: 2 timed epochs each on the GPU (CIFAR-10 recipes on the cifar10-jpeg stand-in,
# which the script builds from .data/cifar10-reconstruction/; SVHN recipes on synthetic .mat files it writes).
STEP_TIMEOUT=150 step table1_convnets env EPOCHS=2 PER_RUN=35 OUT=runs/gpu-check scripts/gpu_table1_convnets.sh

# Compiled training: bnnctl refuses the CUDA-graph compile modes on CUDA until they are shown to train the same
# model as eager mode; these tests compare compiled steps, default and reduce-overhead, with eager ones, and the
# timing runs the default mode (its metrics say whether it learns).
STEP_TIMEOUT=180 step fast_compile_tests python3 -m pytest -q -rs tests/test_fast_path.py -k "cuda and compiled"
STEP_TIMEOUT=150 step fast_mnist_compiled python3 scripts/fast_timing.py epochs recipes/mnist.yaml --epochs 4 --fast \
  --set fast.compile=true --data-dir .data --out "$OUT/fast/gpu_mnist_epochs_compiled.json"

echo "=== summary ($SUMMARY)"
cat "$SUMMARY"
