"""What a training run does about faults: one writer per run folder, a graceful stop on SIGTERM and
SIGINT, non-finite losses and parameters caught before they reach a checkpoint, and workers that
die with their launcher."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import sys
import threading
import time
import traceback

import torch

from genperf.distributed import PHASES, all_reduce_sum, gather_objects, read_progress, restart_count
from genperf.errors import GenperfError

LOCK = "run.lock"


class RunLock:
    """An exclusive lock on a run folder, held until release or the end of the process: a flock on the folder
    itself, so that deleting a file cannot let a second run in; OUT/run.lock names the holder's PID for the
    message a second run prints. The kernel drops a flock when its process dies, however it dies, so the lock
    of a dead run is simply taken over."""

    def __init__(self, out):
        self.path, self.fd = os.path.join(out, LOCK), None
        try:
            os.makedirs(out, exist_ok=True)
            fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:  # --out names a file or lies under one
            raise GenperfError(f"cannot use {out} as a run folder: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise GenperfError(f"cannot lock the run folder {out}: {e.strerror}") from None
            raise GenperfError(
                f"{out} is in use by another genperf run (pid {self._holder()}); wait for it to end, "
                f"stop it, or choose another --out"
            ) from None
        try:
            with open(self.path, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as e:  # a read-only folder
            os.close(fd)
            raise GenperfError(f"cannot use {out} as a run folder: {e.strerror or e}") from None
        self.fd = fd

    def _holder(self):
        try:
            with open(self.path) as f:
                return f.read(64).strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# The signals that stop a run with a checkpoint (SIGHUP: its terminal closed), and its exit code for each: 128 + the
# signal number, as shells report it.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


class StopSignals:
    """While active, the first SIGTERM, SIGINT or SIGHUP only asks the run to stop (`requested`), so it can
    finish its step and write a checkpoint; a second one exits at once (saying so where `verbose`)."""

    def __init__(self, verbose=True):
        self.requested, self.verbose, self._old = None, verbose, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals can be handled there only
            for sig in EXIT_CODES:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested is not None:
            if self.verbose:
                print(f"\ngenperf: second {name}: stopping now, without a checkpoint", file=sys.stderr, flush=True)
            os._exit(EXIT_CODES[signum])
        self.requested = signum  # the run says what it did in one line when it has stopped


def ignore_stop_signals():
    """For a worker that is ending anyway (it lost a peer and says which): once one rank has exited, the launcher
    SIGTERMs every other one, and that signal, arriving after the run's StopSignals are gone, would end this rank
    before its one line is out; the launcher then blames the lost rank with no word of what happened."""
    if threading.current_thread() is threading.main_thread():
        for sig in EXIT_CODES:
            signal.signal(sig, signal.SIG_IGN)


class StepChecks:
    """After every step: is any loss non-finite, has a stop been asked for? Whether each loss is finite is
    recorded on the device, so a step costs no host sync; the records are read every `every` steps (--log-every,
    when the log line reads the losses anyway) and by `resolve`, which the trainer calls before anything is
    written from the model's state (a checkpoint, a grid, a held-out line), and a bad loss is reported at the
    first step that had it. One process stops at the step a signal arrives; several ranks learn of each other's
    signals when they read (all at the same steps), so they stop at the same step, at most `every` steps later."""

    def __init__(self, device, signals, every=1, world_size=1):
        self.signals, self.every, self.world_size, self.device = signals, every, world_size, device
        self.pending = []  # (step, metric names, their non-finite flags on the device) since the last read

    def after_step(self, step, metrics):
        """Records step `step`'s check; on a reading step raises on a non-finite loss since the last read. Returns
        the signal to stop on, or None."""
        values = torch.stack([v.detach().float().reshape(()) for v in metrics.values()])
        self.pending.append((step, list(metrics), ~torch.isfinite(values)))
        if step % self.every == 0:
            return self.resolve()
        return self.signals.requested if self.world_size == 1 else None

    def resolve(self):
        """Reads what was recorded (one host sync, summed over the ranks): raises on the first non-finite loss;
        returns the signal asked for on any rank, or None."""
        pending, self.pending = self.pending, []
        sig = self.signals.requested
        # Which of EXIT_CODES' signals was asked for here: zeros are made on the device (rare: a signal).
        asked = torch.zeros(len(EXIT_CODES), device=self.device)
        if sig is not None:
            asked[list(EXIT_CODES).index(sig)] = 1
        flags = all_reduce_sum(torch.cat([f.float() for _, _, f in pending] + [asked])).tolist()
        at = 0
        for step, names, _ in pending:
            bad = [n for n, f in zip(names, flags[at : at + len(names)]) if f]
            if bad:
                raise NonFinite(f"non-finite {', '.join(bad)} at step {step}")
            at += len(names)
        return next((s for s, f in zip(EXIT_CODES, flags[at:]) if f), None)


class NonFinite(GenperfError):
    pass


def check_parameters(modules, step, device):
    """Raises NonFinite if any parameter or floating buffer of `modules` is NaN or infinite on any
    rank (each rank checks its own shards)."""
    bad = []
    for module in modules.values():
        tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
        local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
        counts = [(~torch.isfinite(t)).sum().float() for t in local]
        bad.append(torch.stack(counts).sum().to(device) if counts else torch.zeros((), device=device))
    counts = all_reduce_sum(torch.stack(bad)).tolist()
    names = [name for name, c in zip(modules, counts) if c]
    if names:
        raise NonFinite(f"non-finite weights in {', '.join(names)} after step {step}")


def usable_compile_cache(prog="genperf"):
    """TORCHINDUCTOR_CACHE_DIR set to a folder that cannot be made or written would break every command, not only
    --compile ones (torch's optimizers import dynamo, which makes that folder): such a setting is replaced by a fresh
    temporary folder for this process, said in one line."""
    import tempfile

    wanted = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not wanted:
        return
    try:
        os.makedirs(wanted, exist_ok=True)
        with tempfile.TemporaryFile(dir=wanted):
            pass
    except OSError as e:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="genperf-inductor-")
        print(
            f"{prog}: TORCHINDUCTOR_CACHE_DIR={wanted} cannot be used ({e.strerror or e}); this run compiles into "
            f"{os.environ['TORCHINDUCTOR_CACHE_DIR']}",
            file=sys.stderr,
            flush=True,
        )


_LAUNCHER = {"pid": None, "said": threading.Lock()}  # the elastic launcher of this worker; its "gone" line, once


def exit_with_launcher(poll_s=0.5):
    """In a worker started by torch's elastic launcher (genperf's --fsdp or torchrun): exit as soon as
    the launcher is gone. The launcher starts each worker in a session of its own, so a kill of the
    launcher's process group (a closed terminal, a scheduler's kill -9) would otherwise leave the
    workers training and writing into the run folder."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    _LAUNCHER["pid"] = os.getppid()

    def watch():
        while not launcher_gone():
            time.sleep(poll_s)
        say_launcher_gone()
        os._exit(1)

    threading.Thread(target=watch, name="genperf-launcher-watch", daemon=True).start()


