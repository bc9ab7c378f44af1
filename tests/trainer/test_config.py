import json

import pytest

from trainer.config import ConfigError, load_config


def write(tmp_path, cfg, suffix=".json"):
    p = tmp_path / f"c{suffix}"
    p.write_text(json.dumps(cfg))
    return p


def test_valid_yaml_and_json(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  train: [a.npy]\nloss:\n  info_nce: 0.5\n")
    cfg = load_config(p)
    assert cfg.loss.info_nce == 0.5 and cfg.model.num_heads == 4
    assert load_config(write(tmp_path, {"data": {"train": ["a.npy"]}})).optim.batch_size == 1024
    assert load_config(write(tmp_path, {"data": {"train": ["a.npy"]}})).optim.lr_warmup_steps == 100


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"data": {"train": ["a.npy"]}, "lossy": {}}, "lossy: Extra inputs"),
        ({"data": {"train": ["a.npy"]}, "loss": {"cosine": -1}}, "loss.cosine: Input should be greater"),
        ({"data": {"train": ["a.npy"]}, "loss": {"cosin": 1}}, "loss.cosin: Extra inputs"),
        ({"data": {"train": []}}, "data.train"),
        ({}, "data: Field required"),
        ({"data": {"train": ["a.npy"]}, "model": {"latent_dim": 510}}, "divisible"),
        ({"data": {"train": ["a.npy"]}, "optim": {"lr_warmup_steps": -1}}, "optim.lr_warmup_steps: Input should be"),
    ],
)
def test_bad_configs_name_the_field(tmp_path, cfg, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, cfg))


def test_unparsable_and_missing(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    p = tmp_path / "c.yaml"
    p.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(p)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"loss": {"cosin": 1}}, r"loss.cosin: Extra inputs are not permitted \(valid: cosine, mse,"),
        ({"loss": {"schedule": {"kind": "linear", "stpes": 5}}}, r"loss.schedule.stpes: .*\(valid: kind, term,"),
        ({"loss": {"schedule": {"kind": "exponential"}}}, "'linear', 'cyclical_linear', 'cosine' or 'adaptive'"),
        ({"loss": {"balancing": {"method": "gradnorm"}}}, "'manual' or 'uncertainty'"),
        ({"loss": {"kl": -1e-6}}, "loss.kl: Input should be greater than or equal to 0"),
        ({"loss": {"adversarial": {"weight": -1}}}, "loss.adversarial.weight: Input should be greater"),
        ({"model": {"bottleneck": "rq"}}, "'product_vq', 'residual_vq', 'vae' or 'wasserstein'"),
        ({"monitor": {"on_nonfinite": "ignore"}}, "monitor.on_nonfinite: Input should be 'skip' or 'stop'"),
    ],
)
def test_new_sections_validate_and_list_valid_values(tmp_path, cfg, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, {"data": {"train": ["a.npy"]}, **cfg}))


def test_shipped_config_still_validates():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "monolith-wiki.yaml"
    if not path.is_file():
        pytest.skip("configs/monolith-wiki.yaml is not in this checkout")
    cfg = load_config(path)
    assert cfg.model.bottleneck == "product_vq" and cfg.loss.balancing.method == "manual"


def test_overrides_merge_into_nested_sections(tmp_path):
    from trainer.config import parse_overrides

    p = write(tmp_path, {"data": {"train": ["a.npy"]}, "loss": {"cosine": 2.0}})
    cfg = load_config(p, parse_overrides(["loss.info_nce=0.1", "optim.epochs=3", "model.normalize_latent=false"]))
    assert cfg.loss.info_nce == 0.1 and cfg.loss.cosine == 2.0  # the file's other keys survive
    assert cfg.optim.epochs == 3 and cfg.model.normalize_latent is False


@pytest.mark.parametrize("spec", ["loss.info_nce", "=3", "loss.info_nce=[1"])
def test_malformed_override_is_a_config_error(spec):
    from trainer.config import parse_overrides

    with pytest.raises(ConfigError, match="--set"):
        parse_overrides([spec])


def test_override_of_unknown_key_names_the_valid_ones(tmp_path):
    from trainer.config import parse_overrides

    p = write(tmp_path, {"data": {"train": ["a.npy"]}})
    with pytest.raises(ConfigError, match=r"loss.infonce.*valid: .*info_nce"):
        load_config(p, parse_overrides(["loss.infonce=0.1"]))
