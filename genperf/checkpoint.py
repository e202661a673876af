"""A run folder's checkpoints: the one writer (training) and the one reader (--resume, genperf.load,
python -m genperf.sample / evaluate, the study).

A single-process or --ddp run keeps OUT/checkpoint.pt, one file written by rank 0: step, config (every
training option), precision, every rank's RNG state, the models' and optimizers' state dicts. An --fsdp run
keeps OUT/checkpoint/, a torch.distributed.checkpoint directory where every rank writes its own shards of
the models and optimizers, plus meta.pt (everything else), written last. Both are written atomically:
a crash leaves the previous checkpoint in place. Either resumes in any mode on any number of ranks: a
sharded one in one process without a process group (the shards are gathered on load) or under --ddp
(every rank reads whole tensors), a single file under --fsdp (every rank keeps its shards of it)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil

import torch

from genperf.distributed import barrier, gather_objects
from genperf.errors import GenperfError

CHECKPOINT = "checkpoint.pt"
SHARDED_CHECKPOINT = "checkpoint"  # a torch.distributed.checkpoint directory
META = "meta.pt"  # of a sharded checkpoint


# ---- files ----
def atomic_save(obj, path):
    """torch.save through a temporary file and a rename, so a crash never leaves a half-written file;
    a failed write (a full disk) removes the temporary file and raises its OSError."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            writer = _RecordingWriter(f)
            try:
                torch.save(obj, writer)
            except RuntimeError:  # torch's zip writer reports a failed write only as "unexpected pos"
                if writer.error is not None:
                    raise writer.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


class _RecordingWriter:
    """A file's write and flush, remembering the OSError a write raised."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self.f.flush()


def publish_dir(tmp, final):
    """Puts the finished directory `tmp` in place of `final`. Two renames: a crash between them leaves
    FINAL.old, which find_sharded falls back to."""
    old = f"{final}.old"
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def find_sharded(out):
    """The complete sharded checkpoint in `out`, or None."""
    for path in (os.path.join(out, SHARDED_CHECKPOINT), os.path.join(out, f"{SHARDED_CHECKPOINT}.old")):
        if os.path.exists(os.path.join(path, META)):
            return path
    return None


def find(out):
    """The run's checkpoint in `out` (the single file, else the sharded directory), or None."""
    path = os.path.join(out, CHECKPOINT)
    return path if os.path.isfile(path) else find_sharded(out)


def is_sharded(path):
    return os.path.isdir(path)


def read_meta(path):
    """The checkpoint's step, config, precision, RNG state (and, for a single file, its tensors);
    a clear error for a file that is not a readable checkpoint."""
    file = os.path.join(path, META) if is_sharded(path) else path
    if not os.path.exists(file):
        raise GenperfError(f"no checkpoint at {path}")
    try:
        meta = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and "unsupported global" in str(e).lower():
            # A torch file of objects genperf never writes; torch's advice, weights_only=False, would run the
            # code such a file may hold.
            raise GenperfError(
                f"{file} is not a genperf checkpoint: it holds Python objects a checkpoint never holds"
            ) from None  # truncated, corrupt, or not a torch file at all
        # The cause's first sentence, never torch's advice to load with weights_only=False.
        first = "" if isinstance(e, pickle.UnpicklingError) else str(e).strip().split(". ")[0].splitlines()[0]
        raise GenperfError(
            f"{file} is not a readable checkpoint (truncated, corrupt, or not a torch file)"
            + (f": {first}" if first else "")
        ) from None
    if not isinstance(meta, dict) or "config" not in meta or "step" not in meta:
        raise GenperfError(f"{file} is not a genperf checkpoint (no step and config in it)")
    return meta


def stored_meta(out):
    """The newest checkpoint of the run in `out`, read once: its training options ("config"), the number of ranks
    that wrote it (the length of "rng"), its step."""
    path = find(out)
    if path is None:
        what = "no run folder" if not os.path.isdir(out) else "no checkpoint (checkpoint.pt or checkpoint/)"
        raise GenperfError(f"{out}: {what}; nothing to resume or load")
    return read_meta(path)


