#!/usr/bin/env bash
# Rebuilds the training corpora and their embeddings under data/ (kept out of git).
# About 15 minutes on 2 CPU cores; needs 'apt-get install wordnet-base' and 'apt-get update'.
# wordnet and debian are the training sources (train/val/test splits); pydoc and changelog
# are out-of-domain test text that no shipped model trains on, so all their splits are embedded.
set -euo pipefail
out=${1:-data}
[ -f "$out/corpus/corpus.json" ] || monolith-train corpus --out "$out/corpus"
for src in wordnet debian pydoc changelog; do
  for split in train val test; do
    [ -f "$out/emb/$src.$split.npy" ] || monolith-train embed "$out/corpus/$src.$split.txt" "$out/emb/$src.$split.npy"
  done
done
