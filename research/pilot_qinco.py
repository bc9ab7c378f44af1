"""Pilot for issue 10: QINCo-style implicit codebooks at 4 bytes, judged by the fair report.

    python research/pilot_qinco.py [--epochs 8] [--hidden 256] [--train-candidates 8]

Why: every recipe change tried on MonolithWiki moved it and faiss LSQ4x8 together (docs/quality.md,
"Toward 1.25× LSQ4x8"); the evidence pointed at a more expressive code. This pilot measures one
before anything is built into the model library. Each of 4 steps has a base codebook C_m
[256, 384] (from faiss RQ4x8) and a small network f_m; the codeword of code k given the
reconstruction so far x̂ is  z + f_m(z),  z = C_m[k] + A_m C_m[k] + B_m x̂  (the idea of
Huijben et al., "Residual quantization with implicit neural codebooks", 2024; written here from
the paper's description). Encoding is greedy, each step trying the codes whose base codewords
are nearest the residual (QINCo2's pre-selection), so training costs a few network calls per
step rather than 256. f_m starts at zero: the pilot starts exactly at RQ4x8.

It prints the fair table (docs/architecture.md, "Quality metrics") with the shipped Monolith as
reference and faiss RQ4x8 / LSQ4x8 fitted on 50,000 of the same training vectors (read from
``runs/baselines`` when fitted there before). Needs data/emb (scripts/build_data.sh).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.cli import print_report  # noqa: E402
from trainer.evaluate import (  # noqa: E402
    EvalSet,
    Method,
    baseline_method,
    fit_baselines,
    monolith_method,
    quality_report,
    split_queries,
)
from trainer.validation import load_matrix  # noqa: E402
from vqvae.api import Monolith  # noqa: E402

STEPS, K, DIM = 4, 256, 384


class ImplicitStep(nn.Module):
    """One residual step: base codewords adjusted by a network of the reconstruction so far."""

    def __init__(self, base: np.ndarray, hidden: int) -> None:
        super().__init__()
        d = base.shape[1]
        self.base = nn.Parameter(torch.from_numpy(base.astype(np.float32)))
        self.of_code = nn.Linear(d, d, bias=False)
        self.of_context = nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, hidden), nn.Linear(hidden, d)
        for layer in (self.of_code, self.of_context, self.down):  # start exactly at the base codebook
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def codewords(self, idx: torch.Tensor, xhat: torch.Tensor) -> torch.Tensor:
        """[B, A] code indices, [B, d] reconstruction so far → [B, A, d] codewords."""
        table = self.base + self.of_code(self.base)  # [K, d], once per call: cheap
        z = table[idx] + self.of_context(xhat)[:, None, :]
        return z + self.down(F.relu(self.up(z)))

    def choose(self, r: torch.Tensor, xhat: torch.Tensor, a: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The code among the ``a`` nearest base codewords whose implicit codeword is nearest
        the residual ``r``, and that codeword."""
        with torch.no_grad():
            base_err = (self.base * self.base).sum(1)[None, :] - 2 * r @ self.base.T
            idx = base_err.topk(min(a, K), dim=1, largest=False).indices
        cands = self.codewords(idx, xhat)
        err = ((r[:, None, :] - cands) ** 2).sum(-1)
        j = err.argmin(dim=1)
        rows = torch.arange(len(r))
        return idx[rows, j], cands[rows, j]


