"""--compile auto's course through a run (AutoCompile): it times eager steps, decides by genperf.compiled's
measurements whether compiling pays, and compiles at once from a warm cache, or from a cold one only after a child
process has filled it (CompileInChild). The child builds the run's model, compiles its step and takes one on a
batch of the run's shape, which fills torch's on-disk cache (inductor's compiled graphs, AOTAutograd's); the run
meanwhile steps eagerly on one thread fewer, then compiles from the filled cache in seconds. On two cores a cold
compile in the run itself stops training for minutes; beside the child the run keeps about half its speed.

    python -m genperf.autocompile OPTIONS_JSON SHAPE DTYPE THREADS   (what CompileInChild starts)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types

import torch

from genperf import config as configs
from genperf.compiled import EAGER_STEPS_TIMED, compile_options, decide, graph_key, measured_gain, recorded_seconds
from genperf.families import build_objective
from genperf.ops.backends import use_backend
from genperf.precision import Precision

VERDICTS = {
    "here": "compiling now (--no-compile stays eager)",
    "in a child": "compiling in a child process while eager steps go on (--no-compile stays eager)",
    None: "staying eager (--compile compiles anyway)",
}


def plan(config, device_type, precision, eager_left_s, say):
    """An AutoCompile for a run of `config` on `device_type` in `precision` ("bf16", "fp32", ...) when auto can
    judge it once it has timed eager steps, else None, said in one line: auto then stays eager."""
    parallel = "fsdp" if config.fsdp else "ddp" if config.ddp else None
    measured = measured_gain(config.model, device_type, precision, parallel, config.invertible)
    if measured[0] is None:
        say(f"genperf: --compile auto: staying eager: {measured[2]} (--compile compiles anyway)")
        return None
    return AutoCompile(measured, graph_key(config, device_type, precision), vars(config), eager_left_s, say)


class AutoCompile:
    """Decides after EAGER_STEPS_TIMED timed eager steps. `measured`: compiled.measured_gain's (speed-up, cold
    seconds, what); `key`: the run's graph key; `options`: its config as a dict; `eager_left_s(step_s)`: seconds
    the rest of the run takes at `step_s` a step; `say`: prints a line."""

    def __init__(self, measured, key, options, eager_left_s, say):
        self.gain, self.cold_s, self.what = measured
        self.key, self.options, self.eager_left_s, self.say = key, options, eager_left_s, say
        self.timed, self.child = [], None

    def after_step(self, seconds, batch):
        """After each eager step but the first (`seconds` it took, `batch` its input): True when the objective
        should compile now."""
        if self.child:
            return self.child_done()
        if len(self.timed) == EAGER_STEPS_TIMED:  # decided: eager for good
            return False
        self.timed.append(seconds)
        if len(self.timed) < EAGER_STEPS_TIMED:
            return False
        step_s = sorted(self.timed)[len(self.timed) // 2]
        threads_to_spare = torch.get_num_threads() > 1
        how, words = decide(
            self.gain, self.cold_s, recorded_seconds(self.key), step_s, self.eager_left_s(step_s), threads_to_spare
        )
        self.say(f"genperf: --compile auto ({self.what}): {words}: {VERDICTS[how]}")
        if how == "in a child":
            self.child = CompileInChild(self.options, batch)
        return how == "here"

    def child_done(self):
        done = self.child.poll()
        if done is None:
            return False
        self.child = None
        filled, seconds, why = done
        if filled:
            self.say(
                f"genperf: --compile auto: the child process compiled in {seconds:.0f} s; compiling from its cache"
            )
        else:
            self.say(f"genperf: --compile auto: the child process failed ({why}); staying eager")
        return filled

    @contextlib.contextmanager
    def paused(self):
        """Stops the child, and gives the run its threads back, while the caller works off the clock (a benchmark
        measuring its model)."""
        if not self.child:
            yield
            return
        self.child.signal(signal.SIGSTOP)
        torch.set_num_threads(self.child.threads)
        try:
            yield
        finally:
            torch.set_num_threads(max(1, self.child.threads - 1))
            self.child.signal(signal.SIGCONT)

    def close(self):
        if self.child:
            self.child.close()


class CompileInChild:
    """Starts the child for the run `options` (its config as a dict) and its batch `batch`; the run's threads drop
    by one until `poll` sees the child end, or `close`."""

    def __init__(self, options, batch):
        self.threads = torch.get_num_threads()
        shape = ",".join(str(n) for n in batch.shape)
        dtype = str(batch.dtype).removeprefix("torch.")
        self.log = tempfile.TemporaryFile(mode="w+")  # the child's stderr: its last line says why it failed
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "genperf.autocompile",
                json.dumps(options, default=str),
                shape,
                dtype,
                str(self.threads),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,  # a Ctrl-C meant for the run reaches the run, which ends the child
        )
        self.started = time.perf_counter()
        torch.set_num_threads(max(1, self.threads - 1))

    def poll(self):
        """None while the child compiles; else (whether it filled the cache, its seconds, why it failed)."""
        code = self.proc.poll()
        if code is None:
            return None
        torch.set_num_threads(self.threads)
        seconds = time.perf_counter() - self.started
        self.log.seek(0)
        lines = [line.strip() for line in self.log.read().splitlines() if line.strip()]
        self.log.close()
        return code == 0, seconds, (lines[-1] if lines else f"exit code {code}")

    def signal(self, number):
        """Sends `number` to the child and the compile workers it started (its process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, number)

    def close(self):
        """Ends a child still compiling (the run stopped or failed first) and gives the run its threads back."""
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait()
        torch.set_num_threads(self.threads)
        self.log.close()


def fill_cache(options, shape, dtype, threads):
    """The child: one compiled training step of the run's model on a batch of its shape, at the run's thread count
    (inductor's CPU kernels, and so its cache's keys, depend on it)."""
    torch.set_num_threads(threads)
    config = configs.stored(options)
    device = torch.device(config.device)
    data = types.SimpleNamespace(shape=tuple(shape[1:]))  # what the models are built from
    objective = build_objective(config, data, Precision(device.type, config.amp), device)
    objective.compile(**compile_options(config))
    x = (torch.rand(shape) if dtype.is_floating_point else torch.zeros(shape)).to(device=device, dtype=dtype)
    if config.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with use_backend(config.backend) if config.backend else contextlib.nullcontext():
        objective.train_step(x, 0)


def exit_with_parent():
    """A child whose run died (killed, so it could not end the child) stops too, within a second."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main(argv):
    options, shape, dtype, threads = argv
    exit_with_parent()
    fill_cache(json.loads(options), [int(n) for n in shape.split(",")], getattr(torch, dtype), int(threads))


if __name__ == "__main__":
    main(sys.argv[1:])