# ---- RNG ----
def rng_state():
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---- sharded state (FSDP2) ----
def sharded_states(modules, optimizers):
    """Sharded (per-rank) state dicts of FSDP modules and their optimizers, the layout DCP saves
    and loads; DCP reshards them on load, so a run resumes on another number of ranks."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {
        "models": {k: get_model_state_dict(m) for k, m in modules.items()},
        "optimizers": {k: get_optimizer_state_dict(modules[k], o) for k, o in optimizers.items()},
    }


def save_sharded(states, path):
    """Each rank writes its shards of `states` to the torch.distributed.checkpoint directory `path`; a collective."""
    import torch.distributed.checkpoint as dcp

    dcp.save(states, checkpoint_id=path)


def _rename_params(states, rename):
    """sharded_states' layout with every parameter name passed through `rename`; same values."""

    def optimizer(o):
        return {
            "state": {rename(k): v for k, v in o["state"].items()},
            "param_groups": [dict(g, params=[rename(p) for p in g["params"]]) for g in o["param_groups"]],
        }

    out = {"models": {k: {rename(n): v for n, v in m.items()} for k, m in states["models"].items()}}
    if "optimizers" in states:
        out["optimizers"] = {k: optimizer(o) for k, o in states["optimizers"].items()}
    return out


def _renamer(mapping):
    """name -> name with its ending replaced by mapping's (the endings are dotted parameter paths)."""

    def rename(name):
        for old, new in mapping.items():
            if name.endswith("." + old):
                return name[: -len(old)] + new
        return name

    return rename


def check_shards(path):
    """The metadata of the sharded checkpoint `path`, once every shard file it names is there and long enough;
    a one-line error naming the damage otherwise (a deleted or cut-short file)."""
    import torch.distributed.checkpoint as dcp

    try:
        metadata = dcp.FileSystemReader(path).read_metadata()
    except (OSError, EOFError, RuntimeError, ValueError, AttributeError, pickle.UnpicklingError) as e:
        what = "is missing" if isinstance(e, FileNotFoundError) else f"is unreadable ({type(e).__name__})"
        raise GenperfError(f"{path}: the sharded checkpoint is damaged: its index .metadata {what}") from None
    needed = {}  # file -> bytes its entries reach
    for info in getattr(metadata, "storage_data", {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise GenperfError(f"{path}: the sharded checkpoint is damaged: its shard {name} is missing")
        if os.path.getsize(file) < size:
            raise GenperfError(
                f"{path}: the sharded checkpoint is damaged: its shard {name} is cut short "
                f"({os.path.getsize(file)} of {size} bytes)"
            )
    return metadata


def dcp_load(states, path, old_names):
    """dcp.load of `states` from `path`, whose parameters may carry older names (`old_names` maps
    old name endings to today's); returns the loaded states under today's names. In a process
    without a process group DCP reads every rank's shards into whole tensors."""
    import warnings

    import torch.distributed.checkpoint as dcp

    warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
    stored = check_shards(path).state_dict_metadata
    try:
        if any(key.endswith("." + old) or f".{old}." in key for key in stored for old in old_names or {}):
            old_states = _rename_params(states, _renamer({new: old for old, new in old_names.items()}))
            dcp.load(old_states, checkpoint_id=path)
            return _rename_params(old_states, _renamer(old_names))
        dcp.load(states, checkpoint_id=path)
        return states
    except (KeyboardInterrupt, SystemExit):
        raise
    except (
        BaseException
    ) as e:  # missing keys, other shapes, damaged shards; DCP's CheckpointException is a BaseException
        raise GenperfError(
            f"{path}: the sharded checkpoint does not load into this model ({_first_cause(e)})"
        ) from None


def _first_cause(e):
    """'Type: first line' of an exception, or of the first rank's failure inside DCP's CheckpointException."""
    failures = getattr(e, "failures", None)  # {rank: exception or (exception, traceback)}
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        e = first[0] if isinstance(first, tuple) else first
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def load_sharded(modules, optimizers, path, old_names=None):
    """Loads a sharded checkpoint into FSDP modules and their optimizers (a collective). `old_names`
    maps parameter-name endings that older checkpoints used to today's (e.g. torch's weight_norm
    `parametrizations.weight.original0` -> `weight_g`); a checkpoint written with them loads too."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    states = dcp_load(sharded_states(modules, optimizers), path, old_names)
    for k, m in modules.items():
        set_model_state_dict(m, states["models"][k])
    for k, o in optimizers.items():
        set_optimizer_state_dict(modules[k], o, states["optimizers"][k])


# ---- training: write and resume ----
def save(out, objective, precision, step, args, is_main, data, kept_step=None):
    """Writes the run's checkpoint atomically (a collective under FSDP). A failed write (a full disk,
    on any rank) leaves the previous checkpoint, of step `kept_step`, in place, removes the partial
    one and raises one line on every rank. `data`: the data's shape and fingerprint (genperf.data.Data)."""
    meta = {
        "step": step,
        "config": vars(args),
        "data_shape": list(data["shape"]),
        "data_fingerprint": data,
        "precision": precision.state_dict(),
        "rng": gather_objects(rng_state()),  # every rank's generators, so a resume is bit-identical
        "last_g_loss": getattr(objective, "last_g_loss", None),
    }
    path = os.path.join(out, SHARDED_CHECKPOINT if args.fsdp else CHECKPOINT)
    tmp = f"{path}.tmp"
    error = None
    try:
        if not args.fsdp:
            state = dict(
                meta,
                models={
                    k: {n: v.detach().cpu() for n, v in m.state_dict().items()} for k, m in objective.modules.items()
                },
                optimizers={k: o.state_dict() for k, o in objective.optimizers.items()},
            )
            if is_main:
                atomic_save(state, path)
        else:
            if is_main:
                shutil.rmtree(tmp, ignore_errors=True)  # the leftovers of a crashed save
            barrier()
            save_sharded(sharded_states(objective.modules, objective.optimizers), tmp)
            if is_main:
                atomic_save(meta, os.path.join(tmp, META))  # last: its presence marks the directory complete
                publish_dir(tmp, path)
        if is_main:  # a run that changed mode leaves its old format behind; a crash before this resumes from it
            _remove_other_format(out, args.fsdp)
    except BaseException as e:  # DCP's CheckpointException is a BaseException; every rank must learn of any failure
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        error = _write_error(e, out)
    errors = [e for e in gather_objects(error) if e]
    if errors:
        if is_main and args.fsdp:
            shutil.rmtree(tmp, ignore_errors=True)
        kept = (
            f"the last good checkpoint (step {kept_step}) is kept"
            if kept_step is not None
            else "no earlier checkpoint exists"
        )
        raise GenperfError(f"could not write the checkpoint to {path}: {errors[0]}; {kept}")


def _remove_other_format(out, sharded):
    if sharded:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, CHECKPOINT))
    else:
        for name in (SHARDED_CHECKPOINT, f"{SHARDED_CHECKPOINT}.old"):
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)