class ImplicitRQ(nn.Module):
    def __init__(self, bases: list[np.ndarray], hidden: int) -> None:
        super().__init__()
        self.steps = nn.ModuleList(ImplicitStep(b, hidden) for b in bases)

    def forward(self, x: torch.Tensor, a: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes [B, 4], reconstruction, and the loss: the squared residual after every step."""
        xhat, codes, loss = torch.zeros_like(x), [], x.new_zeros(())
        for step in self.steps:
            k, c = step.choose(x - xhat, xhat, a)
            xhat = xhat + c
            loss = loss + ((x - xhat) ** 2).sum(-1).mean()
            codes.append(k)
        return torch.stack(codes, 1), xhat, loss

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        xhat = torch.zeros(len(codes), self.steps[0].base.shape[1])
        for m, step in enumerate(self.steps):
            xhat = xhat + step.codewords(codes[:, m : m + 1], xhat)[:, 0]
        return xhat


def rq_bases(train: np.ndarray) -> list[np.ndarray]:
    """faiss RQ4x8's codebooks, fitted on ``train``: the starting point."""
    rq = faiss.ResidualQuantizer(train.shape[1], STEPS, 8)
    rq.train(np.ascontiguousarray(train, dtype=np.float32))
    cb = faiss.vector_to_array(rq.codebooks).reshape(STEPS, K, train.shape[1])
    return [cb[m] for m in range(STEPS)]


def train_model(model: ImplicitRQ, x: np.ndarray, val: np.ndarray, args: argparse.Namespace) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * (len(x) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.05)
    gen = np.random.default_rng(0)
    bar = tqdm(total=steps, desc="pilot", unit="step")
    for epoch in range(args.epochs):
        perm = gen.permutation(len(x))
        for i in range(len(x) // args.batch):
            batch = torch.from_numpy(x[perm[i * args.batch : (i + 1) * args.batch]])
            _, _, loss = model(batch, args.train_candidates)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch)
        with torch.no_grad():
            _, xhat, _ = model(torch.from_numpy(val), args.eval_candidates)
        cos = F.cosine_similarity(xhat, torch.from_numpy(val)).mean().item()
        bar.write(f"epoch {epoch}: val reconstruction cosine {cos:.4f}")
    bar.close()


def pilot_method(model: ImplicitRQ, a: int, n_train: int) -> Method:
    model.eval()

    def encode(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = [model(torch.from_numpy(np.ascontiguousarray(x[i : i + 4096], dtype=np.float32)), a)[0]
                   for i in range(0, len(x), 4096)]
        return torch.cat(out).numpy().astype(np.uint8)

    def decode(codes: np.ndarray) -> np.ndarray:
        return model.decode(torch.from_numpy(codes.astype(np.int64))).numpy()

    return Method(f"implicit RQ (A={a})", encode, decode, STEPS, "pilot", K, n_train)


def eval_sets(emb: Path) -> list[EvalSet]:
    """The six sets of scripts/eval_shipped.sh: test splits in-domain, every split unseen."""
    sets = [split_queries(n, load_matrix([emb / f"{n}.test.npy"], DIM)) for n in ("wordnet", "debian", "man")]
    for n in ("pydoc", "changelog", "info"):
        sets.append(split_queries(n, load_matrix([emb / f"{n}.{s}.npy" for s in ("train", "val", "test")], DIM)))
    return sets


def fit_sample(x: np.ndarray, n: int = 50_000) -> np.ndarray:
    """The seeded subset faiss is fitted on (the same rows, so ``runs/baselines`` fits are reused)."""
    return x[np.sort(np.random.default_rng(0).choice(len(x), min(n, len(x)), replace=False))]


def report(rows: list[dict[str, object]], json_out: Path | None) -> None:
    """The fair table printed, and its rows written to ``json_out``."""
    print_report(rows)
    if json_out:
        json_out.write_text(json.dumps(rows, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--emb", type=Path, default=Path("data/emb"))
    p.add_argument("--sources", nargs="+", default=["wordnet", "debian"])
    p.add_argument("--checkpoint", default="monolith-wiki", help="the reference Monolith")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--train-candidates", type=int, default=8)
    p.add_argument("--eval-candidates", type=int, default=32)
    p.add_argument("--baseline-cache", type=Path, default=Path("runs/baselines"))
    p.add_argument("--json-out", type=Path, help="also write the report's rows as JSON")
    args = p.parse_args()
    torch.manual_seed(0)
    x = load_matrix([args.emb / f"{s}.train.npy" for s in args.sources], DIM)
    val = load_matrix([args.emb / f"{s}.val.npy" for s in args.sources], DIM)[:4000]
    fit = fit_sample(x)
    t0 = time.perf_counter()
    model = ImplicitRQ(rq_bases(fit), args.hidden)
    train_model(model, x, val, args)
    print(f"trained in {time.perf_counter() - t0:.0f} s on {len(x):,} vectors "
          f"({torch.get_num_threads()} threads)")
    methods = [monolith_method("monolith", Monolith.load(args.checkpoint)),
               pilot_method(model, args.eval_candidates, len(x))]
    methods += [baseline_method(b) for b in fit_baselines(["RQ4x8", "LSQ4x8"], fit, cache=args.baseline_cache)]
    report(quality_report(methods, eval_sets(args.emb)), args.json_out)


if __name__ == "__main__":
    main()
