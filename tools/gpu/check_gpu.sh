#!/usr/bin/env bash
# The GPU path, measured on a GPU, in one call on a machine with one CUDA GPU.
#
#   bash tools/gpu/check_gpu.sh OUT_DIR [STEP ...]      # default: every step but demo
#
# Steps (each logs to its own file; a failing step does not stop the others):
#   env      the GPU, driver, torch and packages
#   data     the synthetic COCO-format set (the demo's: 1500 train / 100 val images)
#   train    R50-FPN GN from scratch at the paper's sizes (800 / 1333), AMP, 100 iterations,
#            then --eval-only on its final weights
#   bench    tools/gpu/bench_gpu.py bench: R50-FPN GN 4conv1fc and BN* 2fc at 800x1216, 2 images
#            per step, train and inference, AMP off/on, beside torchvision, peak memory
#   before   before / after a change: tools/gpu/bench_gpu.py quick from .before/ (a copy of the older tree
#            with tools/gpu and detgn/benchmark/host_syncs.py added), then from this tree, twice
#   syncs    host syncs of a training step (CUDA sync debug mode) beside the CPU audit
#   profile  torch.profiler of a training step, GPU and CPU time by operator
#   torchrun a 1-process NCCL run: torchrun --nproc_per_node=1 tools/train_net.py (demo config)
#   ort      onnxruntime's CUDA provider, if the installed onnxruntime has it
#   demo     the demo recipe (configs/synthetic/demo_gn_scratch.yaml) on the GPU, AP and wall time; cut
#            at DEMO_SECONDS or before DEADLINE (seconds since the start, 585), then its newest
#            checkpoint is evaluated
#
# The machine needs torch and torchvision; pycocotools, fvcore, yacs, iopath and termcolor can
# come as wheels in .whl/ (installed to /tmp/site when that folder exists). Results: OUT_DIR holds
# summary.txt, steps.log (each step's last 200 lines, written as it ends), bench.json, syncs.txt,
# profile.md and logs.tgz (every step's whole log and the runs' logs and metrics).
# A data set already under $DETGN_DATASETS/synthetic is kept (the data step then does nothing).
set -u
OUT=${1:?usage: check_gpu.sh OUT_DIR [STEP ...]}
shift
STEPS=${*:-env data train bench torchrun ort syncs profile}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
LOGS=/tmp/detgn_gpu_logs
WORK=/tmp/detgn_gpu_work
mkdir -p "$OUT" "$LOGS" "$WORK"
export PYTHONUNBUFFERED=1 DETGN_DATASETS=${DETGN_DATASETS:-$WORK/datasets}
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}  # DEVICE=cpu SMALL=1: a dry run without a GPU
if [ -n "${SMALL:-}" ]; then
  BENCH=(--device "$DEV" --height 128 --width 160 --iters 1 --warmup 1); ITERS=4; NTRAIN=40
else
  BENCH=(--device "$DEV"); ITERS=100; NTRAIN=1500
