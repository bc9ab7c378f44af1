"""Two pilots for issue 10 built around faiss LSQ4x8, judged by the fair report.

    python research/pilot_lsq.py decoder [--epochs 12]     # LSQ codes + a neural decoder
    python research/pilot_lsq.py precondition [--alphas 0 1 0.5 -0.5] [--fit 20000]
    python research/pilot_lsq.py ceiling                   # LSQ4x8 fitted on each test set itself

Why: LSQ4x8 is the 4-byte quantizer Monolith has to beat, and it encodes fast. Two questions
decide whether building on it pays:

* ``decoder``: keep LSQ's codes (its fast encoder) and learn what they mean. A network reads the
  additive reconstruction and one embedding per code and adds a correction, starting at exactly
  LSQ's own decoding (the last layer is zero). If a learnt decoder of fixed codes beat LSQ on text
  neither saw, the fast path would be LSQ's encoder.
* ``precondition``: fit LSQ in the space x' = (x − mean) Σ^(α/2) and map the decoding back, so
  the quantizer spends its error where the data (and so the queries) vary most (α > 0) or evenly
  (α < 0). α = 0 is plain LSQ on centred data, the paired reference.

* ``ceiling``: how much of the gap on unseen text is the domain? LSQ4x8 fitted on each unseen
  set's own train split (a diagnostic, never a method: test text is off limits for training),
  beside LSQ4x8 fitted on the training sources, on the whole set (transductive for the own
  fit: its rows are most of the database) and on the val + test splits alone (no fit saw them).

All print the fair table (docs/architecture.md, "Quality metrics") beside the shipped Monolith.
Needs data/emb (scripts/build_data.sh).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pilot_qinco import eval_sets, fit_sample, report  # noqa: E402

from trainer.evaluate import (  # noqa: E402
    Method,
    baseline_method,
    fit_baselines,
    monolith_method,
    quality_report,
    split_queries,
)
from trainer.validation import load_matrix  # noqa: E402
from vqvae.api import Monolith  # noqa: E402
from vqvae.losses import similarity_distillation_loss  # noqa: E402

DIM = 384


def lsq_codebooks(index: faiss.Index) -> np.ndarray:
    """The additive codebooks [M, K, d] of a fitted faiss LSQ index."""
    aq = faiss.downcast_index(index).aq
    return faiss.vector_to_array(aq.codebooks).reshape(aq.M, 1 << aq.nbits.at(0), aq.d).astype(np.float32)


class NeuralDecoder(nn.Module):
    """codes [B, M] → unit vectors: the additive sum plus a learnt correction (zero at the start)."""

    def __init__(self, codebooks: np.ndarray, embed: int = 128, hidden: int = 1024, dropout: float = 0.1) -> None:
        super().__init__()
        m, k, d = codebooks.shape
        self.codebooks = nn.Parameter(torch.from_numpy(codebooks.copy()))
        self.embed = nn.Parameter(torch.randn(m, k, embed) * 0.02)
        self.net = nn.Sequential(
            nn.Linear(d + m * embed, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, d))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.register_buffer("heads", torch.arange(m), persistent=False)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        additive = self.codebooks[self.heads, codes].sum(1)
        context = torch.cat([additive, self.embed[self.heads, codes].flatten(1)], 1)
        return F.normalize(additive + self.net(context), dim=-1)


def train_decoder(model: NeuralDecoder, codes: np.ndarray, x: np.ndarray, epochs: int, batch: int = 1024,
                  lr: float = 1e-3, distill: float = 0.0) -> list[float]:
    """Minimise 1 − cosine(decoded, x) over the fixed codes, plus ``distill`` × the trainer's
    similarity distillation (the batch's exact score distribution as teacher, τ = 0.05);
    returns the loss of each epoch's last batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * (len(x) // batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    c, v = torch.from_numpy(codes.astype(np.int64)), torch.from_numpy(x)
    gen, losses = torch.Generator().manual_seed(0), []
    model.train()
    for _ in tqdm(range(epochs), desc="decoder", unit="epoch"):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(max(1, len(x) // batch)):
            rows = perm[i * batch : (i + 1) * batch]
            decoded = model(c[rows])
            loss = 1 - (decoded * v[rows]).sum(-1).mean()
            if distill:
                loss = loss + distill * similarity_distillation_loss(decoded, v[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def precondition(fit: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, A, A⁻¹) with A = Σ^(α/2), Σ the covariance of ``fit``."""
    mean = fit.mean(0)
    w, v = np.linalg.eigh(np.cov((fit - mean).T))
    w = np.maximum(w, 1e-8)
    return (mean.astype(np.float32), ((v * w ** (alpha / 2)) @ v.T).astype(np.float32),
            ((v * w ** (-alpha / 2)) @ v.T).astype(np.float32))


def preconditioned_lsq(fit: np.ndarray, alpha: float, spec: str = "LSQ4x8") -> tuple[Callable, Callable]:
    """``spec`` fitted on the transformed vectors: (encode, decode) in the original space."""
    mean, a, a_inv = precondition(fit, alpha)
    index = faiss.index_factory(fit.shape[1], spec)
    index.train(np.ascontiguousarray((fit - mean) @ a))

    def encode(x: np.ndarray) -> np.ndarray:
        return index.sa_encode(np.ascontiguousarray((x - mean) @ a, dtype=np.float32))

    def decode(codes: np.ndarray) -> np.ndarray:
        return index.sa_decode(np.ascontiguousarray(codes, dtype=np.uint8)) @ a_inv + mean

    return encode, decode


def decoder_methods(x: np.ndarray, fit: np.ndarray, args: argparse.Namespace) -> list[Method]:
    lsq = fit_baselines(["LSQ4x8"], fit, cache=args.baseline_cache)[0]
    model = NeuralDecoder(lsq_codebooks(lsq.index), hidden=args.hidden)
    t0 = time.perf_counter()
    losses = train_decoder(model, lsq.encode(x), x, args.epochs, distill=args.distill)
    print(f"decoder trained in {time.perf_counter() - t0:.0f} s, last loss {losses[-1]:.4f}")

    def decode(codes: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(codes.astype(np.int64))).numpy()

    name = "LSQ4x8 codes + neural decoder" + (f", distill {args.distill:g}" if args.distill else "")
    return [Method(name, lsq.encode, decode, 4, "pilot", 256, len(x)),
            baseline_method(lsq)]


def precondition_methods(x: np.ndarray, args: argparse.Namespace) -> list[Method]:
    fit = fit_sample(x, args.fit)
    out = []
    for alpha in tqdm(args.alphas, desc=f"fitting LSQ4x8 on {len(fit)} vectors", unit="alpha"):
        encode, decode = preconditioned_lsq(fit, alpha)
        out.append(Method(f"LSQ4x8, centred, Σ^{alpha:g}/2", encode, decode, 4, "pilot", 256, len(fit)))
    return out


def ceiling_rows(x: np.ndarray, args: argparse.Namespace, reference: Method) -> list[dict[str, object]]:
    """Per unseen set: Monolith, LSQ4x8 fitted on the training sources, and LSQ4x8 fitted on the
    set's own train split; judged on the set as in the fair table (every split: transductive for
    the own fit) and on its val + test splits alone (which no fit saw: the domain's effect)."""
    fitted = baseline_method(fit_baselines(["LSQ4x8"], fit_sample(x), cache=args.baseline_cache)[0])
    rows: list[dict[str, object]] = []
    for name, whole in zip(("pydoc", "changelog", "info"), eval_sets(args.emb)[3:], strict=True):
        own = load_matrix([args.emb / f"{name}.train.npy"], DIM)
        lsq = fit_baselines(["LSQ4x8"], fit_sample(own), cache=args.baseline_cache)[0]
        method = Method(f"LSQ4x8 fitted on {name}.train", lsq.encode, lsq.decode, 4, "pilot", 256, len(own))
        held_out = split_queries(f"{name} val+test",
                                 load_matrix([args.emb / f"{name}.{s}.npy" for s in ("val", "test")], DIM))
        rows += quality_report([reference, fitted, method], [whole, held_out])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("probe", choices=["decoder", "precondition", "ceiling"])
    p.add_argument("--emb", type=Path, default=Path("data/emb"))
    p.add_argument("--sources", nargs="+", default=["wordnet", "debian"])
    p.add_argument("--checkpoint", default="monolith-wiki", help="the reference Monolith")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--distill", type=float, default=0.0, help="decoder: weight of the similarity distillation term")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 1.0, 0.5, -0.5])
    p.add_argument("--fit", type=int, default=20_000, help="precondition: vectors each LSQ is fitted on")
    p.add_argument("--baseline-cache", type=Path, default=Path("runs/baselines"))
    p.add_argument("--json-out", type=Path, help="also write the report's rows as JSON")
    args = p.parse_args()
    torch.manual_seed(0)
    x = load_matrix([args.emb / f"{s}.train.npy" for s in args.sources], DIM)
    methods = [monolith_method("monolith", Monolith.load(args.checkpoint))]
    if args.probe == "ceiling":
        report(ceiling_rows(x, args, methods[0]), args.json_out)
        return
    if args.probe == "decoder":
        methods += decoder_methods(x, fit_sample(x), args)
    else:
        methods += precondition_methods(x, args)
    report(quality_report(methods, eval_sets(args.emb)), args.json_out)


if __name__ == "__main__":
    main()
