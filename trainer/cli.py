"""``monolith-train``: corpus → embed → train → eval."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build corpora, embed, train and evaluate.")
console = Console(stderr=True)


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@app.command()
def corpus(
    out: Annotated[Path, typer.Option(help="folder for {source}.{split}.txt")] = Path("data/corpus"),
    sources: Annotated[list[str] | None, typer.Option("--source", help="repeatable")] = None,
) -> None:
    """Build deduplicated texts from WordNet glosses, Debian synopses, pydoc and changelogs."""
    from trainer.data import SOURCES, CorpusError, build_corpus

    try:
        counts = build_corpus(out, sources or list(SOURCES))
    except CorpusError as exc:
        fail(str(exc))
    table = Table("source", "train", "val", "test", title=f"corpus in {out}")
    for name, c in counts.items():
        table.add_row(name, str(c["train"]), str(c["val"]), str(c["test"]))
    Console().print(table)


@app.command()
def embed(
    texts: Annotated[Path, typer.Argument(help="one text per line")],
    out: Annotated[Path, typer.Argument(help="float32 .npy to write")],
    text_model: Annotated[Path | None, typer.Option(help="local sentence-transformers folder")] = None,
    batch_size: int = 64,
) -> None:
    """Embed a text file into a float32 [N, 384] .npy, with a progress bar."""
    from trainer.data import embed_file
    from vqvae.embedder import EmbedderError, TextEmbedder

    if not texts.is_file():
        fail(f"text file not found: {texts}")
    try:
        n = embed_file(TextEmbedder(text_model, batch_size=batch_size), texts, out)
    except (EmbedderError, ValueError) as exc:
        fail(str(exc))
    console.print(f"wrote {n} embeddings to {out}")


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML or JSON training config")],
    resume: Annotated[bool, typer.Option(help="continue from out_dir/last.state.safetensors")] = False,
    out_dir: Annotated[Path | None, typer.Option(help="override the config's out_dir")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="override one field, e.g. --set loss.info_nce=0.1 (repeatable)")] = None,
) -> None:
    """Train a model; writes best/last checkpoints and a resumable state to out_dir."""
    from trainer.config import ConfigError, load_config, parse_overrides
    from trainer.distributed import cleanup
    from trainer.loop import Trainer
    from trainer.monitor import TrainingDiverged
    from vqvae.checkpoint import CheckpointError

    try:
        over = parse_overrides(overrides or [])
        if out_dir:
            over["out_dir"] = str(out_dir)
        cfg = load_config(config, over)
        trainer = Trainer(cfg)
        result = trainer.run(resume=resume)
    except (ConfigError, CheckpointError, ValueError, KeyError, TrainingDiverged) as exc:
        fail(str(exc).strip("'\""))
    finally:
        cleanup()
    if trainer.dist.is_main:
        console.print(json.dumps(result, indent=2, default=float))


@app.command()
def landscape(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint (any bottleneck)")],
    data: Annotated[Path, typer.Option("--data", help="float32 .npy [N, 384] the loss is measured on")],
    out: Annotated[Path | None, typer.Option(help="folder for the PNGs (default: CHECKPOINT-landscape)")] = None,
    samples: Annotated[int, typer.Option(help="vectors of --data used (a seeded random subset)")] = 2048,
    steps: Annotated[int, typer.Option(help="grid points per direction")] = 21,
    radius: Annotated[float, typer.Option(help="grid half-width in units of the filter-normalised directions")] = 1.0,
    probes: Annotated[int, typer.Option(help="random perturbations per sharpness radius")] = 8,
    ascent_steps: Annotated[int, typer.Option(help="projected gradient-ascent steps per radius")] = 5,
    seed: int = 0,
) -> None:
    """The training loss around a checkpoint's weights: a 2-D contour PNG and a sharpness figure."""
    from trainer.data import load_embeddings
    from trainer.landscape import run_landscape
    from vqvae.checkpoint import CheckpointError, read_metadata

    if steps < 2 or radius <= 0 or samples < 2:
        fail("--steps must be ≥ 2, --radius > 0 and --samples ≥ 2")
    try:
        dim = int(read_metadata(checkpoint)["model_config"].get("input_dim", 384))
        x = load_embeddings(data, dim)
        if len(x) > samples:
            x = x[np.sort(np.random.default_rng(seed).choice(len(x), samples, replace=False))]
        result = run_landscape(checkpoint, x, out or checkpoint.with_name(checkpoint.stem + "-landscape"),
                               steps=steps, radius=radius, samples=probes, ascent_steps=ascent_steps, seed=seed)
    except (CheckpointError, ValueError) as exc:
        fail(str(exc))
    console.print(json.dumps(result.summary(), indent=2))


