"""``monolith-train``: corpus → embed → train → eval."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, NoReturn

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from vqvae.config import EncodeConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build corpora, embed, train and evaluate.")
console = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """How every command fails: one line ``error: <message>`` on stderr and exit status 2, no
    traceback (results go to stdout). A multi-line message (a config's list of invalid fields)
    is joined into that one line."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    text = ""
    for line in lines:
        text += line if not text else (" " if text.endswith(":") else "; ") + line
    typer.echo(f"error: {text}", err=True)
    raise typer.Exit(2)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@app.command()
def corpus(
    out: Annotated[Path, typer.Option(help="folder for {source}.{split}.txt")] = Path("data/corpus"),
    sources: Annotated[list[str] | None, typer.Option("--source", help="repeatable")] = None,
) -> None:
    """Build deduplicated texts from every source of trainer.sources (training sources first)."""
    from trainer.data import build_corpus
    from trainer.sources import SOURCES, CorpusError

    try:
        counts = build_corpus(out, sources or list(SOURCES))
    except (CorpusError, OSError) as exc:
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
    except (EmbedderError, ValueError, OSError) as exc:
        fail(str(exc))
    console.print(f"wrote {n} embeddings to {out}")


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML or JSON training config")],
    resume: Annotated[bool, typer.Option(help="continue from out_dir/last.state.safetensors")] = False,
    overwrite: Annotated[bool, typer.Option(help="delete a previous run in out_dir and start again")] = False,
    out_dir: Annotated[Path | None, typer.Option(help="override the config's out_dir")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="override one field, e.g. --set loss.info_nce=0.1 (repeatable)")] = None,
) -> None:
    """Train a model; writes best/last checkpoints and a resumable state to out_dir (one that
    already holds a run needs --resume or --overwrite)."""
    from trainer.config import ConfigError, load_config, parse_overrides
    from trainer.distributed import cleanup
    from trainer.loop import Trainer
    from trainer.monitor import TrainingDiverged
    from trainer.outdir import claim
    from vqvae.checkpoint import CheckpointError

    try:
        over = parse_overrides(overrides or [])
        if out_dir:
            over["out_dir"] = str(out_dir)
        cfg = load_config(config, over)
        claim(cfg.out_dir, resume=resume, overwrite=overwrite, main=os.environ.get("RANK", "0") == "0")
        trainer = Trainer(cfg)
        result = trainer.run(resume=resume)
    except (ConfigError, CheckpointError, ValueError, KeyError, TrainingDiverged, OSError) as exc:
        fail(str(exc).strip("'\""))
    finally:
        cleanup()
    if trainer.dist.is_main:
        typer.echo(json.dumps(result, indent=2, default=float))


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
                               steps=steps, radius=radius, samples=probes, ascent_steps=ascent_steps, seed=seed,
                               progress=True)
    except (CheckpointError, ValueError, OSError, ImportError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(result.summary(), indent=2))


def _parse_data(spec: str) -> tuple[str, list[Path], Path | None]:
    """eval's ``--data NAME=DB.npy[+MORE.npy...][:QUERIES.npy]``"""
    name, _, files = spec.partition("=")
    if not files:
        fail(f"--data takes NAME=DB.npy[+MORE.npy][:QUERIES.npy], got {spec!r}")
    db, _, queries = files.partition(":")
    return name, [Path(p) for p in db.split("+")], Path(queries) if queries else None


