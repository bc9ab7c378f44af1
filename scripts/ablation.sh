#!/usr/bin/env bash
# Ablation of the shipped MonolithWiki recipe: each term or lever switched off (or, for the
# regularisers the recipe leaves off, switched on), trained the same way, then judged in one
# `monolith-train eval` run next to faiss at the same 4 bytes per vector.
#
#   bash scripts/ablation.sh [EPOCHS] [OUT]      # default 8 epochs (~4 min a variant on 2 cores)
#
# Needs the embeddings of scripts/build_data.sh. Variants already trained in OUT are reused.
set -euo pipefail
epochs=${1:-8}
out=${2:-runs/ablation}
config=configs/monolith-wiki.yaml

declare -A variants=(
  [recipe]=""
  [no_score_aware]="--set loss.score_aware=0"
  [no_commitment]="--set loss.codebook=0"
  [no_kmeans_init]="--set quantizer.init=random"
  [no_ema]="--set quantizer.ema=false"
  [no_reseed]="--set quantizer.reseed_every=0"
  [with_dropout]="--set model.dropout=0.1"
  [no_info_nce]="--set loss.info_nce=0"
  [no_refinement]="--set encoding.candidates=0"
  [plus_orthogonal]="--set loss.orthogonal=0.1"
  [plus_head_balance]="--set loss.head_balance=1.0"
  [plus_entropy]="--set loss.entropy=0.1"
  [plus_load_balance]="--set loss.load_balance=1.0"
  [seed_recipe]="--set quantizer.init=random --set quantizer.ema=false --set quantizer.reseed_every=0 \
    --set loss.score_aware=0 --set loss.cosine=0 --set loss.info_nce=0 --set loss.mse=1 --set loss.orthogonal=0.1 \
    --set loss.head_balance=1.0 --set loss.entropy=0.1 --set loss.load_balance=1.0 --set model.normalize_latent=false \
    --set optim.warmup_steps=0 --set encoding.candidates=0"
)
order=(recipe no_refinement no_score_aware no_info_nce no_commitment no_kmeans_init no_ema no_reseed with_dropout
       plus_orthogonal plus_head_balance plus_entropy plus_load_balance seed_recipe)

mkdir -p "$out"
checkpoints=()
for name in "${order[@]}"; do
  if [ ! -f "$out/$name/last.safetensors" ]; then
    echo "== training $name (${variants[$name]:-the recipe as configured})" >&2
    # shellcheck disable=SC2086  # the variant's flags are meant to split
    monolith-train train "$config" --overwrite --out-dir "$out/$name" --set "optim.epochs=$epochs" ${variants[$name]} \
      > "$out/$name.log" 2>&1 || { echo "training $name failed, see $out/$name.log" >&2; exit 1; }
  fi
  # last, not best: every variant judged after the same number of steps (a "best" picked on the
  # validation set adds the selection's own noise, about ±0.005 recall here)
  checkpoints+=("$name=$out/$name/last.safetensors")
done

# The fair report's sets; differences against the recipe with their paired standard errors;
# fitted baselines read back from runs/baselines.
emb=data/emb
source "$(dirname "$0")/fair_sets.sh"
monolith-train eval "${checkpoints[@]}" --baseline-cache runs/baselines \
  --train $emb/wordnet.train.npy --train $emb/debian.train.npy --baselines OPQ4,PQ4 --baselines LSQ4x8 \
  "${fair_sets[@]}" \
  --json-out "$out/ablation.json"
