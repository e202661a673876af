"""genperf: fast, trustworthy training of classic deep generative models (GANs, VAEs, RealNVP)."""
__version__ = "0.1.0"
