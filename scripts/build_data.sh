#!/usr/bin/env bash
# Rebuilds the training corpora and their embeddings under data/ (kept out of git).
# About 20 minutes on 2 CPU cores; needs 'apt-get install wordnet-base' and 'apt-get update'.
set -euo pipefail
out=${1:-data}
monolith-train corpus --out "$out/corpus"
for src in wordnet debian; do
  for split in train val test; do
    [ -f "$out/emb/$src.$split.npy" ] || monolith-train embed "$out/corpus/$src.$split.txt" "$out/emb/$src.$split.npy"
  done
done
for src in pydoc changelog; do
  for split in val test; do
    [ -f "$out/emb/$src.$split.npy" ] || monolith-train embed "$out/corpus/$src.$split.txt" "$out/emb/$src.$split.npy"
  done
done
