"""Which class a model config names: the product-VQ architectures and the other bottlenecks.

The one place that knows every model class, so ``vqvae.model`` and ``vqvae.bottlenecks``
need not know each other's (bottlenecks build on model; nothing here is imported back).
"""

from __future__ import annotations

from torch import nn

from vqvae.bottlenecks import ContinuousAutoencoder, GaussianVAE, ResidualVQ, WassersteinAE
from vqvae.config import ModelConfig
from vqvae.model import MonolithV13, MonolithWiki

# product_vq models, by ``ModelConfig.architecture``
ARCHITECTURES: dict[str, type[MonolithWiki]] = {"MonolithWiki": MonolithWiki, "MonolithV13": MonolithV13}

# every other bottleneck, by ``ModelConfig.bottleneck``
BOTTLENECK_MODELS: dict[str, type[MonolithWiki] | type[ContinuousAutoencoder]] = {
    "residual_vq": ResidualVQ,
    "vae": GaussianVAE,
    "wasserstein": WassersteinAE,
}


def build_model(config: ModelConfig) -> nn.Module:
    """The model a config describes: the architecture for product_vq, else the bottleneck's class.
    Every one has ``forward`` → dict, ``encode_latent`` and ``reconstruct``."""
    if config.bottleneck == "product_vq":
        return ARCHITECTURES[config.architecture](config)
    return BOTTLENECK_MODELS[config.bottleneck](config)
