#!/usr/bin/env bash
# Screening runs of issue 17: train one recipe with one seed for a fixed number of samples, then score the
# snapshot of the epoch that reached that length on the validation splits with the logistic-regression screen,
# with the paper's clip vector (mean of z) and with z+max (ClipConfig). Training resumes from its checkpoint and
# is skipped once done, and so is a screen already written for that snapshot.
#
#   bash training/screen.sh RECIPE SEED [SAMPLES]      # e.g. bash training/screen.sh sig 0
#   nice -n 10 bash training/screen.sh wide 1 100000
#
# Recipes: training/configs/experiments/RECIPE.json (each extends ae_c.json or e_c.json; results in
# training/results/log.md):
#   base  the current recipe                 mix   augment.mix=0.5
#   sig   gain, EQ, pitch, reverb, noise     reg   weight_decay=0.05 tag_dropout=0.2
#   mask  a band of up to 16 mel bins and one of up to 16 frames zeroed per patch (the encoder's input only)
#   wide  the base recipe on the wider corpus (python -m training.corpus --wide --name corpus_wide)
#   ec    E-C, the paper's ablation without the autoencoders' decoders (training/configs/e_c.json)
#   view  the base recipe plus the audio-audio invariance loss (two views of each sound; loss_weights.view=10)
#   pair  view, with half the second views from another sound with the same raw tags (view.partner=0.5)
#   lite  view without the audio decoder (loss_weights.audio=0): the invariance loss stands in for the
#         reconstruction, at about two thirds of view's cost per sample; the tag autoencoder stays
#   litemax  lite with the invariance loss on z+max (view.readout): the block maxima of the shipped clip vector
#         are trained to be invariant too, not only z
#   lite10x  lite for 10x the shipped length: the learning rate drops at 1.8M and 2.3M samples instead of 400k/700k
#         (bash training/screen.sh lite10x 0 400000, then 800000, ...: each continues the run and screens it)
#   litemax10x  litemax (the shipped recipe) the same way, to 2.6M samples
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,25p' "$0"; exit 2; }
RECIPE="$1"; SEED="$2"; SAMPLES="${3:-100000}"
CONFIG="training/configs/experiments/$RECIPE.json"
if [ ! -f "$CONFIG" ]; then
  echo "unknown recipe $RECIPE; known: $(cd training/configs/experiments && ls *.json | sed 's/.json//' | tr '\n' ' ')" >&2
  exit 2
fi
DATA="${COALA_EMBED_DATA:-$HOME/.cache/coala-embed}"
PY="${PYTHON:-python}"
# One run per recipe and seed: a longer SAMPLES continues the shorter run (the learning rate is constant up to
# 400k samples and runs stop at epoch ends, so its first epochs are the shorter run's).
NAME="scr_${RECIPE}_s${SEED}"
EVAL="$DATA/eval/$NAME"
[ "$SAMPLES" = 100000 ] || EVAL="${EVAL}_${SAMPLES}"
mkdir -p "$DATA/logs"
done_samples() { $PY -c "import json,sys; print(json.load(open(sys.argv[1]))['samples'])" "$DATA/runs/$NAME/DONE" 2>/dev/null || echo 0; }
if [ "$(done_samples)" -lt "$SAMPLES" ]; then
  $PY -m training.fit "$CONFIG" --set name="$NAME" max_samples="$SAMPLES" \
    min_samples="$SAMPLES" seed="$SEED" >> "$DATA/logs/$NAME.log" 2>&1
fi
# The snapshot screened is the epoch that reached SAMPLES, not the newest: a run continued to a longer length keeps
# the screens of its earlier lengths right.
LAST=$($PY -c "import csv,sys; rows=list(csv.DictReader(open(sys.argv[1])))
print('snapshot_epoch%s.pt' % next((r['epoch'] for r in rows if int(r['samples']) >= int(sys.argv[2])), rows[-1]['epoch']))" \
  "$DATA/runs/$NAME/losses.csv" "$SAMPLES")
# a screen of this snapshot written after it (a restarted queue passing a finished length) is kept as it is
if ! { [ "$EVAL/results_val.md" -nt "$DATA/runs/$NAME/$LAST" ] && grep -q "| $NAME:$LAST |" "$EVAL/results_val.md"; }; then
  $PY -m training.eval --model "$NAME:$LAST" --model random --recipe signal --recipe signal_zmax --split val \
    --seeds 0 --out "$EVAL" >> "$DATA/logs/$NAME.log" 2>&1
fi
tail -2 "$EVAL/results_val.md" | sed "s/^/$NAME $LAST: /"