def _parse_set(spec: str) -> tuple[str, list[Path], Path | None]:
    """NAME=DB.npy[+MORE.npy...][:QUERIES.npy]"""
    name, _, files = spec.partition("=")
    if not files:
        fail(f"--set takes NAME=DB.npy[+MORE.npy][:QUERIES.npy], got {spec!r}")
    db, _, queries = files.partition(":")
    return name, [Path(p) for p in db.split("+")], Path(queries) if queries else None


@app.command("eval")
def evaluate(
    checkpoints: Annotated[list[str], typer.Argument(
        help="checkpoints to judge, each PATH or NAME=PATH (an ablation judges several in one run)")],
    train_data: Annotated[list[Path], typer.Option("--train", help="vectors the baselines are fitted on")],
    sets: Annotated[list[str], typer.Option(
        "--set", help="NAME=DB.npy[+MORE.npy][:QUERIES.npy]; without QUERIES a random 1000 rows query the rest; "
        "repeatable")],
    baselines: Annotated[str, typer.Option(help="comma-separated faiss quantizers")] = "PQ4x8,OPQ4,PQ4,RQ4x8",
    max_train: Annotated[int, typer.Option(help="baseline training vectors")] = 50_000,
    n_queries: int = 1000,
    json_out: Annotated[Path | None, typer.Option(help="also write the rows as JSON")] = None,
    nearest: Annotated[bool, typer.Option(
        help="also judge each checkpoint with nearest codes (no decoder-aware refinement)")] = False,
    record: Annotated[bool, typer.Option(
        help="write the report into the (single) checkpoint's metadata, metrics.eval_report")] = False,
) -> None:
    """Recall and reconstruction of a checkpoint next to faiss at the same 4 bytes per vector."""
    from trainer.data import load_embeddings
    from trainer.evaluate import EvalSet, fit_baseline, monolith_codec, quality_report, split_queries
    from vqvae.api import Monolith
    from vqvae.checkpoint import CheckpointError
    from vqvae.config import EncodeConfig

    try:
        models = _load_models(checkpoints)
        dim = next(iter(models.values())).config.input_dim
        train = np.concatenate([load_embeddings(p, dim) for p in train_data])
        rng = np.random.default_rng(0)
        if len(train) > max_train:
            train = train[np.sort(rng.choice(len(train), max_train, replace=False))]
        eval_sets = []
        for spec in sets:
            name, db, queries = _parse_set(spec)
            x = np.concatenate([load_embeddings(p, dim) for p in db])
            eval_sets.append(EvalSet(name, x, load_embeddings(queries, dim)[:n_queries]) if queries
                             else split_queries(name, x, n_queries))
    except (CheckpointError, ValueError) as exc:
        fail(str(exc))
    # "OPQ4,PQ4" holds a comma: split on commas that start a new known name.
    names = [b.replace("OPQ4+PQ4", "OPQ4,PQ4") for b in baselines.replace("OPQ4,PQ4", "OPQ4+PQ4").split(",") if b]
    methods = {}
    for name, m in models.items():
        methods[name] = monolith_codec(m)
        if nearest and m.encoding.refines:
            methods[f"{name} (nearest)"] = monolith_codec(Monolith(m.checkpoint, encoding=EncodeConfig()))
    for b in names:
        with console.status(f"fitting {b} on {len(train)} vectors"):
            try:
                methods[b] = fit_baseline(b, train)
            except ValueError as exc:
                fail(str(exc))
    if record and len(models) != 1:
        fail("--record writes into one checkpoint; name exactly one")
    rows = quality_report(methods, eval_sets)
    print_report(rows)
    if json_out:
        json_out.write_text(json.dumps(rows, indent=2))
    if record:
        from vqvae.checkpoint import record_metadata

        (model,) = models.values()
        metrics = {**model.metadata.get("metrics", {}), "eval_report": rows,
                   "eval_train_vectors": len(train), "eval_baselines": names}
        record_metadata(model.checkpoint.path, metrics=metrics)
        console.print(f"report recorded in {model.checkpoint.path}")


