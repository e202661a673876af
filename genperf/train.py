"""python -m genperf.train MODEL [options]: train one of the study's models, from the command line or from Python
(genperf.fit). The options are genperf.config's table; genperf.trainer runs them. Under --ddp or --fsdp this
process launches one worker per rank (unless torchrun did) and each trains on its slice of the batch."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

from genperf import checkpoint
from genperf.config import check, make, parse_args, to_argv
from genperf.data import check_dataset
from genperf.distributed import (
    LOST_PEER_EXIT,
    init_distributed,
    is_main_process,
    launch_workers,
    lost_a_peer,
    shutdown_distributed,
    under_torchrun,
)
from genperf.errors import GenperfError, LostPeer, os_error_line
from genperf.faults import (
    EXIT_CODES,
    exit_with_launcher,
    launcher_gone,
    lock_run_folder,
    report_crash,
    say_launcher_gone,
    usable_compile_cache,
)
from genperf.ops.backends import use_backend
from genperf.trainer import fit_here

RANK_0_FIRST_S = 3.0  # how long other ranks wait, after an error all ranks meet, for rank 0 to say it and exit


def run(config):
    """Trains `config` here, or launches its --ddp/--fsdp workers; returns (exit code, the summary or None)."""
    check(config)
    if (config.ddp or config.fsdp) and not under_torchrun():
        # Errors every worker would meet come before any starts: the data's (and a download), a damaged checkpoint's.
        check_dataset(config.data, config.data_root, config.download)
        found = checkpoint.find(config.out) if config.resume else None
        if found and checkpoint.is_sharded(found):
            checkpoint.check_shards(found)
        return launch_workers(config.nproc, "genperf.train", to_argv(config)), None
    exit_with_launcher()
    dist = init_distributed(config.device, config.comm_init_timeout)
    lock = lock_run_folder(config.out, dist.is_main)  # before anything in the folder is read or written
    try:
        return fit_here(config, dist)
    finally:
        if lock is not None:
            lock.release()


def fit(model=None, **options):
    """Trains `model` with options by name, as `python -m genperf.train` would (genperf.config's table: e.g.
    data="digits", epochs=3, out="runs/x", amp=True; resume=True with out= continues a run) and returns the run's
    summary.json as a dict. Raises GenperfError on bad options or data, and when the run stopped early."""
    config = make(model, **options)
    with use_backend(config.backend) if config.backend else contextlib.nullcontext():
        code, summary = run(config)
    if code:
        raise GenperfError(f"training {config.model} into {config.out} stopped with exit code {code}")
    if summary is None:  # run by --ddp/--fsdp workers, or already finished
        with open(os.path.join(config.out, "summary.json")) as f:
            summary = json.load(f)
    return summary


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    usable_compile_cache()
    config = None
    try:
        config = parse_args(argv)
        with use_backend(config.backend) if config.backend else contextlib.nullcontext():
            return run(config)[0]
    except GenperfError as e:
        if launcher_gone():  # e.g. a save whose collective failed because another rank stopped with the launcher
            say_launcher_gone()
            return 1
        if is_main_process():  # every rank meets the same error; the first says it
            print(f"genperf: error: {e}", file=sys.stderr, flush=True)
        if isinstance(e, LostPeer):  # rank 0 has said which peer and what is kept; the group is broken
            return LOST_PEER_EXIT
        if not is_main_process():  # the launcher stops every rank once one exits: rank 0 must have said why first
            time.sleep(RANK_0_FIRST_S)
        shutdown_distributed()
        return 2
    except OSError as e:  # a file or folder the run needs (outside the writes that say so themselves)
        if lost_a_peer(e) and launcher_gone():
            say_launcher_gone()
            return 1
        if is_main_process():
            print(f"genperf: error: {os_error_line(e)}", file=sys.stderr, flush=True)
        shutdown_distributed()
        return 2
    except Exception as e:
        if lost_a_peer(e) and launcher_gone():  # another rank saw the launcher killed and stopped first
            say_launcher_gone()
            return 1
        if not is_main_process() and lost_a_peer(e):
            return 1  # another rank failed first and says why; a traceback here would only bury that
        code = report_crash(config.out, e) if config is not None and under_torchrun() else None
        if code is None:
            raise
        return code
    except KeyboardInterrupt:  # outside the training loop, which handles SIGINT itself
        print("\ngenperf: interrupted by SIGINT; the last checkpoint, if any, is kept", file=sys.stderr, flush=True)
        return EXIT_CODES[signal.SIGINT]


if __name__ == "__main__":
    code = main()
    if under_torchrun():
        # A worker whose run has ended has written and closed its files; the C++ teardown of torch.compile's and
        # gloo's threads at interpreter exit aborted a worker once ("terminate called without an active
        # exception", an FSDP run under --compile on a 2-core CPU), failing a finished run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
