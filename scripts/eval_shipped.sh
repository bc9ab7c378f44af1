#!/usr/bin/env bash
# The fair quality report of a checkpoint (docs/architecture.md, "Quality metrics"): Monolith and
# its nearest-code variant beside faiss at 4 bytes (OPQ4, RQ4x8, LSQ4x8) and 8 bytes (OPQ8, LSQ8x8),
# every method ranked by cosine over its unit-length reconstructions, baselines fitted on the
# same training files as the checkpoint (its provenance names them; 50,000 of them), paired
# standard errors against Monolith. Fitted baselines are kept in runs/baselines and read back.
# In-domain: the held-out test splits of the training sources (man: of the all-sources model). Unseen: every split of pydoc,
# changelog and info, which no shipped model trains on. Needs data/emb (scripts/build_data.sh).
# Usage: scripts/eval_shipped.sh [CHECKPOINT] [--record]  (extra flags go to monolith-train eval)
set -euo pipefail
ckpt=${1:-vqvae/checkpoints/monolith-wiki.safetensors}
shift || true
emb=${EMB:-data/emb}
source "$(dirname "$0")/fair_sets.sh"
train=()
while read -r f; do train+=(--train "$f"); done < <(python -c '
import sys
from vqvae.checkpoint import read_metadata
print("\n".join(read_metadata(sys.argv[1])["provenance"]["train_files"]))' "$ckpt")
monolith-train eval "monolith=$ckpt" --nearest "${train[@]}" --baseline-cache runs/baselines \
  --baselines OPQ4,PQ4 --baselines RQ4x8 --baselines LSQ4x8 --baselines OPQ8,PQ8 --baselines LSQ8x8 \
  "${fair_sets[@]}" \
  --json-out "${OUT:-runs/eval}.json" "$@"