@app.command()
def health(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint to judge")],
    data: Annotated[list[Path], typer.Option("--data", help="float32 .npy [N, 384] to encode; repeatable")],
    json_out: Annotated[Path | None, typer.Option(help="also write the statistics as JSON")] = None,
) -> None:
    """Codebook health on held-out vectors: codes used, entropy, Zipf fit per head, and a status."""
    from trainer.data import load_embeddings
    from vqvae.api import Monolith
    from vqvae.checkpoint import CheckpointError
    from vqvae.health import codebook_health
    from vqvae.losses import code_histogram

    try:
        model = Monolith.load(checkpoint)
        x = np.concatenate([load_embeddings(p, model.config.input_dim) for p in data])
    except (CheckpointError, ValueError) as exc:
        fail(str(exc))
    import torch

    counts = code_histogram(torch.from_numpy(model.encode(x).astype(np.int64)), model.config.codebook_size)
    report = codebook_health(counts.numpy())
    table = Table("head", "used", "dead", "entropy bits", "normalised", "perplexity", "Zipf α", "R²", "top 10%",
                  title=f"codebook health over {len(x)} vectors ({model.encoding}): {report.status}")
    for h in report.heads:
        table.add_row(str(h.head), str(h.used), str(h.dead), f"{h.entropy_bits:.2f}", f"{h.normalized_entropy:.3f}",
                      f"{h.perplexity:.0f}", "-" if h.zipf_alpha is None else f"{h.zipf_alpha:.2f}",
                      "-" if h.zipf_r2 is None else f"{h.zipf_r2:.2f}", f"{h.top10_share:.1%}")
    Console(width=140).print(table)
    for reason in report.reasons:
        console.print(f"  {reason}")
    if json_out:
        json_out.write_text(report.model_dump_json(indent=2))


def _load_models(specs: list[str]) -> dict:
    """PATH or NAME=PATH → {name: Monolith}; one unnamed checkpoint is called "monolith"."""
    from vqvae.api import Monolith

    models = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = ("monolith" if len(specs) == 1 else Path(spec).parent.name or Path(spec).stem), spec
        if name in models:
            fail(f"two checkpoints are both called {name!r}: name them NAME=PATH")
        models[name] = Monolith.load(Path(path))
    dims = {m.config.input_dim for m in models.values()}
    if len(dims) > 1:
        fail(f"the checkpoints take different input dimensions {sorted(dims)}")
    return models


def print_report(rows: list[dict]) -> None:
    cols = ["recall_10@10", "recall_1@10", "recall_10@100", "cosine", "rel_sq_error", "codes_used",
            "norm_entropy_min"]
    table = Table("set", "method", *cols, title="quality at 4 bytes/vector (search over reconstructions)")
    for r in rows:
        table.add_row(r["set"], r["method"], *[
            "-" if r.get(c) is None else (f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c])) for c in cols
        ])
    Console(width=160).print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
