"""Many processes: the process group (torchrun or genperf's own launcher), data parallel (DDP) and FSDP2
sharding, and the few collectives the rest of genperf uses (each a no-op in a single process)."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0


def _initialized():
    return dist.is_available() and dist.is_initialized()


def under_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def restart_count():
    """How many times this job has been started again: by torchrun (--max-restarts) after a failed worker, or by
    Slurm (sbatch --requeue) after a preemption or node failure."""
    return sum(int(os.environ.get(name) or 0) for name in ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"))


def restarts_left():
    """How many more times torchrun (--max-restarts) will start this job again after a failed worker."""
    return max(
        0,
        int(os.environ.get("TORCHELASTIC_MAX_RESTARTS") or 0) - int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0),
    )


def default_nproc():
    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 2


def is_main_process():
    """Rank 0 of a torchrun job, or a process on its own."""
    return int(os.environ.get("RANK", "0")) == 0


# A worker that lost contact with another rank (killed, stopped, hung, a broken connection) exits with this code,
# rank 0 after saying so in one line.
LOST_PEER_EXIT = 3
# Exit codes with which a worker has already said what happened in one line: an error, a lost peer, a stop by
# SIGHUP, SIGINT or SIGTERM (genperf.faults.EXIT_CODES).
SELF_REPORTED_EXITS = (2, LOST_PEER_EXIT, 129, 130, 143)


def launch_workers(nproc: int, module: str, argv: list, shutdown_timeout: int = 300) -> int:
    """Runs `python -m module argv` in `nproc` local workers through torch's elastic launcher (what
    torchrun uses) and returns the exit code: 0 when all succeed; rank 0's own code when it said why
    it stopped; 128 + N when the launcher got signal N (it passes the signal on and waits up to
    `shutdown_timeout` s for the workers to write their checkpoint); else 1, with one line."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    options = dict(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
    )
    if "shutdown_timeout" in LaunchConfig.__dataclass_fields__:  # torch >= 2.10
        options["shutdown_timeout"] = shutdown_timeout
    # The launcher's own warnings (closing signals sent, failures with tracebacks) would wrap the
    # one line a worker prints; failures are reported below instead.
    for name in list(logging.root.manager.loggerDict):  # each has a level of its own (LOGLEVEL)
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    print(f"genperf: launching {nproc} workers of {module}", flush=True)
    try:
        elastic_launch(LaunchConfig(**options), sys.executable)("-u", "-m", module, *argv)
    except ChildFailedError as e:
        # Once one rank fails the launcher stops the others with SIGTERM, which they may report as a stop (143) or
        # die of: the cause is a rank that said its error (2), else rank 0 having said which peer it lost (it
        # names it), else one that crashed otherwise, else a stop or a silent lost peer.
        def rank_of(item):
            rank, code = item[0], item[1].exitcode
            said_lost = code == LOST_PEER_EXIT and rank == 0
            stopped = code in SELF_REPORTED_EXITS or code == -signal.SIGTERM
            return (0 if code == 2 else 1 if said_lost else 3 if stopped else 2), rank

        rank, first = min(e.failures.items(), key=rank_of)
        if first.exitcode in SELF_REPORTED_EXITS and (first.exitcode != LOST_PEER_EXIT or rank == 0):
            return first.exitcode
        how = (
            f"killed by {signal.Signals(-first.exitcode).name}" if first.exitcode < 0 else f"exit code {first.exitcode}"
        )
        print(f"genperf: error: worker rank {rank} failed ({how}); its output is above", file=sys.stderr, flush=True)
        return 1
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0


def init_distributed(device: str, timeout_s: float = 900) -> Dist:
    """Joins the torchrun process group (nccl on CUDA, gloo on CPU), whose collectives wait at most `timeout_s`
    for the other ranks (see set_collective_timeout), or returns a single-process Dist."""
    if not under_torchrun():
        return Dist(device=torch.device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    timeout = datetime.timedelta(seconds=timeout_s)
    if torch.device(device).type == "cuda":
        # The NCCL watchdog aborts a collective that outlives the timeout and tears the process down, instead of
        # leaving it blocked in a kernel.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        dist.init_process_group("nccl", device_id=dev, timeout=timeout, **_attempt_store(timeout))
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timeout, **_attempt_store(timeout))
    return Dist(dist.get_rank(), dist.get_world_size(), dev)