def _write_error(e, folder):
    """What went wrong in a failed save, in a few words: the OSError's reason where one is inside
    (DCP wraps each rank's failure), else the exception's first line, said to be a full disk when
    the folder's device has (almost) no room left: torch's zip writer, which DCP uses, reports a
    failed write only as "unexpected pos"."""
    failures = getattr(e, "failures", None)  # DCP's CheckpointException: {rank: (exception, traceback)}
    causes = [e]
    if isinstance(failures, dict) and failures:
        causes = [f[0] if isinstance(f, tuple) else f for f in failures.values()]
    for cause in causes:
        x = cause
        while x is not None:
            if isinstance(x, OSError) and x.strerror:
                return x.strerror
            x = x.__cause__ or x.__context__
    first = causes[0]
    lines = str(first).strip().splitlines()
    reason = f"{type(first).__name__}: {lines[0] if lines else ''}"
    if shutil.disk_usage(folder).free < 1 << 20:
        return f"{os.strerror(errno.ENOSPC)} ({reason})"
    return reason


def check_same_options(path, stored, args, may_change):
    """Refuses to continue a run whose options differ from `stored` in anything but `may_change`."""
    changed = {
        k: (v, getattr(args, k, None)) for k, v in stored.items() if k not in may_change and v != getattr(args, k, None)
    }
    if changed:
        diff = ", ".join(f"--{k.replace('_', '-')} {old} -> {new}" for k, (old, new) in changed.items())
        raise GenperfError(f"{path} was written with other options ({diff}); resume with the same options")


