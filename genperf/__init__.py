"""genperf: fast, trustworthy training of classic deep generative models (GANs, VAEs, RealNVP).

summary = genperf.fit("realnvp", data="digits", epochs=3, out="runs/realnvp")  # python -m genperf.train
run = genperf.load("runs/realnvp")                                              # and back
images = run.sample(16, seed=0)
"""

__version__ = "0.1.0"


def fit(model=None, **options):
    """Trains a model as `python -m genperf.train` would, options by name (genperf.config's table); returns the
    run's summary.json as a dict. See genperf.train.fit."""
    from genperf.train import fit as _fit

    return _fit(model, **options)


def load(run_dir, device="cpu", checkpoint=None):
    """A trained run (genperf.run.Run): its models in eval mode, its training options as `config`, and
    `sample(n, seed, temperature)`. `checkpoint` picks another checkpoint than the run's latest; sharded
    (--fsdp) checkpoints load into one process."""
    from genperf.run import load_run

    return load_run(run_dir, device, checkpoint)