@app.command()
def distill(
    checkpoint: Annotated[Path, typer.Argument(help="the trained .safetensors to distil")],
    out: Annotated[Path, typer.Argument(help="where the distilled checkpoint goes")],
    train_data: Annotated[list[Path], typer.Option("--train", help="float32 .npy [N, 384]; repeatable")],
    val_data: Annotated[list[Path], typer.Option("--val", help="held-out .npy that picks the best round")],
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="a DistillConfig field, KEY=VALUE (e.g. rounds=3, teacher.candidates=16)")] = None,
) -> None:
    """Teach the encoder the decoder-aware search's codes, so nearest codes (the fast path) are the good ones."""
    from pydantic import ValidationError

    from trainer.config import ConfigError, parse_overrides
    from trainer.distill import DistillConfig, run_distillation

    try:
        cfg = DistillConfig.model_validate(parse_overrides(overrides or []))
        history = run_distillation(checkpoint, train_data, val_data, out, cfg)
    except (ConfigError, ValidationError, ValueError, OSError) as exc:
        fail(str(exc))
    table = Table("round", "agreement", "val recall 10@10, nearest", "val recall 10@10, searched",
                  title=f"distilled {checkpoint.name} → {out}")
    for row in history:
        table.add_row(str(row["round"]), f"{row.get('agreement_after', float('nan')):.3f}",
                      f"{row['val_nearest_recall_10@10']:.4f}", f"{row['val_searched_recall_10@10']:.4f}")
    Console().print(table)


