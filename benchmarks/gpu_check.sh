#!/usr/bin/env bash
# Every GPU check of genlab in one run, for a CUDA machine. From the repository root:
#
#     GENLAB_DATA_DIR=/path/with/mnist bash benchmarks/gpu_check.sh OUT_DIR [stages...]
#
# Stages (all by default, in this order):
#   tests       tests/test_cuda.py: SIGTERM mid-epoch then --resume equals an uninterrupted run for every model
#               (deterministic algorithms), GPU checkpoints load on a CPU and back, seeded blocks fork the CUDA
#               generator, no training step waits for the GPU
#   commands    benchmarks/cuda_commands.py: every model trains an epoch on the GPU, then evaluate, energy, sample,
#               inpaint, denoise, report and serve (one drawing) run on those runs with --device cuda
#   throughput  benchmarks/throughput.py --device cuda on full MNIST: every model at the lecture's batch size and
#               a GPU-sized one, against a plain PyTorch loop over the same networks
#   reproduce   genlab reproduce on full MNIST (every model trained for at least two epochs, every figure), timed
# The stages' time limits add up to 800 s; where one command may run at most 10 minutes, run them in two:
# `tests commands` (at most 270 s), then `throughput reproduce` (at most 530 s).
# Each stage writes its log into OUT_DIR (the reproduction itself goes to $REPRODUCE_DIR, by default
# OUT_DIR/reproduce); a failing stage does not stop the others.
set -u
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [tests] [commands] [throughput] [reproduce]}
shift
stages=${*:-tests commands throughput reproduce}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 GENLAB_OFFLINE=1
: "${GENLAB_DATA_DIR:?set GENLAB_DATA_DIR to a folder holding mnist/ (and fashion-mnist/)}"
python3 -c "import torch; print('device:', torch.cuda.get_device_name(), '| PyTorch', torch.__version__)" \
  | tee "$out/device.txt"
status=0
stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log, report the time
  local name=$1 limit=$2; shift 2
  local began=$SECONDS
  echo "== $name: $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - began)) s" | tee -a "$out/times.txt"
  tail -n 15 "$out/$name.log"
  [ "$rc" -eq 0 ] || status=1
}
for s in $stages; do
  case $s in
    tests) stage tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py ;;
    commands) stage commands 150 python3 benchmarks/cuda_commands.py "$out/commands" ;;
    throughput) stage throughput 240 python3 benchmarks/throughput.py --device cuda --limit 60000 ;;
    reproduce) stage reproduce 290 python3 -m genlab.cli reproduce --device cuda --out "${REPRODUCE_DIR:-$out/reproduce}" ;;
    *) echo "unknown stage $s" >&2; status=2 ;;
  esac
done
exit $status