def check_belongs(out, path):
    """Refuses to resume from a checkpoint that is not the run of folder `out`: one copied in from another run
    (its run id, or for runs without one its model and data, differ from OUT/config.json's)."""
    try:
        with open(os.path.join(out, "config.json")) as f:
            folder = json.load(f)
    except (OSError, ValueError):
        return  # nothing to compare with
    if not isinstance(folder, dict):
        return
    stored = read_meta(path)["config"]
    keys = ["run_id"] if folder.get("run_id") and stored.get("run_id") else ["model", "data"]
    if any(folder.get(k) != stored.get(k) for k in keys):
        raise GenperfError(
            f"{path} is not this folder's run: it trained {stored.get('model')} on {stored.get('data')}"
            f" (run {stored.get('run_id', 'without an id')}), {out}/config.json {folder.get('model')} on "
            f"{folder.get('data')} (run {folder.get('run_id', 'without an id')}); a checkpoint copied from "
            f"another run folder? Move it out, or resume the run it came from"
        )


def restore(path, objective, precision, args, data, rank, world_size, device, may_change, old_names=None):
    """Loads a checkpoint written by `save` into a training run (any number of ranks for a sharded
    one) whose options differ from the checkpoint's in `may_change` only, on the data it trained on
    (genperf.data.Data, compared by content); returns its step and the number of ranks that wrote it."""
    meta = read_meta(path)
    if _per_rank_resize(meta["config"]["batch_size"], args, len(meta["rng"]), world_size):
        may_change = {*may_change, "batch_size"}
    check_same_options(path, meta["config"], args, may_change)
    data.check_same(meta.get("data_fingerprint"), args.data_root)
    if is_sharded(path):  # into FSDP modules, or whole tensors into the plain modules of one process or --ddp
        load_sharded(objective.modules, objective.optimizers, path, old_names=old_names)
    elif args.fsdp:
        load_whole_into_sharded(path, objective.modules, objective.optimizers, meta)
    else:
        load_module_states(path, objective.modules, meta["models"])
        for k, o in objective.optimizers.items():
            o.load_state_dict(meta["optimizers"][k])
    precision.load_state_dict(meta["precision"])
    if len(meta["rng"]) == world_size:
        set_rng_state(meta["rng"][rank])
    else:  # another number of ranks: fresh, still deterministic, streams
        torch.manual_seed(args.seed * 1000 + rank + meta["step"])
    if meta["last_g_loss"] is not None:
        objective.last_g_loss = meta["last_g_loss"].to(device)
    return meta["step"], len(meta["rng"])


def _per_rank_resize(batch_then, args, ranks_then, ranks_now):
    """Whether `args` continues a run of global batch `batch_then` on another number of ranks under --elastic-batch
    per-rank, each rank's batch kept."""
    return (
        getattr(args, "elastic_batch", "global") == "per-rank"
        and ranks_then != ranks_now
        and args.batch_size * ranks_then == batch_then * ranks_now
    )


def load_whole_into_sharded(path, modules, optimizers, meta):
    """A single file's whole tensors into FSDP modules and their optimizers: every rank reads the file and keeps
    its shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    whole = StateDictOptions(full_state_dict=True)
    for k in modules:
        if k not in meta["models"]:
            raise GenperfError(f"{path} holds no {k} weights (it holds {', '.join(meta['models'])})")
    try:
        for k, m in modules.items():
            set_model_state_dict(m, meta["models"][k], options=whole)
        for k, o in optimizers.items():
            by_name = optimizer_state_by_name(modules[k], o, meta["optimizers"][k])
            set_optimizer_state_dict(modules[k], o, by_name, options=whole)
    except (RuntimeError, KeyError, ValueError) as e:
        raise GenperfError(f"{path} does not load into this model under --fsdp ({_first_cause(e)})") from None


def optimizer_state_by_name(module, optimizer, state):
    """torch's optimizer state dict, whose parameters are numbered in the optimizer's order, with each
    parameter's name (in `module`) in place of its number: the layout torch.distributed.checkpoint loads."""
    names = {p: n for n, p in module.named_parameters()}
    order = [names[p] for group in optimizer.param_groups for p in group["params"]]
    return {
        "state": {order[i]: s for i, s in state["state"].items()},
        "param_groups": [dict(g, params=[order[i] for i in g["params"]]) for g in state["param_groups"]],
    }


def load_module_states(path, modules, states):
    for k, m in modules.items():
        if k not in states:
            raise GenperfError(
                f"{path} holds no {k} weights (it holds {', '.join(states)}): a checkpoint of another model"
            )
        try:
            m.load_state_dict(states[k])
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise GenperfError(
                f"{path}: its {k} weights do not fit this model ({first[1].strip() if len(first) > 1 else first[0]})"
            ) from None
