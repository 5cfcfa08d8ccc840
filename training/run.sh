#!/usr/bin/env bash
# Reproduce weights/ end to end: corpus -> the shipped recipe (three seeds), E-C, CNN -> evaluation tasks ->
# checkpoint and seed selection on the validation splits -> evaluation -> export.
# Every stage resumes where it stopped and is skipped when done.
#
#   bash training/run.sh              # the full run (data in $COALA_EMBED_DATA or ~/.cache/coala-embed)
#   bash training/run.sh --smoke      # the whole chain on a tiny generated corpus, in minutes
#   bash training/run.sh --skip corpus,ec,cnn --until evaluate
#   bash training/run.sh --set bf16=false --set fast_dropout=false   # training settings (faster on a GPU)
#
# Stages: corpus ae_c ec cnn tasks select evaluate export (ae_c: the shipped recipe's three seeds)
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
SKIP=""
EXTRA_SET=()
UNTIL="export"
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --skip) SKIP="$2"; shift ;;
    --until) UNTIL="$2"; shift ;;
    --set) EXTRA_SET+=("$2"); shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

DATA="${COALA_EMBED_DATA:-$HOME/.cache/coala-embed}"
SHIP=litemax  # the shipped recipe, training/configs/$SHIP.json: runs DATA/runs/${SHIP}_sN, the chosen one DATA/runs/$SHIP
PY="${PYTHON:-python}"
if [ "$SMOKE" = 1 ]; then
  DATA="$DATA/smoke"
  TRAIN_SET=(max_samples=512 min_samples=512 batch_size=32 checkpoint_steps=8)
  EVAL_ARGS=(--seeds 2 --recipe signal)
  SELECT_ARGS=(--seeds 1 --every 1)
  SEEDS=(0 1)
  OUT="$DATA/weights"
else
  TRAIN_SET=()
  EVAL_ARGS=(--seeds 3 --loso --recipe signal --recipe signal_zmax)
  SELECT_ARGS=(--seeds 2)
  SEEDS=(0 1 2)  # the shipped recipe with three seeds; the selection stage ships the best on validation
  OUT="weights"
fi
TRAIN_SET+=(${EXTRA_SET[@]+"${EXTRA_SET[@]}"})  # --set KEY=VALUE: applied to every training run
export COALA_EMBED_DATA="$DATA"
mkdir -p "$DATA/logs"

stage() {  # stage NAME: true when it should run
  case ",$SKIP," in *",$1,"*) echo "== skip $1"; return 1 ;; esac
  echo "== $1 ($(date -u +%H:%M:%S))"
}
stop_after() { [ "$UNTIL" = "$1" ] && { echo "== stopped after $1"; exit 0; }; return 0; }

if stage corpus; then
  if [ "$SMOKE" = 1 ]; then
    $PY -m training.corpus --smoke
  else
    $PY -m training.corpus
  fi
fi
stop_after corpus

train() {  # train CONFIG RUN [KEY=VALUE ...]: DATA/runs/RUN, resumed if it stopped, skipped when done
  local config="$1" run="$2"; shift 2
  if [ -e "$DATA/runs/$run/DONE" ]; then
    echo "   $run already trained"
  else
    $PY -m training.fit "training/configs/$config.json" --set name="$run" "$@" ${TRAIN_SET[@]+"${TRAIN_SET[@]}"} \
      2>&1 | tee -a "$DATA/logs/$run.log"
  fi
}
RUNS=()
for seed in "${SEEDS[@]}"; do RUNS+=("${SHIP}_s$seed"); done
if stage ae_c; then
  for seed in "${SEEDS[@]}"; do train "$SHIP" "${SHIP}_s$seed" seed="$seed"; done
fi
stop_after ae_c
if stage ec; then train e_c e_c; fi
stop_after ec
if stage cnn; then train cnn cnn; fi
stop_after cnn

if stage tasks; then
  if [ "$SMOKE" = 1 ]; then
    $PY -m training.eval.tasks --smoke
  else
    $PY -m training.eval.tasks
  fi
fi
stop_after tasks

if stage select; then  # each seed's checkpoint, then the seed: DATA/runs/$SHIP links to the chosen run
  $PY -m training.eval.select $(printf -- '--run %s ' "${RUNS[@]}") --as "$SHIP" "${SELECT_ARGS[@]}"
fi
stop_after select

if stage evaluate; then
  SEED_ARGS=($(printf -- '--model %s ' "${RUNS[@]}") --group "$SHIP=$(IFS=,; echo "${RUNS[*]}")")
  for split in val test; do
    $PY -m training.eval --model "$SHIP" --model e_c --model cnn --model random "${SEED_ARGS[@]}" --split "$split" \
      "${EVAL_ARGS[@]}"
  done
  $PY -m training.eval.analysis --model "$SHIP" --model e_c --model cnn --model random
fi
stop_after evaluate

if stage export; then
  $PY -m training.export --run "$DATA/runs/$SHIP" --out "$OUT" --card "$DATA/eval" --recipe signal_zmax
fi
echo "== done: $OUT"
