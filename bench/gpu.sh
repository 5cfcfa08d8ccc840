#!/usr/bin/env bash
# The checks that need a GPU, in one go (about 5 minutes on one H100/H200), for a machine where the package's
# pure-Python needs are importable (PYTHONPATH) but it is not installed:
#   1. the API, CLI, model and extras tests (their gpu-marked ones included) and the CUDA training test;
#   2. bench/train_speed.py on cuda (one AE-C step: plain fp32 against bf16 autocast + channels-last);
#   3. bench/throughput.py on cuda (conv ceiling, encoder share, end to end on 200 files, RSS on a 1-hour file);
#   4. bench/throughput.py --large on cuda (the 15.5-h set: decode bound, threads or processes, log-mels on the CPU
#      or the GPU, steady state; about 4 minutes on 16 cores, the set's generation included).
# Logs go to $OUT (default /tmp/coala-gpu). Each stage has its own time limit, so one hang does not hide the rest.
#
#     bash bench/gpu.sh [WORKERS] [STAGES]   # WORKERS: the CLI's decoders (default: cores - 2)
#                                            # STAGES: some of "tests train inference large" (default: all)
#
# On an image that has torch, numpy, scikit-learn, h5py, click, tqdm, safetensors and huggingface_hub but not the
# rest (as the lent H200 of 2026-11-26), bring the others as cp312 wheels and put them first on PYTHONPATH:
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#         --platform manylinux_2_17_x86_64 -d .whl soundfile cffi pycparser soxr inflect jaraco.functools \
#         more_itertools typeguard iterative-stratification
#     pip install --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site bash bench/gpu.sh
set -u
out=${OUT:-/tmp/coala-gpu}
mkdir -p "$out"
workers=${1:-$(($(nproc) > 3 ? $(nproc) - 2 : 1))}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1 | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
    2>&1 | tee -a "$out/gpu.txt"

stages=${2:-tests train inference large}
has() { [[ " $stages " == *" $1 "* ]]; }

if has tests; then
echo "== tests"
timeout 240 $py -m pytest -q -p no:cacheprovider tests/test_api.py tests/test_cli.py tests/test_model.py tests/test_extras.py \
    2>&1 | tee "$out/tests.log" | tail -15
# the CPU training tests belong to CI; here only the CUDA one (a smoke corpus, then two short CUDA runs: ~70 s)
timeout 180 $py -m pytest -q -p no:cacheprovider tests/training/test_fit.py -k cuda 2>&1 | tee -a "$out/tests.log" | tail -15
timeout 120 $py -m pytest -q -p no:cacheprovider tests/test_decoding.py 2>&1 | tee -a "$out/tests.log" | tail -8
fi

if has train; then
echo "== training step"
timeout 120 $py bench/train_speed.py --device cuda --steps 20 2>&1 | tee "$out/train_speed.log"
fi

if has inference; then
echo "== inference"
timeout 360 $py bench/throughput.py --weights weights --device cuda --workers "$workers" --batch-size 256 2>&1 \
    | tee "$out/throughput.log" | grep -v "files embedded"
fi

if has large; then
echo "== the large set"
timeout 420 $py bench/throughput.py --large --large-dir /tmp/coala-large --weights weights --device cuda \
    --workers "$workers" --batch-size 256 2>&1 | tee "$out/large.log"
fi