fi
if [ -z "${NO_WHEELS:-}" ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
SYN=("DATASETS.TRAIN" "('synthetic_train',)" "DATASETS.TEST" "('synthetic_val',)" "MODEL.ROI_HEADS.NUM_CLASSES" "8")

step() {  # step NAME COMMAND...: run, log, record status and seconds
  local name=$1 t0=$SECONDS rc
  shift
  echo "=== $(date +%T) $name: $*" | tee -a "$OUT/summary.txt"
  "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  { echo "===== $name (exit $rc)"; tail -n 200 "$LOGS/$name.log"; } >>"$OUT/steps.log"  # comes back even if cut
  tail -n "${TAIL:-15}" "$LOGS/$name.log"
}

s_env() {
  nvidia-smi
  $PY - <<'EOF'
import importlib, platform, torch, torchvision
print("python", platform.python_version(), "torch", torch.__version__, "torchvision", torchvision.__version__,
      "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("device", torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))
for m in ("pycocotools", "fvcore", "yacs", "cv2", "onnx", "onnxruntime", "onnxscript"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:  # noqa: BLE001
        print(m, "MISSING", e)
import detgn.engine.run  # the whole toolkit imports
print("detgn imports ok")
EOF
}
s_data() {
  [ -f "$DETGN_DATASETS/synthetic/annotations/instances_train.json" ] && { echo "kept $DETGN_DATASETS/synthetic"; return 0; }
  $PY datasets/prepare_synthetic.py --out "$DETGN_DATASETS/synthetic" --train $NTRAIN --val 100 --seed 0 --workers 12
}
s_train() {
  local cfg=gn_paper/mask_rcnn_R_50_FPN_GN_scratch_long.yaml dir=$WORK/r50_gn_scratch_amp
  $PY tools/train_net.py --config $cfg MODEL.DEVICE $DEV SOLVER.AMP.ENABLED True SOLVER.MAX_ITER $ITERS \
    SOLVER.STEPS "($((ITERS * 8 / 10)), $((ITERS * 9 / 10)))" SOLVER.WARMUP_ITERS $((ITERS / 5)) SOLVER.CHECKPOINT_PERIOD $ITERS DATALOADER.NUM_WORKERS 4 \
    "${SYN[@]}" OUTPUT_DIR $dir || return
  $PY tools/train_net.py --config $cfg --eval-only MODEL.DEVICE $DEV TEST.AMP True "${SYN[@]}" \
    MODEL.WEIGHTS $dir/model_final.pth OUTPUT_DIR $dir/eval_only
}
s_bench() { $PY tools/gpu/bench_gpu.py bench --out "$OUT" --iters 10 --warmup 3 "${BENCH[@]}"; }
s_before() {  # the same quick figures from the tree in .before/ (the code before a change), then this one, twice
  local i
  for i in 1 2; do
    (cd .before && $PY tools/gpu/bench_gpu.py quick --out "$OUT/before" "${BENCH[@]}") || return
    $PY tools/gpu/bench_gpu.py quick --out "$OUT/after" "${BENCH[@]}" || return
  done
}
s_syncs() { $PY tools/gpu/bench_gpu.py syncs --out "$OUT" --steps 3 "${BENCH[@]}"; }
s_profile() { $PY tools/gpu/bench_gpu.py profile --out "$OUT" --steps 3 "${BENCH[@]}"; }
s_torchrun() {
  torchrun --nproc_per_node=1 tools/train_net.py --config synthetic/demo_gn_scratch.yaml MODEL.DEVICE $DEV \
    SOLVER.MAX_ITER $((ITERS * 3 / 10)) SOLVER.CHECKPOINT_PERIOD $((ITERS * 3 / 10)) DATALOADER.NUM_WORKERS 2 OUTPUT_DIR $WORK/torchrun || return
  grep -h "Process group\|DistributedDataParallel" $WORK/torchrun/log.txt* | head -5
}
s_ort() {
  $PY -c "import onnxruntime as o; p = o.get_available_providers(); print('providers', p); \
import sys; sys.exit(0 if 'CUDAExecutionProvider' in p else 3)" || { echo "onnxruntime has no CUDA provider: skipped"; return 0; }
  $PY tools/export_model.py --config synthetic/demo_gn_scratch.yaml --format onnx --output $WORK/exported \
    MODEL.WEIGHTS $WORK/torchrun/model_final.pth MODEL.DEVICE cpu
}
s_demo() {  # the recipe, cut at DEMO_SECONDS (default: what is left before DEADLINE); a cut run is evaluated
  local budget=${DEMO_SECONDS:-$((${DEADLINE:-585} - SECONDS - 30))} rc last
  echo "demo: $budget s of training at most"
  timeout "$budget" $PY tools/train_net.py --config synthetic/demo_gn_scratch.yaml MODEL.DEVICE $DEV \
    SOLVER.IMS_PER_GPU 4 SOLVER.AMP.ENABLED True SOLVER.CHECKPOINT_PERIOD 350 DATALOADER.NUM_WORKERS 6 \
    OUTPUT_DIR $WORK/demo ${DEMO_OPTS:-}
  rc=$?
  grep -h "Results on\|iter: " $WORK/demo/log.txt | tail -3
  if [ $rc -eq 124 ] && [ -f $WORK/demo/last_checkpoint ]; then
    last=$(cat $WORK/demo/last_checkpoint)
    echo "demo: cut after $budget s; evaluating $last"
    $PY tools/train_net.py --config synthetic/demo_gn_scratch.yaml --eval-only MODEL.DEVICE $DEV \
      MODEL.WEIGHTS $WORK/demo/$last OUTPUT_DIR $WORK/demo/eval_only && grep -h "Results on" $WORK/demo/eval_only/log.txt
  fi
  return $rc
}

for s in $STEPS; do
  step "$s" "s_$s"
done
for f in "$WORK"/*/log.txt "$WORK"/*/metrics.json "$WORK"/*/eval_only/log.txt; do
  [ -f "$f" ] && cp "$f" "$LOGS/$(echo "${f#"$WORK"/}" | tr / _)"
done
tar czf "$OUT/logs.tgz" -C "$(dirname "$LOGS")" "$(basename "$LOGS")"
cat "$OUT/summary.txt"
