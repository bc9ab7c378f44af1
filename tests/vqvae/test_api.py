import io
import sys
import threading

import numpy as np
import pytest

from tests.conftest import clustered_embeddings
from vqvae import Monolith, api
from vqvae.api import DEFAULT_CHECKPOINT


def test_encode_decode_numpy(tiny_checkpoint):
    m = Monolith.load(tiny_checkpoint)
    m.batch_size = 7  # exercise batching across chunk borders
    x = clustered_embeddings(20)
    codes = m.encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (20, 4)
    assert np.array_equal(codes, Monolith.load(tiny_checkpoint).encode(x))
    x_hat = m.decode(codes)
    assert x_hat.dtype == np.float32 and x_hat.shape == (20, 384)
    assert np.allclose(np.linalg.norm(x_hat, axis=1), 1, atol=1e-5)
    assert m.encode(x[0]).shape == (1, 4)  # a single vector is accepted
    assert m.encode(np.zeros((0, 384), np.float32)).shape == (0, 4)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((2, 10), np.float32), r"shape \[N, 384\]"),
        (np.full((1, 384), np.nan, np.float32), "NaN or Inf"),
        (np.array([["a"] * 384]), "numeric"),
    ],
)
def test_bad_embeddings(tiny_checkpoint, bad, match):
    with pytest.raises(ValueError, match=match):
        Monolith.load(tiny_checkpoint).encode(bad)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.array([[0, 1, 2]]), r"shape \[N, 4\]"),
        (np.array([[0, 1, 2, 16]]), r"0\.\.15"),
        (np.array([[0, -1, 2, 3]]), r"0\.\.15"),
        (np.array([[0.5, 1, 2, 3]]), "integers"),
    ],
)
def test_bad_codes(tiny_checkpoint, bad, match):
    with pytest.raises(ValueError, match=match):
        Monolith.load(tiny_checkpoint).decode(bad)


def test_shipped_checkpoint_loads_by_default():
    m = Monolith.load()
    assert m.checkpoint.path == DEFAULT_CHECKPOINT
    assert m.config.num_heads == 4 and m.config.codebook_size == 256 and m.config.latent_dim == 512
    assert "reference_counts" in m.metadata


def test_env_selects_checkpoint(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MONOLITH_CHECKPOINT", str(tiny_checkpoint))
    assert Monolith.load().config.codebook_size == 16


def test_shipped_checkpoints_load_by_name(monkeypatch, tmp_path, tiny_checkpoint):
    from vqvae.api import CHECKPOINT_DIR, shipped_checkpoints
    from vqvae.checkpoint import CheckpointError

    assert {"monolith-wiki", "monolith-all"} <= set(shipped_checkpoints())
    assert Monolith.load("monolith-all").checkpoint.path == CHECKPOINT_DIR / "monolith-all.safetensors"
    monkeypatch.setenv("MONOLITH_CHECKPOINT", "monolith-all")
    m = Monolith.load()
    assert m.checkpoint.path.name == "monolith-all.safetensors"
    assert m.metadata["provenance"]["train_vectors"] > Monolith.load("monolith-wiki").metadata["provenance"][
        "train_vectors"]
    with pytest.raises(CheckpointError, match="neither a file nor a shipped checkpoint.*monolith-wiki"):
        Monolith.load("monolith-al")
    monkeypatch.chdir(tmp_path)  # a file of that name in the working directory wins over the shipped one
    (tmp_path / "monolith-all").write_bytes(tiny_checkpoint.read_bytes())
    assert Monolith.load("monolith-all").config.codebook_size == 16


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_encode_progress_bar_goes_to_stderr_and_changes_nothing(tiny_checkpoint, capsys, monkeypatch):
    m = Monolith.load(tiny_checkpoint)
    m.batch_size = 7
    x = clustered_embeddings(30)
    quiet = m.encode(x)
    assert capsys.readouterr().err == ""  # small input, stderr not a terminal: no bar
    shown = m.encode(x, progress=True)
    err = capsys.readouterr().err
    assert "encode" in err and "30/30" in err and "rows" in err, err
    assert np.array_equal(shown, quiet)
    assert np.array_equal(m.encode(x, progress=False), quiet) and capsys.readouterr().err == ""

    # None: a bar for large inputs, only where a person sees stderr (a terminal, the main thread).
    monkeypatch.setattr(api, "PROGRESS_MIN_ROWS", 10)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert np.array_equal(m.encode(x), quiet) and "30/30" in terminal.getvalue()
    assert api.show_progress(None, 11, 10) and not api.show_progress(None, 10, 10)
    in_thread: list[bool] = []
    worker = threading.Thread(target=lambda: in_thread.append(api.show_progress(None, 11, 10)))
    worker.start()
    worker.join()
    assert in_thread == [False]  # a server's model worker never draws one


def test_text_progress_reaches_the_text_model(tiny_checkpoint, monkeypatch):
    seen = []

    class Embedder:
        def embed(self, texts, progress=False):
            seen.append(progress)
            return clustered_embeddings(len(texts))

    m = Monolith.load(tiny_checkpoint)
    m._embedder = Embedder()
    codes = m.encode_text(["a", "b"], progress=True)
    assert np.array_equal(codes, m.encode_text(["a", "b"]))
    m.embed_text(["a"], progress=False)
    assert seen == [True, False, False]
