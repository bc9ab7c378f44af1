"""Codes fitted to a collection (trainer/fit.py) against the generic checkpoint and faiss fitted alike.

    python bench/bench_fit.py [--sets pydoc changelog] [--limit N] [--epochs E] [--set KEY=VALUE ...]
                              [--threads 1] [--out docs/results/2026-12-04-fit.json]

Each unseen set of data/emb/ (its train, val and test splits concatenated) is one collection: a
seeded 1,000 rows are the queries, the rest the database. A random half of the database is
what every method is fitted on: the adapted model (``monolith-train fit``'s recipe, from the
shipped checkpoint), faiss OPQ4,PQ4 and LSQ4x8. All are then judged on the whole database by
the fair protocol (trainer/evaluate.py: reconstructions ranked by cosine against exact search,
recall 10@10 with paired standard errors against the generic checkpoint), with the default
encoding and nearest codes. Fit times are measured in this process, one after the other, with
the same threads, so their ratio holds on a busy machine where the seconds do not.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from timing import pin_threads  # noqa: E402

SETS = ("pydoc", "changelog", "info", "man")


def load_set(name: str):
    import numpy as np

    order = ("train", "val", "test")
    files = sorted(ROOT.glob(f"data/emb/{name}.*.npy"), key=lambda p: order.index(p.stem.split(".")[1]))
    if not files:
        raise SystemExit(f"no data/emb/{name}.*.npy (gitignored local embeddings; scripts/build_data.sh makes them)")
    return np.concatenate([np.load(p) for p in files]).astype(np.float32), [str(p.relative_to(ROOT)) for p in files]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=["pydoc", "changelog", "info"], choices=SETS)
    ap.add_argument("--limit", type=int, default=None, help="rows of each set used at most (seeded subset)")
    ap.add_argument("--epochs", type=float, default=None, help="override the recipe's epochs")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="a FitRecipe field KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--checkpoint", default="monolith-wiki")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = ap.parse_args()
    pin_threads(args.threads)

    import numpy as np
    import yaml

    from trainer.cli import print_report
    from trainer.evaluate import EvalSet, baseline_method, monolith_method, quality_report
    from trainer.fit import FitRecipe, fit
    from vqvae.api import Monolith
    from vqvae.baselines import fit_baseline
    from vqvae.config import EncodeConfig

    fields = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in args.overrides)}
    if args.epochs is not None:
        fields["epochs"] = args.epochs
    recipe = FitRecipe(threads=args.threads, seed=args.seed, **fields)
    generic = Monolith.load(args.checkpoint)
    out: dict = {"recipe": recipe.model_dump(mode="json"), "checkpoint": args.checkpoint, "threads": args.threads,
                 "machine": f"{platform.machine()}, {platform.processor() or '?'}; shared 2-core VM, times are noisy",
                 "date": time.strftime("%Y-%m-%d"), "sets": {}, "rows": []}
    for name in args.sets:
        x, files = load_set(name)
        rng = np.random.default_rng(args.seed)
        if args.limit and len(x) > args.limit:
            x = x[np.sort(rng.choice(len(x), args.limit, replace=False))]
        perm = rng.permutation(len(x))
        queries, db = x[perm[: args.queries]], x[perm[args.queries :]]
        half = db[np.sort(rng.permutation(len(db))[: len(db) // 2])]
        print(f"{name}: {len(x):,} rows, {len(queries):,} queries, fitting on {len(half):,}", file=sys.stderr,
              flush=True)
        adapted, report = fit(generic, half, recipe, progress=False)
        baselines = [fit_baseline(spec, half) for spec in ("OPQ4,PQ4", "LSQ4x8")]
        methods = [monolith_method("generic", generic),
                   monolith_method("generic (nearest)", Monolith(generic.checkpoint, encoding=EncodeConfig())),
                   monolith_method("adapted", adapted),
                   monolith_method("adapted (nearest)", Monolith(adapted.checkpoint, encoding=EncodeConfig())),
                   *[baseline_method(b) for b in baselines]]
        rows = quality_report(methods, [EvalSet(name, db, queries)], progress=False)
        lsq = next(r for r in rows if r["method"] == "LSQ4x8")["recall_10@10"]
        fit_s = {"adapted": report.fit_seconds, **{b.spec: b.fit_seconds for b in baselines}}
        for r in rows:
            r["fit_seconds"] = fit_s.get(r["method"].replace(" (nearest)", ""))
            r["x_lsq4x8"] = r["recall_10@10"] / lsq if lsq else None
        out["rows"] += rows
        out["sets"][name] = {"files": files, "rows": len(x), "fit_rows": len(half),
                             "fit": report.summary(),
                             "fit_checks": report.checks, "fit_cpu_seconds": report.fit_cpu_seconds,
                             "fit_seconds": fit_s, "fit_time_x_lsq4x8": report.fit_seconds / baselines[1].fit_seconds}
        print_report(rows)
        print(f"{name}: adapted {rows[2]['recall_10@10']:.3f} = {rows[2]['x_lsq4x8']:.2f}× LSQ4x8 "
              f"(nearest {rows[3]['x_lsq4x8']:.2f}×), generic {rows[0]['x_lsq4x8']:.2f}×; "
              f"fit {report.fit_seconds:.1f}s "
              f"= {out['sets'][name]['fit_time_x_lsq4x8']:.2f}× LSQ4x8's {baselines[1].fit_seconds:.1f}s "
              f"(stopped: {report.stopped}, best step {report.best_step}/{report.steps})", flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