def launcher_gone():
    return _LAUNCHER["pid"] is not None and os.getppid() != _LAUNCHER["pid"]


def say_launcher_gone():
    """Rank 0's one line, whichever notices first: its watcher, or a collective that failed because another
    rank's watcher had already stopped that rank."""
    if os.environ.get("RANK") == "0" and _LAUNCHER["said"].acquire(blocking=False):
        print(f"genperf: the launcher (pid {_LAUNCHER['pid']}) is gone; its workers stop", file=sys.stderr, flush=True)


def lock_run_folder(out, is_main):
    """Rank 0 takes the run folder's lock (returned; None on other ranks); if it cannot, every rank
    raises the same one-line error."""
    lock, error = None, None
    if is_main:
        try:
            lock = RunLock(out)
        except GenperfError as e:
            error = str(e)
    errors = [e for e in gather_objects(error) if e]
    if errors:
        raise GenperfError(errors[0])
    return lock


def _proc_stat(pid):
    """(state, parent pid) of `pid` from /proc (state: R running, S sleeping, T stopped, Z exited, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command, which may hold spaces
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def _proc_env(pid, names):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            pairs = (item.partition(b"=") for item in f.read().split(b"\0"))
            env = {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}
    except OSError:
        return {}
    return {k: env.get(k) for k in names}


def sibling_workers():
    """{rank: (pid, state)} of the other workers of this job on this node, as /proc shows them: the processes of
    this worker's launcher (its parent) with its run id; ranks of this node missing from it are gone."""
    me, parent, run_id = os.getpid(), os.getppid(), os.environ.get("TORCHELASTIC_RUN_ID")
    found = {}
    for entry in os.listdir("/proc") if run_id and os.path.isdir("/proc") else ():
        stat = _proc_stat(entry) if entry.isdigit() and int(entry) != me else None
        if stat is None or stat[1] != parent:
            continue
        env = _proc_env(entry, ("TORCHELASTIC_RUN_ID", "RANK"))
        if env.get("TORCHELASTIC_RUN_ID") == run_id and (env.get("RANK") or "").isdigit():
            found[int(env["RANK"])] = (int(entry), stat[0])
    return found


CRASH_REPORT = "traceback-rank{}.txt"  # in the run folder: what a rank of a job that raised unexpectedly leaves


def write_crash_report(out, rank, error):
    """Writes the traceback of `error`, which rank `rank` raised, into the run folder `out`; returns its path, or
    None when it could not be written."""
    path = os.path.join(out, CRASH_REPORT.format(rank))
    try:
        with open(path, "w") as f:
            f.write(_attempt_header() + crash_line(error) + "\n\n" + "".join(traceback.format_exception(error)))
    except OSError:
        return None
    return path


