from genperf.models.gan import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator
from genperf.models.realnvp import ARCHS as REALNVP_ARCHS
from genperf.models.realnvp import CHECKPOINTING, ST_NORMS, RealNVP, WeightNormConv2d
from genperf.models.vae import VAE

__all__ = [
    "DCGANGenerator",
    "DCGANDiscriminator",
    "MLPGenerator",
    "MLPDiscriminator",
    "RealNVP",
    "REALNVP_ARCHS",
    "CHECKPOINTING",
    "ST_NORMS",
    "VAE",
    "WeightNormConv2d",
]
