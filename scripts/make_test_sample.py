"""Rebuilds tests/data/real_sample.npy: 512 WordNet glosses + 512 Debian package descriptions.

Seeded random rows of the validation splits that scripts/build_data.sh embeds with
all-MiniLM-L6-v2, so tests can train on real embeddings offline in seconds.

    python scripts/make_test_sample.py [data/emb]
"""

import sys
from pathlib import Path

import numpy as np

emb = Path(sys.argv[1] if len(sys.argv) > 1 else "data/emb")
rng = np.random.default_rng(0)
parts = []
for source in ("wordnet", "debian"):
    x = np.load(emb / f"{source}.val.npy")
    parts.append(x[np.sort(rng.choice(len(x), 512, replace=False))])
out = Path(__file__).resolve().parents[1] / "tests" / "data" / "real_sample.npy"
np.save(out, np.concatenate(parts).astype(np.float32))
print(f"wrote {out}")
