"""genperf: fast, trustworthy training of classic deep generative models (GANs, VAEs, RealNVP)."""
__version__ = "0.1.0"


def load(run_dir, device="cpu", checkpoint=None):
    """A trained run (genperf.checkpoint.Run): its models in eval mode, its training options as
    `config`, and `sample(n, seed, temperature)`. `checkpoint` picks another checkpoint than the
    run's latest; sharded (--fsdp) checkpoints load into one process."""
    from genperf.checkpoint import load_run

    return load_run(run_dir, device, checkpoint)
