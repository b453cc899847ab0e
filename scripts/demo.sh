#!/usr/bin/env bash
# make demo   (or: bash scripts/demo.sh [key=value ...]): ingest Fashion-MNIST, train
# jobs/configs/fashion.yaml on an embedded local Ray cluster, evaluate, index the validation
# images, then serve the model and query it over HTTP (embed, classify, search); print results.
# A small CPU variant: make demo DEMO_ARGS="train.epochs=2"
set -euo pipefail
cd "$(dirname "$0")/.."
PM="${VENV:-.venv}/bin/polymodal"
DATA=data/fashion-mnist
RUN="${DEMO_RUN:-demo}"

if [ ! -f "$DATA/manifest.json" ]; then
  "$PM" data ingest builtin:fashion-mnist "$DATA"
fi
"$PM" data inspect "$DATA" --rows 3
echo
start=$(date +%s)
"$PM" train jobs/configs/fashion.yaml "train.name=$RUN" "data.path=$DATA" "$@"
echo "training wall time: $(( $(date +%s) - start ))s"
echo
CKPT=$("${VENV:-.venv}/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['checkpoint'])" "runs/$RUN/metrics.json")
"$PM" eval "$CKPT" "$DATA"
echo
"$PM" index "$CKPT" "$DATA" "runs/$RUN/indexes/val-images" --modality image --split val
echo
"${VENV:-.venv}/bin/python" scripts/demo_serve.py "$CKPT" "$DATA" "runs/$RUN/indexes"
