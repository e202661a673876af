"""A trained run, read back: genperf.load(RUN_DIR) and what python -m genperf.sample / evaluate and the study
use. The reader of the run folder whose writer is genperf.checkpoint."""

from __future__ import annotations

import argparse
import os

import torch

from genperf import config as configs
from genperf import models
from genperf.checkpoint import CHECKPOINT, SHARDED_CHECKPOINT, dcp_load, find, is_sharded, load_module_states, read_meta
from genperf.errors import GenperfError
from genperf.families import FAMILY_OF, build_objective
from genperf.precision import Precision


class Run:
    """A trained run, loaded by genperf.load(RUN_DIR): its models in eval mode, its training options
    (`config`, an argparse.Namespace as `python -m genperf.train` parsed them) and the objective that
    samples and evaluates them. For GANs trained with --ema, `model` is the averaged generator."""

    def __init__(self, path, checkpoint, step, config, data_shape, objective, device, data_fingerprint=None):
        self.path, self.checkpoint, self.step, self.config = path, checkpoint, step, config
        self.data_shape, self.is_image = tuple(data_shape), len(data_shape) == 3
        self.data_fingerprint = data_fingerprint
        self.objective, self.device = objective, torch.device(device)
        self._data = None

    @property
    def models(self):
        return self.objective.modules

    @property
    def model(self):
        """The model that makes samples: the generator (its EMA when trained with --ema), the VAE, the flow."""
        o = self.objective
        if hasattr(o, "G"):
            return o.G if o.G_ema is None else o.G_ema
        return o.model

    @property
    def family(self):
        """Its model family (genperf.families.Family)."""
        return FAMILY_OF[self.config.model]

    def data(self):
        """The run's data set (as training loaded it, without downloading), loaded once."""
        if self._data is None:
            from genperf.data import load_dataset

            c = self.config
            data = load_dataset(c.data, c.data_root, c.image_size, c.channels, False, c.seed)
            data.check_same(self.data_fingerprint, c.data_root)
            self._data = data
        return self._data

    def latents(self, n, seed=0, temperature=1.0):
        """n latents drawn on the CPU from `seed` (the same on every device), scaled by `temperature`."""
        return self.objective.noise(n, torch.Generator().manual_seed(seed)).to(self.device) * temperature

    def decode(self, z):
        """Images (N, C, H, W) in [0, 1], or 2-D points, from latents (256 at a time, to bound memory)."""
        return torch.cat([self.objective.sample(chunk).float() for chunk in z.split(256)])

    def sample(self, n=64, seed=0, temperature=1.0):
        return self.decode(self.latents(n, seed, temperature))


def load_run(out, device="cpu", checkpoint=None, data_root=None):
    """The run in folder `out`, from its latest checkpoint or from `checkpoint` (a checkpoint.pt file
    or a sharded checkpoint directory, e.g. a copy kept from earlier in the run), on `device`. Sharded
    (--fsdp) checkpoints are gathered into one process. `data_root`: where its data is now, if it moved
    (checked by content when the data is loaded)."""
    if not os.path.isdir(out):
        raise GenperfError(f"{out}: no such run folder")
    path = checkpoint or find(out)
    if path is None:
        raise GenperfError(f"{out} holds no run: no {CHECKPOINT} or {SHARDED_CHECKPOINT}/ in it")
    meta = read_meta(path)
    config = configs.stored(meta["config"])
    vars(config).update(device=str(device), ddp=False, fsdp=False, compile=False)
    if data_root is not None:
        config.data_root = data_root
    if checkpoint:
        latest = find(out)
        run_config = read_meta(latest)["config"] if latest else None
        if run_config and run_config["model"] != config.model:
            raise GenperfError(
                f"{checkpoint} is a checkpoint of {config.model}, the run in {out} trained "
                f"{run_config['model']}: a checkpoint of another model"
            )
    data = _data_like(meta, config)
    objective = build_objective(config, data, Precision(torch.device(device).type, config.amp), torch.device(device))
    if is_sharded(path):
        states = dcp_load(
            {"models": {k: m.state_dict() for k, m in objective.modules.items()}},
            path,
            models.WeightNormConv2d.OLD_KEYS,
        )["models"]
    elif "models" in meta:
        states = meta["models"]
    else:
        raise GenperfError(f"{path} holds no model weights (for a sharded checkpoint pass its directory)")
    load_module_states(path, objective.modules, states)
    for m in objective.modules.values():
        m.eval()
    return Run(out, path, meta["step"], config, data.shape, objective, device, meta.get("data_fingerprint"))


def _data_like(meta, config):
    """What build_objective needs to know of the data (its shape, images or points), from the
    checkpoint; checkpoints from before it was stored there load the data set."""
    shape = meta.get("data_shape")
    if shape is None:
        from genperf.data import load_dataset

        return load_dataset(config.data, config.data_root, config.image_size, config.channels, False, config.seed)
    return argparse.Namespace(shape=tuple(shape), is_image=len(shape) == 3)