_JOB = {"store": None}  # the store of this attempt of the job, also where the ranks report their progress


def _attempt_store(timeout):
    """The job's store (torchrun's env:// rendezvous), its keys prefixed by the attempt: torchrun restarts workers
    on the same store, where the gloo addresses of the failed attempt's ranks are still found and connected to
    (a restarted job of 2 CPU ranks failed 'Connection refused' on every restart without this)."""
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    _JOB["store"] = dist.PrefixStore(f"genperf-attempt-{attempt}", store)
    return dict(store=_JOB["store"], rank=rank, world_size=world_size)


# What a rank does within a step, in the order it does them; a rank whose (step, phase) is behind the others' is
# the one they wait for.
PHASES = ("loading its batch", "in its step", "logging or checkpointing after its step")


class Progress:
    """Where this rank is (a step and one of PHASES), kept in the job's store by a thread of its own twice a
    second, so that steps pay nothing for it: after a collective timed out, rank 0 reads every rank's
    (`read_progress`). A process on its own keeps it to itself."""

    def __init__(self, rank, every_s=0.5):
        self.rank, self.every_s, self.position = rank, every_s, None
        self.store, self.closed = _JOB["store"], threading.Event()
        if self.store is not None:
            threading.Thread(target=self._report, name="genperf-progress", daemon=True).start()

    def at(self, step, phase):
        self.position = (step, PHASES.index(phase))

    def close(self):
        """Reports no more (the run is over)."""
        self.closed.set()

    def _report(self):
        sent = None
        while not self.closed.wait(self.every_s):
            position = self.position
            if position is not None and position != sent:
                try:
                    self.store.set(_progress_key(self.rank), f"{position[0]} {position[1]}")
                except Exception:  # the store is gone with the job: nothing to report to
                    return
                sent = position


def _progress_key(rank):
    return f"genperf-progress-{rank}"


def read_progress(world_size):
    """{rank: (step, phase index)} of the ranks that reported their progress to the job's store (rank 0's store
    answers even when a collective has timed out)."""
    store, found = _JOB["store"], {}
    if store is not None:  # the job is ending: a store that cannot answer (its node is gone) must not hold it up
        store.set_timeout(datetime.timedelta(seconds=5))
    for rank in range(world_size) if store is not None else ():
        with contextlib.suppress(Exception):  # a rank that never reported, or a store that is gone
            if store.check([_progress_key(rank)]):
                step, phase = store.get(_progress_key(rank)).decode().split()
                found[rank] = (int(step), int(phase))
    return found


def set_collective_timeout(seconds: float):
    """From now on a collective waits at most `seconds` for the other ranks (torchtitan's practice: a long
    timeout while a run compiles and warms up, a short one once its steps are steady)."""
    if _initialized():
        dist.barrier()  # every rank switches between the same two collectives
        timeout = datetime.timedelta(seconds=seconds)
        if hasattr(dist, "set_timeout"):  # torch >= 2.12; _set_pg_timeout is deprecated there
            dist.set_timeout(timeout)
        else:
            dist.distributed_c10d._set_pg_timeout(timeout, dist.group.WORLD)


# What a collective raises when another rank is gone (a closed or reset connection) or does not answer in time.
_TIMED_OUT = ("Timed out waiting", "Application timeout caused pair closure")  # gloo's, the first and those after
_LOST_PEER_MESSAGES = (
    "closed by peer",
    "reset by peer",
    *_TIMED_OUT,
    "Connection refused",
)


def lost_a_peer(error):
    """Whether `error` is a collective failing because another rank exited first, or stopped answering."""
    return under_torchrun() and (
        isinstance(error, getattr(dist, "DistNetworkError", ())) or any(s in str(error) for s in _LOST_PEER_MESSAGES)
    )


def timed_out(error):
    """Whether a collective raised `error` because the other ranks did not answer within the timeout."""
    return any(s in str(error) for s in _TIMED_OUT)


