"""build_model: the config's architecture for product_vq, else the bottleneck's class."""

from __future__ import annotations

import typing

import pytest

from tests.conftest import TINY
from vqvae.bottlenecks import GaussianVAE, ResidualVQ, WassersteinAE
from vqvae.config import BOTTLENECKS, ModelConfig
from vqvae.model import MonolithV13, MonolithWiki
from vqvae.registry import ARCHITECTURES, BOTTLENECK_MODELS, build_model


def test_every_config_value_has_a_class():
    architectures = typing.get_args(ModelConfig.model_fields["architecture"].annotation)
    assert set(ARCHITECTURES) == set(architectures)
    assert set(BOTTLENECK_MODELS) | {"product_vq"} == set(BOTTLENECKS)


def test_build_model_picks_the_class():
    assert type(build_model(TINY)) is MonolithWiki
    assert type(build_model(ModelConfig(architecture="MonolithV13", latent_dim=256))) is MonolithV13
    for bottleneck, cls in (("residual_vq", ResidualVQ), ("vae", GaussianVAE), ("wasserstein", WassersteinAE)):
        assert type(build_model(TINY.model_copy(update={"bottleneck": bottleneck}))) is cls


def test_configs_no_class_builds_are_refused():
    with pytest.raises(ValueError, match="MonolithWiki layout"):
        ModelConfig(architecture="MonolithV13", bottleneck="vae", latent_dim=256)
    with pytest.raises(ValueError, match="'product_vq', 'residual_vq', 'vae' or 'wasserstein'"):
        ModelConfig(bottleneck="kmeans")
