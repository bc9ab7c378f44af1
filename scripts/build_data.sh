#!/usr/bin/env bash
# Rebuilds the corpora and their embeddings under data/ (kept out of git).
# About 30 minutes on 2 CPU cores; needs 'apt-get update' and 'apt-get install wordnet-base'.
# Training sources (trainer.sources.TRAIN_SOURCES): wordnet, debian, man, readme — train/val/test
# splits. Test-only sources (OOD_SOURCES): pydoc, changelog, info — every split is embedded, since
# no shipped model trains on any of them and their evaluation databases should be large.
set -euo pipefail
out=${1:-data}
[ -f "$out/corpus/corpus.json" ] || monolith-train corpus --out "$out/corpus"
for src in wordnet debian pydoc changelog info man readme; do
  for split in train val test; do
    [ -f "$out/emb/$src.$split.npy" ] || monolith-train embed "$out/corpus/$src.$split.txt" "$out/emb/$src.$split.npy"
  done
done
