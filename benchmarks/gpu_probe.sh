#!/usr/bin/env bash
# bash benchmarks/gpu_probe.sh OUTDIR [--device cpu]
#
# Where the GPU's time goes in genperf's training steps, and how fast each recommended flag makes them beside
# plain PyTorch, in one command that fits 8 minutes on one H100/H200 (offline build included): the selftest's
# build (genperf._C for this GPU, offline), the boundary check and its speed stages, under a 450-second budget:
#   boundary    a bad argument to each raw CUDA kernel op raises an error naming it (each case in a child process)
#   throughput  RealNVP celeba64 at batches 64, 128, 256: plain PyTorch fp32, genperf's defaults, --amp,
#               --channels-last, both, and --amp --compile --channels-last, side by side in one process;
#               each variant profiled once (OUTDIR/profiles/STAGE: counts and the top 20 CUDA kernels)
#   gan-speed   DCGAN and WGAN-GP at 64x64, batch 64, each flag beside plain PyTorch
#   audit       benchmarks/audit_step.py of each model's recommended step on the GPU
#   cudagraphs  RealNVP celeba64 with --compile-mode reduce-overhead beside the same flags without it
#   kernels     bench_kernels at batch 256, bf16 and fp32: each fused op against eager and torch.compile of its
#               reference, GB/s against a measured copy, the host cost of a call (if the budget has time left)
# and prints a one-screen summary (OUTDIR/probe.md; everything in OUTDIR/selftest.json, each stage's whole
# output in OUTDIR/<stage>.log). --device cpu runs the same stages at tiny sizes (a check of the script).
set -euo pipefail
if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: bash benchmarks/gpu_probe.sh OUTDIR [--device cpu]" >&2
    exit 2
fi
out=$1
shift
cd "$(dirname "$0")/.."
extra=()
if [[ " $* " == *" --device cpu "* ]]; then
    extra=(--quick)  # tiny sizes: the CPU checks the script, the GPU measures
fi
python=${PYTHON:-python}
status=0
"$python" benchmarks/selftest.py --out "$out" --budget-s "${GENPERF_PROBE_BUDGET_S:-450}" \
    --only boundary,throughput,gan-speed,audit,cudagraphs,kernels "${extra[@]}" "$@" || status=$?
if [[ -f $out/probe.md ]]; then
    echo
    cat "$out/probe.md"
fi
exit $status