def shutdown_distributed():
    if _initialized():
        dist.destroy_process_group()
    _JOB["store"] = None


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _initialized():
        dist.all_reduce(t)
    return t


def apply_ddp(module: torch.nn.Module, device: torch.device):
    """DistributedDataParallel over the process group: parameters and buffers broadcast from rank 0 now, gradients
    all-reduced (averaged) in buckets as backward produces them, and the buffers (batch norm's running
    statistics) broadcast from rank 0 at every forward, so every rank evaluates and checkpoints the same model.
    Batch statistics stay per rank, as on the study's two GPUs. Gradients live in the buckets themselves
    (gradient_as_bucket_view): no second copy of them."""
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    # A convolution with one output channel (a critic's last layer) gets a gradient whose stride along that size-1
    # dimension differs from its bucket's: the same memory layout, which DDP's reducer still warns about.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(
        module, device_ids=[device] if device.type == "cuda" else None, gradient_as_bucket_view=True
    )


def apply_fsdp(model: torch.nn.Module, units, amp_dtype=None, forward_methods=()):
    """FSDP2: shard each unit (a module, or a list of them gathered together: group_units), then the root. Under
    AMP parameters are gathered in `amp_dtype` and gradients reduced in fp32; inputs are not cast, so a flow's state
    stays in fp32 between couplings."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    device_type = "cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu"
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    if amp_dtype is not None:
        # nn.BatchNorm2d keeps fp32 parameters next to its fp32 running statistics (the kernels need both alike):
        # the batch norms of a unit are one fp32 group, gathered and reduced together. genperf's own batch norm
        # casts its parameters itself and stays in its unit: RealNVP's 60 batch norms as a group of their own
        # (FSDP hooks on each) made its 14x14 step on two gloo ranks of a 2-core Xeon 1.14x slower.
        fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False)
        for group in batch_norm_groups(model, units):
            fully_shard(group, mesh=mesh, mp_policy=fp32)
    for i, unit in enumerate(units):
        # Backward starts with the last unit, right after its forward: resharding it would only gather it again
        # (torchtitan keeps its last block too). RealNVP of 1.3M parameters is one unit: 1.08x the 14x14 step on
        # two gloo ranks of a 2-core Zen 4.
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=i < len(units) - 1)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for name in forward_methods:
        register_fsdp_forward_method(model, name)
    return model


# Parameters an FSDP unit gathers at least: consecutive blocks are grouped up to it. Each unit costs its own
# all-gather and reduce-scatter; one unit per coupling made RealNVP of 1.3M parameters (10 couplings) 1.5x slower
# on two gloo ranks of a 2-core Xeon (45 against 67 images/s) than one unit for all. 8M parameters gather 16 MB
# in bf16: nothing beside the sharded weights, gradients and Adam state.
FSDP_UNIT_PARAMS = 8_000_000


def group_units(blocks, min_params=FSDP_UNIT_PARAMS):
    """Consecutive `blocks` in lists of at least `min_params` parameters (a short last list joins the one before):
    the units apply_fsdp shards."""
    groups, size = [], 0
    for block in blocks:
        if not groups or size >= min_params:
            groups.append([])
            size = 0
        groups[-1].append(block)
        size += sum(p.numel() for p in block.parameters())
    if len(groups) > 1 and size < min_params:
        short = groups.pop()
        groups[-1] += short
    return groups


def _modules_of(unit):
    return [m for block in (unit if isinstance(unit, list) else [unit]) for m in block.modules()]


def batch_norm_groups(model, units):
    """The batch norms that need fp32 parameters of each unit (a module or a list of them), then those of the model
    outside every unit: lists, empty ones left out."""
    norms = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not getattr(m, "casts_own_affine", False)
    ]
    groups = [[m for m in _modules_of(unit) if m in norms] for unit in units]
    grouped = {id(m) for group in groups for m in group}
    groups.append([m for m in norms if id(m) not in grouped])
    return [group for group in groups if group]


def gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] (just [obj] when not distributed)."""
    if not _initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier():
    if _initialized():
        dist.barrier()
