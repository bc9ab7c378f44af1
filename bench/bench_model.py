"""Monolith.encode / decode throughput next to the arithmetic limit, in one process.

    python bench/bench_model.py [--seconds 2] [--threads N] [--encoding C:S ...]

For batch 1, 100 and 4096 it times:
  encode          Monolith.encode with nearest codes (numpy in → uint8 codes out: checks,
                  encoder, LayerNorm, GELU, per-head normalisation, nearest code per head)
  linear chain    the bare matmuls of the same shapes with torch.nn.functional.linear:
                  384→1024→512 then the 512×(4·256) distance product — the arithmetic limit
  decode          Monolith.decode (codes → float32 [N, 384])
  linear chain    code lookup + 512→1024→384 linear layers
  refine          Monolith.encode with the checkpoint's decoder-aware encoding (vqvae/refine.py),
                  the shipped default: H·candidates·sweeps decoder tails per row, shared against
                  the encoder's chain (the limit a one-pass encoder could reach)
  CxS             with --encoding C:S: the same with C candidates and S sweeps (e.g. 8x1)

"share" is Monolith's rows/s over the chain's rows/s measured in the same run, so a busy
machine moves both. Batch-1 latency is the median over the timed calls.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import timed_runs  # noqa: E402

from vqvae.api import Monolith  # noqa: E402
from vqvae.config import EncodeConfig  # noqa: E402

BATCHES = (1, 100, 4096)


def linear_chains(m: Monolith) -> tuple[Callable, Callable]:
    """The same matmul shapes as the model, weights copied, nothing else."""
    sd = {k: v.detach().clone() for k, v in m.model.state_dict().items()}
    cb = sd["quantizer.codebooks"]  # [H, K, D]
    h, k, d = cb.shape
    cb_flat = cb.reshape(h * k, d)

    def enc(x: torch.Tensor) -> torch.Tensor:
        z = F.linear(F.linear(x, sd["encoder.0.weight"], sd["encoder.0.bias"]),
                     sd["encoder.4.weight"], sd["encoder.4.bias"])
        return F.linear(z.reshape(-1, d), cb_flat)  # every head slice against every code

    def dec(codes: torch.Tensor) -> torch.Tensor:
        z = cb[torch.arange(h), codes].reshape(len(codes), h * d)
        return F.linear(F.linear(z, sd["decoder.0.weight"], sd["decoder.0.bias"]),
                        sd["decoder.4.weight"], sd["decoder.4.bias"])

    return torch.inference_mode()(enc), torch.inference_mode()(dec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="timing budget per row")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--encoding", action="append", default=[], type=EncodeConfig.from_spec, metavar="C:S",
                    help="also time encoding with C candidates and S sweeps (e.g. 8:1); repeatable")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    refined = Monolith.load(args.checkpoint)
    m = Monolith(refined.checkpoint, encoding=EncodeConfig())  # nearest codes
    enc_chain, dec_chain = linear_chains(m)
    rng = np.random.default_rng(0)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, checkpoint {m.sha256[:12]}, refine: {refined.encoding}")
    print(f"{'op':<8}{'batch':>7}{'monolith rows/s':>17}{'chain rows/s':>14}{'share':>8}{'p50 ms':>9}")
    for n in BATCHES:
        x = rng.standard_normal((n, m.config.input_dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        codes = m.encode(x)
        xt, ct = torch.from_numpy(x), torch.from_numpy(codes.astype(np.int64))
        t_enc, t_dec = (statistics.median(timed_runs(f, args.seconds, warmup=2)) for f in (lambda xt=xt: enc_chain(xt),
                                                                             lambda ct=ct: dec_chain(ct)))
        rows = [("encode", lambda x=x: m.encode(x), t_enc), ("decode", lambda c=codes: m.decode(c), t_dec)]
        if refined.encoding.refines:  # the checkpoint's default encoding, judged against the same chain
            rows.insert(1, ("refine", lambda x=x: refined.encode(x), t_enc))
        for e in args.encoding:
            other = Monolith(m.checkpoint, encoding=e)
            rows.insert(-1, (e.label, lambda x=x, other=other: other.encode(x), t_enc))
        for op, ours, t_chain in rows:
            t_ours = statistics.median(timed_runs(ours, args.seconds, warmup=2))
            print(f"{op:<8}{n:>7}{n / t_ours:>17,.0f}{n / t_chain:>14,.0f}{t_chain / t_ours:>8.0%}"
                  f"{t_ours * 1e3:>9.3f}")


if __name__ == "__main__":
    main()