@app.command("fit")
def fit_command(
    vectors: Annotated[Path, typer.Argument(help="the collection's rows: float32 .npy [N, 384]")],
    out: Annotated[Path, typer.Option("--out", help="the fitted checkpoint (.safetensors) to write")],
    base: Annotated[str | None, typer.Option("--from", help="checkpoint to start from, a path or a shipped name "
                                             "(default: $MONOLITH_CHECKPOINT or monolith-wiki)")] = None,
    epochs: Annotated[float | None, typer.Option(help="passes over the training rows (default: the recipe's)")] = None,
    lr: Annotated[float | None, typer.Option(help="peak learning rate")] = None,
    parts: Annotated[str | None, typer.Option(help="what moves: all, or decoder_codebooks (encoder kept)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="rows per step")] = None,
    held_out: Annotated[float | None, typer.Option(help="share of the rows held out to pick the best state")] = None,
    patience: Annotated[int | None, typer.Option(
        help="held-out checks without progress before stopping (0: never)")] = None,
    budget: Annotated[float | None, typer.Option(help="CPU seconds the training may take at most")] = None,
    threads: Annotated[int | None, typer.Option(help="torch and faiss threads")] = None,
    min_rows: Annotated[int | None, typer.Option(help="override the measured minimum of rows (at your risk)")] = None,
    baselines: Annotated[list[str] | None, typer.Option(
        "--baselines", help="faiss index_factory strings fitted on the same rows for the report; repeatable "
        "(default: OPQ4,PQ4 and LSQ4x8; 'none': none)")] = None,
    json_out: Annotated[Path | None, typer.Option(help="also write the fit report and the table rows as JSON")] = None,
) -> None:
    """Fit a checkpoint's codes to one collection: fine-tune it on the rows (a held-out share picks
    the best state), print the fair report on the held-out rows next to faiss fitted on the same
    training rows, and write a checkpoint that MONOLITH_CHECKPOINT=OUT serves."""
    from pydantic import ValidationError

    from trainer.data import load_embeddings
    from trainer.evaluate import baseline_method, fit_baselines, monolith_method, quality_report, split_queries
    from trainer.fit import FitError, FitRecipe, fit, save_fitted, split_rows
    from vqvae.api import Monolith
    from vqvae.baselines import BaselineError
    from vqvae.checkpoint import CheckpointError

    given = {"epochs": epochs, "lr": lr, "parts": parts, "batch_size": batch_size, "held_out": held_out,
             "patience": patience, "budget_seconds": budget, "threads": threads, "min_rows": min_rows}
    specs = [] if baselines == ["none"] else list(dict.fromkeys(baselines or ["OPQ4,PQ4", "LSQ4x8"]))
    try:
        recipe = FitRecipe.model_validate({k: v for k, v in given.items() if v is not None})
        generic = Monolith.load(base)
        x = load_embeddings(vectors, generic.config.input_dim)
        console.print(f"fitting {generic.checkpoint.path.name} to {len(x):,} rows of {vectors}")
        adapted, report = fit(generic, x, recipe, progress=True)
        tr, va = split_rows(len(x), recipe)
        fitted = fit_baselines(specs, np.ascontiguousarray(x[tr]), progress=True) if specs else []
        save_fitted(adapted, out)
        Monolith.load(out)  # what serving will do: the file loads and verifies
    except (ValidationError, FitError, CheckpointError, BaselineError, ValueError, OSError) as exc:
        fail(str(exc))
    methods = [monolith_method("generic", generic), monolith_method("adapted", adapted),
               *[baseline_method(b) for b in fitted]]
    rows = quality_report(methods, [split_queries("held-out", x[va], min(1000, len(va) // 5), seed=recipe.seed)])
    seconds = {"adapted": report.fit_seconds, **{b.spec: b.fit_seconds for b in fitted}}
    for r in rows:
        r["fit_seconds"] = seconds.get(str(r["method"]))
    print_report(rows)
    table = Table("method", "fit on", "fit seconds", title="fit time, this process")
    for name, sec in seconds.items():
        table.add_row(name, f"{report.train_rows:,}", f"{sec:.1f}")
    Console().print(table)
    typer.echo(f"{report.stopped}: best held-out check at step {report.best_step} of {report.steps}"
               f"{' (the start: generic weights kept)' if report.kept_generic else ''}; wrote {out} "
               f"(serve it with MONOLITH_CHECKPOINT={out})")
    if json_out:
        try:
            json_out.write_text(json.dumps({"report": report.model_dump(mode="json"), "rows": rows}, indent=2,
                                           default=float))
        except OSError as exc:
            fail(str(exc))


@app.command()
def encode(
    source: Annotated[Path, typer.Argument(help="float .npy [N, 384] (memory-mapped) or .parquet (with --column)")],
    out: Annotated[Path, typer.Argument(help="uint8 .npy [N, 4] of codes to write")],
    column: Annotated[str | None, typer.Option(help="Parquet column holding the embeddings (lists of floats)")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="checkpoint (default: the shipped one)")] = None,
    candidates: Annotated[int | None, typer.Option(
        help="override the checkpoint's decoder-aware candidates (0: nearest codes, fastest)")] = None,
    chunk: Annotated[int, typer.Option(help="rows per chunk (the unit of work and of resumption)")] = 16_384,
    workers: Annotated[int, typer.Option(help="worker processes (0: one per core; 1: this process)")] = 0,
    threads: Annotated[int, typer.Option(help="torch threads when --workers 1 (0: torch's default)")] = 0,
    use_ray: Annotated[bool, typer.Option("--ray", help="run as a Ray Data job (pip install 'monolith[ray]')")] = False,
    replicas: Annotated[int, typer.Option(help="with --ray: model replicas (one CPU each)")] = 2,
    ray_address: Annotated[str | None, typer.Option(help="with --ray: cluster address (default RAY_ADDRESS or "
                                                         "a local cluster)")] = None,
    overwrite: Annotated[bool, typer.Option(help="encode again even if OUT exists")] = False,
) -> None:
    """Encode a large embedding file into codes: chunked, on all cores (or Ray), resumable after a
    crash (run the same command again), equal bit for bit to Monolith.encode."""
    from trainer.bulk import BulkError, encode_file
    from vqvae.api import Monolith
    from vqvae.checkpoint import CheckpointError

    try:
        monolith = Monolith.load(checkpoint, candidates=candidates)
        report = encode_file(source, out, monolith, column=column, chunk=chunk, workers=workers, threads=threads,
                             ray=use_ray, replicas=replicas, ray_address=ray_address, overwrite=overwrite,
                             checkpoint=checkpoint)
    except (BulkError, CheckpointError, ValueError, OSError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(report))


@app.command("eval")
def evaluate(
    checkpoints: Annotated[list[str], typer.Argument(
        help="checkpoints to judge, each PATH or NAME=PATH (an ablation judges several in one run)")],
    train_data: Annotated[list[Path], typer.Option("--train", help="vectors the baselines are fitted on")],
    sets: Annotated[list[str], typer.Option(
        "--data", help="an evaluation set NAME=DB.npy[+MORE.npy][:QUERIES.npy]; without QUERIES a random 1000 "
        "rows query the rest; repeatable")],
    baselines: Annotated[list[str] | None, typer.Option(
        "--baselines", help="a faiss index_factory string fitted on --train, e.g. OPQ4,PQ4 or LSQ8x8; repeatable "
        "(default: OPQ4,PQ4, RQ4x8 and LSQ4x8, 4 bytes each; 'none': no baselines)")] = None,
    max_train: Annotated[int, typer.Option(help="baseline training vectors")] = 50_000,
    baseline_cache: Annotated[Path | None, typer.Option(
        help="folder of fitted baselines: each is read back from here when fitted on the same vectors "
        "before (LSQ takes minutes), else fitted and saved here")] = None,
    n_queries: int = 1000,
    json_out: Annotated[Path | None, typer.Option(help="also write the rows as JSON")] = None,
    nearest: Annotated[bool, typer.Option(
        help="also judge each checkpoint with nearest codes (no decoder-aware refinement)")] = False,
    searched: Annotated[bool, typer.Option(
        help="also judge each nearest-code checkpoint with the decoder-aware search (8 candidates, 2 sweeps)")] = False,
    encodings: Annotated[list[str] | None, typer.Option(
        "--encoding", help="also judge each checkpoint encoding with CANDIDATES:SWEEPS (0:1 is nearest codes, "
        "8:2 the shipped search); repeatable: one row per setting shows what the search buys and costs")] = None,
    record: Annotated[bool, typer.Option(
        help="write the report into the (single) checkpoint's metadata, metrics.eval_report")] = False,
) -> None:
    """Recall, reconstruction and encode speed of checkpoints next to faiss baselines, judged alike:
    every method's reconstructions ranked by cosine, differences with their paired standard error."""
    from trainer.data import load_embeddings
    from trainer.evaluate import (
        EvalSet,
        baseline_method,
        fairness_notes,
        fit_baselines,
        monolith_method,
        quality_report,
        split_queries,
    )
    from vqvae.api import Monolith
    from vqvae.baselines import DEFAULT_BASELINES, BaselineError
    from vqvae.checkpoint import CheckpointError

    try:
        models = _load_models(checkpoints)
        dim = next(iter(models.values())).config.input_dim
        train = np.concatenate([load_embeddings(p, dim) for p in train_data])
        rng = np.random.default_rng(0)
        if len(train) > max_train:
            train = train[np.sort(rng.choice(len(train), max_train, replace=False))]
        eval_sets = []
        for spec in sets:
            name, db, queries = _parse_data(spec)
            x = np.concatenate([load_embeddings(p, dim) for p in db])
            eval_sets.append(EvalSet(name, x, load_embeddings(queries, dim)[:n_queries]) if queries
                             else split_queries(name, x, n_queries))
        settings = [EncodeConfig.from_spec(e) for e in encodings or []]
    except (CheckpointError, ValueError) as exc:
        fail(str(exc))
    specs = [] if baselines == ["none"] else list(dict.fromkeys(baselines or DEFAULT_BASELINES))
    if record and len(models) != 1:
        fail("--record writes into one checkpoint; name exactly one")
    methods = []
    for name, m in models.items():
        methods.append(monolith_method(name, m))
        if nearest and m.encoding.refines:
            methods.append(monolith_method(f"{name} (nearest)", Monolith(m.checkpoint, encoding=EncodeConfig())))
        if searched and not m.encoding.refines:
            best = EncodeConfig(candidates=8, sweeps=2)
            methods.append(monolith_method(f"{name} (searched)", Monolith(m.checkpoint, encoding=best)))
        for e in settings:
            methods.append(monolith_method(f"{name} ({e.label})", Monolith(m.checkpoint, encoding=e)))
    for note in fairness_notes(models, train_data, len(train)) if specs else []:
        console.print(f"[yellow]note:[/] {note}")
    try:
        methods += [baseline_method(b) for b in fit_baselines(specs, train, cache=baseline_cache)]
    except BaselineError as exc:
        fail(str(exc))
    rows = quality_report(methods, eval_sets)
    print_report(rows)
    if json_out:
        json_out.write_text(json.dumps(rows, indent=2))
    if record:
        from vqvae.checkpoint import record_metadata

        (model,) = models.values()
        metrics = {**model.metadata.get("metrics", {}), "eval_report": rows, "eval_train_vectors": len(train),
                   "eval_baselines": specs, "eval_ranking": "cosine"}
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
    from vqvae.health import codebook_health, count_codes

    try:
        model = Monolith.load(checkpoint)
        x = np.concatenate([load_embeddings(p, model.config.input_dim) for p in data])
        report = codebook_health(count_codes(model.encode(x), model.config.codebook_size))
    except (CheckpointError, ValueError) as exc:
        fail(str(exc))
    table = Table("head", "used", "dead", "entropy bits", "normalised", "perplexity", "Zipf α", "R²", "top 10%",
                  title=f"codebook health over {len(x)} vectors ({model.encoding}): {report.status}")
    for h in report.heads:
        table.add_row(str(h.head), str(h.used), str(h.dead), f"{h.entropy_bits:.2f}", f"{h.normalized_entropy:.3f}",
                      f"{h.perplexity:.0f}", "-" if h.zipf_alpha is None else f"{h.zipf_alpha:.2f}",
                      "-" if h.zipf_r2 is None else f"{h.zipf_r2:.2f}", f"{h.top10_share:.1%}")
    out = Console(width=140)
    out.print(table)
    for reason in report.reasons:
        out.print(f"  {reason}", markup=False, highlight=False)
    if json_out:
        try:
            json_out.write_text(report.model_dump_json(indent=2))
        except OSError as exc:
            fail(str(exc))


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
    """The report as a table on stdout: one row per (set, method)."""

    def num(value: object, fmt: str = ".3f") -> str:
        return "-" if value is None else format(value, fmt)

    def diff(r: dict) -> str:
        d, se = r.get("diff_recall_10@10"), r.get("diff_se_recall_10@10")
        if r["method"] == r.get("reference"):
            return "reference"
        if d is None:
            return "-"
        mark = "*" if se is not None and abs(d) > 2 * se else " "
        return f"{d:+.3f} ± {num(se)}{mark}"

    table = Table("set", "method", "bytes", "fit on", "10@10", "Δ 10@10 ± SE", "1@10", "10@100", "10@10 IP",
                  "cosine", "rel err", "codes used", "encode/s",
                  title="quality: reconstructions scaled to unit length, ranked by cosine with the query")
    for r in rows:
        table.add_row(r["set"], r["method"], str(r.get("bytes_per_vector", "-")), num(r.get("train_vectors"), ","),
                      num(r["recall_10@10"]), diff(r), num(r["recall_1@10"]), num(r["recall_10@100"]),
                      num(r.get("ip_recall_10@10")), num(r.get("cosine")), num(r.get("rel_sq_error")),
                      num(r.get("codes_used"), "d"), num(r.get("encode_per_s"), ",.0f"))
    if rows:
        ref, threads = rows[0].get("reference", "-"), rows[0].get("threads", "-")
        fitted = sorted({r["train_vectors"] for r in rows if r.get("kind") == "faiss" and r.get("train_vectors")})
        table.caption = (
            f"Δ: recall 10@10 minus {ref}'s, ± the paired standard error over the queries (* beyond two: real). "
            f"IP: ranked by raw inner product. fit on: training vectors (baselines: "
            f"{', '.join(f'{n:,}' for n in fitted) or '-'}). encode/s: the set's database encoded in this "
            f"process, {threads} threads.")
    Console(width=190).print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
