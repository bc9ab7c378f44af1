import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import TINY
from vqvae import CheckpointError, ModelConfig, MonolithV13, MonolithWiki, load_checkpoint, save_checkpoint
from vqvae.checkpoint import load_with_fallback, read_metadata


def test_round_trip_keeps_weights_config_and_metadata(tmp_path):
    m = MonolithWiki(TINY)
    path = save_checkpoint(m, tmp_path / "m.safetensors", metrics={"recall": 0.5}, reference_counts=[[1, 2]])
    ck = load_checkpoint(path)
    assert ck.config == TINY
    assert ck.metadata["metrics"] == {"recall": 0.5} and ck.metadata["reference_counts"] == [[1, 2]]
    for k, v in m.state_dict().items():
        assert torch.equal(v, ck.model.state_dict()[k])
    assert len(ck.sha256) == 64
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


def test_builds_legacy_architecture_from_metadata(tmp_path):
    cfg = ModelConfig(architecture="MonolithV13", latent_dim=256)
    path = save_checkpoint(MonolithV13(cfg), tmp_path / "v13.safetensors")
    assert isinstance(load_checkpoint(path).model, MonolithV13)


def test_missing_truncated_and_foreign_files_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    path = save_checkpoint(MonolithWiki(TINY), tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "cut.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a Monolith checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.safetensors")