def report_crash(out, error):
    """A rank of a job of several processes raised `error`, not a GenperfError: its traceback goes to the run folder
    `out`, and one line names it: rank 0 says it here (exit code 2); another rank leaves it to rank 0, which reads
    the report when the next collective fails (exit code 1). Returns the exit code, or None when the report could
    not be written (the caller raises, and the traceback goes to stderr)."""
    rank = int(os.environ.get("RANK", "0"))
    path = write_crash_report(out, rank, error)
    if path is None:
        return None
    if rank == 0:
        print(f"genperf: error: rank 0 raised {crash_line(error)} (its traceback is in {path})", file=sys.stderr)
        return 2
    return 1


def crash_line(error):
    """An exception as one line: its type and the first line of its message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _attempt_header():
    """The first line of a crash report: the job and attempt it belongs to (a restarted job's workers must not
    take a report of the attempt before them for a fresh one)."""
    return f"genperf crash report of job {os.environ.get('TORCHELASTIC_RUN_ID', '')}, attempt {restart_count()}\n"


def _crash_reports(out):
    """{rank: (path, the error in one line)} of the crash reports in the run folder `out` that this attempt of this
    job's ranks wrote."""
    found = {}
    for rank in range(int(os.environ.get("WORLD_SIZE", "1"))):
        path = os.path.join(out, CRASH_REPORT.format(rank))
        with contextlib.suppress(OSError), open(path) as f:
            if f.readline() == _attempt_header():
                found[rank] = (path, f.readline().strip())
    return found


def _busy_ranks(samples=5, every_s=0.1):
    """The ranks of this node running (state R) in each of `samples` looks at /proc: after a collective timed out,
    ranks busy outside any collective (one waiting in a collective sleeps on its socket)."""
    busy = None
    for i in range(samples):
        running = {rank for rank, (_, state) in sibling_workers().items() if state == "R"}
        busy = running if busy is None else busy & running
        if i + 1 < samples:
            time.sleep(every_s)
    return busy


def diagnose_peers(out=None, timed_out=False):
    """What became of the other ranks, in words, after a collective failed: those that raised (their crash report
    in the run folder `out`), and on this node those that are gone or stopped, and, when the collective `timed_out`,
    those busy outside any collective (an endless loop). Stopped and busy ones are killed here, so that the
    launcher can end the job instead of waiting on them (a busy one takes no SIGTERM before its step ends: the
    launcher's SIGKILL came 30 s later)."""
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    first = int(os.environ.get("RANK", "0")) - int(os.environ.get("LOCAL_RANK", "0"))
    me, workers, said = int(os.environ.get("RANK", "0")), sibling_workers(), []
    reports = _crash_reports(out) if out else {}
    busy = _busy_ranks() if timed_out else set()
    behind = _ranks_behind(me) if timed_out else {}
    for rank, (path, error) in sorted(reports.items()):
        if rank != me:
            said.append(f"rank {rank} raised {error} (its traceback is in {path})")
    local = range(first, first + local_size)
    for rank in local:
        pid, state = workers.get(rank, (None, None))
        if rank == me or rank in reports:
            continue
        if state in (None, "Z", "X"):
            said.append(f"rank {rank} is gone (killed, e.g. by the out-of-memory killer, or crashed)")
        elif state in ("T", "t"):
            os.kill(pid, signal.SIGKILL)
            said.append(f"rank {rank} (pid {pid}) was stopped (SIGSTOP, a debugger) and is now killed")
        elif rank in busy:
            os.kill(pid, signal.SIGKILL)
            said.append(f"rank {rank} (pid {pid}) was busy outside any collective (hung in a loop?) and is now killed")
        elif rank in behind:  # asleep where no other rank waits with it: blocked reading a file, on a lock, ...
            os.kill(pid, signal.SIGKILL)
            said.append(
                f"rank {rank} (pid {pid}) was asleep outside any collective ({behind[rank]}: blocked on I/O or a "
                f"lock?) and is now killed"
            )
    said += [f"rank {rank} on another node is behind ({where})" for rank, where in behind.items() if rank not in local]
    return "; ".join(said) or "every rank of this node is alive: a rank that hangs, or another node is gone"


def _ranks_behind(me):
    """{rank: where it is, in words} of the ranks whose last reported progress is behind the furthest rank's: after
    a collective timed out, those the others wait for (genperf.distributed.Progress)."""
    positions = read_progress(int(os.environ.get("WORLD_SIZE", "1")))
    if me not in positions:
        return {}
    furthest = max(positions.values())

    def where(position):
        return f"at step {position[0]}, {PHASES[position[1]]}"

    return {
        rank: f"{where(p)}, while rank {me} waited {where(positions[me])}"
        for rank, p in sorted(positions.items())
        if p < furthest and rank != me
    }
