# The six sets of the fair report, as `monolith-train eval` flags in the array fair_sets; sourced
# by eval_shipped.sh and ablation.sh so that both judge on the same sets. In-domain: the
# held-out test splits of wordnet, debian and man. Unseen: every split of pydoc, changelog and
# info, which no shipped model trains on. Set emb (the embeddings folder) before sourcing.
all() { echo "$emb/$1.train.npy+$emb/$1.val.npy+$emb/$1.test.npy"; }
fair_sets=(
  --data "wordnet=$emb/wordnet.test.npy" --data "debian=$emb/debian.test.npy" --data "man=$emb/man.test.npy"
  --data "pydoc=$(all pydoc)" --data "changelog=$(all changelog)" --data "info=$(all info)"
)
