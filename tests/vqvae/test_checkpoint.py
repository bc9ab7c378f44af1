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