def test_shape_mismatch_and_bad_version(tmp_path):
    m = MonolithWiki(TINY)
    tensors = {k: v.clone() for k, v in m.state_dict().items()}
    tensors["quantizer.codebooks"] = torch.zeros(4, 16, 9)
    meta = {"format": "monolith", "format_version": "1", "model_config": TINY.model_dump_json()}
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="quantizer.codebooks: shape"):
        load_checkpoint(tmp_path / "bad.safetensors")
    meta["format_version"] = "99"
    save_file(m.state_dict(), str(tmp_path / "v99.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="format version 99"):
        read_metadata(tmp_path / "v99.safetensors")


def test_never_unpickles(tmp_path):
    import pickle

    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.safetensors")


def test_fallback_with_warning(tmp_path, caplog):
    good = save_checkpoint(MonolithWiki(TINY), tmp_path / "good.safetensors")
    with caplog.at_level(logging.WARNING):
        ck = load_with_fallback(tmp_path / "missing.safetensors", good)
    assert ck.path == good and "falling back" in caplog.text
    with pytest.raises(CheckpointError):
        load_with_fallback(tmp_path / "missing.safetensors", None)


def test_metadata_json_is_validated(tmp_path):
    m = MonolithWiki(TINY)
    meta = {"format": "monolith", "format_version": "1", "model_config": json.dumps({"num_heads": "x"})}
    save_file(m.state_dict(), str(tmp_path / "cfg.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="invalid model_config"):
        load_checkpoint(tmp_path / "cfg.safetensors")


def test_checkpoint_without_normalize_latent_key_loads_as_trained(tmp_path):
    """A checkpoint written before the switch existed was trained without it."""
    m = MonolithWiki(TINY.model_copy(update={"normalize_latent": False}))
    path = save_checkpoint(m, tmp_path / "m.safetensors")
    tensors = {k: v.clone() for k, v in m.state_dict().items()}
    meta = read_metadata(path)
    cfg = json.loads(TINY.model_dump_json())
    del cfg["normalize_latent"]
    raw = {k: (json.dumps(v) if not isinstance(v, str) else v) for k, v in meta.items() if v is not None}
    raw["model_config"] = json.dumps(cfg)
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=raw)
    assert load_checkpoint(tmp_path / "old.safetensors").config.normalize_latent is False
    assert load_checkpoint(path).config.normalize_latent is False


def test_record_metadata_keeps_weights_and_other_entries(tiny_checkpoint):
    import torch

    from vqvae.checkpoint import load_checkpoint, record_metadata

    before = load_checkpoint(tiny_checkpoint)
    record_metadata(tiny_checkpoint, metrics={"eval_report": [{"set": "a", "recall_10@10": 0.5}]})
    after = load_checkpoint(tiny_checkpoint)
    assert after.metadata["metrics"]["eval_report"][0]["recall_10@10"] == 0.5
    assert after.metadata["provenance"] == before.metadata["provenance"]
    assert after.metadata["reference_counts"] == before.metadata["reference_counts"]
    for k, v in before.model.state_dict().items():
        assert torch.equal(v, after.model.state_dict()[k]), k


# -- integrity: checksum of the tensor data, finite weights (issue 12) --------------------------


def _data_offset(path) -> int:
    """Where a safetensors file's tensor bytes start: 8 bytes of header length, then the header."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_checksum_is_stored_and_a_bit_flip_is_refused(tmp_path):
    from vqvae.checkpoint import CHECKSUM_KEY, tensors_sha256

    m = MonolithWiki(TINY)
    path = save_checkpoint(m, tmp_path / "m.safetensors")
    assert read_metadata(path)[CHECKSUM_KEY] == tensors_sha256(m.state_dict())
    data = bytearray(path.read_bytes())
    start = _data_offset(path) + 1000
    data[start : start + 4096] = bytes(b ^ 0x10 for b in data[start : start + 4096])  # a 4 KiB flip
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_checkpoint(tmp_path / "flipped.safetensors")


def test_non_finite_weights_are_refused_even_with_a_valid_checksum(tmp_path):
    m = MonolithWiki(TINY)
    with torch.no_grad():
        next(p for p in m.parameters() if p.ndim == 2)[0, 0] = float("nan")
    path = save_checkpoint(m, tmp_path / "nan.safetensors")  # saved as it is, checksum and all
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_checkpoint(path)


def test_corrupt_checkpoint_falls_back(tmp_path, caplog):
    m = MonolithWiki(TINY)
    good = save_checkpoint(m, tmp_path / "good.safetensors")
    with torch.no_grad():
        next(iter(m.parameters())).fill_(float("inf"))
    bad = save_checkpoint(m, tmp_path / "bad.safetensors")
    with caplog.at_level(logging.WARNING):
        assert load_with_fallback(bad, good).path == good
    assert "NaN or Inf" in caplog.text


def test_old_checkpoints_without_checksum_still_load(tmp_path, caplog):
    """A file written before the checksum existed: loaded (weights checked for NaN only), with a warning."""
    from vqvae.checkpoint import CHECKSUM_KEY, tensors_sha256

    m = MonolithWiki(TINY)
    meta = {"format": "monolith", "format_version": "1", "model_config": TINY.model_dump_json()}
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata=meta)
    with caplog.at_level(logging.WARNING):
        ck = load_checkpoint(tmp_path / "old.safetensors")
    assert CHECKSUM_KEY not in ck.metadata and "cannot be verified" in caplog.text
    assert ck.weights_sha256 == tensors_sha256(m.state_dict())  # computed: collections bind to it
    for k, v in m.state_dict().items():
        assert torch.equal(v, ck.model.state_dict()[k])


# The shipped file's sha256 before its fair evaluation report was recorded into it (issue 10):
# collections and exports made with that release recorded this, and must still open.
RELEASED_SHA256 = "f7bccafcd9dd5508e135a962b3235ea01749ed568c4080a40cfb74b8d70bf92e"


def test_shipped_checkpoint_carries_its_checksum_and_its_released_sha256():
    from vqvae import checkpoint as ck_module
    from vqvae.api import default_checkpoint

    ck = load_checkpoint(default_checkpoint())
    assert ck.metadata[ck_module.CHECKSUM_KEY] == ck.weights_sha256
    assert RELEASED_SHA256 in ck.earlier_sha256 and ck.sha256 != RELEASED_SHA256


@pytest.mark.parametrize("name", ["monolith-wiki", "monolith-all"])
def test_shipped_checkpoints_carry_the_fair_report_readme_quotes(name):
    """README's Quality numbers come from this report: cosine ranking, faiss fitted on 50,000 of
    the checkpoint's own training files, every unseen set, LSQ4x8 beside Monolith."""
    from vqvae.api import CHECKPOINT_DIR

    metrics = read_metadata(CHECKPOINT_DIR / f"{name}.safetensors")["metrics"]
    assert metrics["eval_ranking"] == "cosine" and metrics["eval_train_vectors"] == 50_000
    rows = {(r["set"], r["method"]): r for r in metrics["eval_report"]}
    for unseen in ("pydoc", "changelog", "info"):
        assert {(unseen, "monolith"), (unseen, "LSQ4x8"), (unseen, "OPQ8,PQ8")} <= rows.keys()


def test_recording_metadata_keeps_the_weights_identity_and_remembers_the_file_sha(tmp_path):
    from vqvae.checkpoint import record_metadata, tensors_sha256

    m = MonolithWiki(TINY)
    path = save_checkpoint(m, tmp_path / "m.safetensors")
    first = load_checkpoint(path)
    assert first.weights_sha256 == tensors_sha256(m.state_dict()) and first.earlier_sha256 == ()
    record_metadata(path, metrics={"note": 1})
    second = load_checkpoint(path)
    record_metadata(path, metrics={"note": 2})
    third = load_checkpoint(path)
    assert len({first.sha256, second.sha256, third.sha256}) == 3
    assert first.weights_sha256 == second.weights_sha256 == third.weights_sha256
    assert third.earlier_sha256 == (first.sha256, second.sha256)
    assert third.metadata["metrics"] == {"note": 2}


def test_earlier_sha256_must_be_a_list_of_strings(tmp_path):
    from vqvae.checkpoint import atomic_save_tensors, tensors_sha256

    m = MonolithWiki(TINY)
    state = m.state_dict()
    meta = {"format": "monolith", "format_version": "1", "model_config": TINY.model_dump_json(),
            "tensors_sha256": tensors_sha256(state), "earlier_sha256": '{"a": 1}'}
    atomic_save_tensors(state, tmp_path / "m.safetensors", meta)
    with pytest.raises(CheckpointError, match="earlier_sha256"):
        load_checkpoint(tmp_path / "m.safetensors")


def test_record_metadata_adds_the_checksum_and_keeps_the_codes(tmp_path):
    import numpy as np

    from tests.conftest import clustered_embeddings
    from vqvae.api import Monolith
    from vqvae.checkpoint import CHECKSUM_KEY, record_metadata

    m = MonolithWiki(TINY)
    meta = {"format": "monolith", "format_version": "1", "model_config": TINY.model_dump_json()}
    old = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(old), metadata=meta)
    x = clustered_embeddings(256)
    before = Monolith.load(old).encode(x)
    record_metadata(old, metrics={"note": 1})
    assert CHECKSUM_KEY in read_metadata(old)
    np.testing.assert_array_equal(Monolith.load(old).encode(x), before)
