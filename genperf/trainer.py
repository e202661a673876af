"""One training run on this process's rank: the Trainer builds data -> model -> objective from a config
(genperf.config), then `run()` loops step -> checks -> log -> evaluate/checkpoint until the last step or a stop
signal. Writes the run folder: config.json, metrics.jsonl, samples/ (a grid per epoch from fixed latents),
loss.png, an atomically written checkpoint that --resume continues from, and summary.json."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
import uuid

import torch

from genperf import autocompile, checkpoint, models, perf
from genperf.compiled import (
    compile_choice,
    compile_options,
    graph_key,
    precision_name,
    record_seconds,
)
from genperf.config import RESUMABLE, applicable
from genperf.data import load_dataset, make_batches
from genperf.distributed import (
    Progress,
    all_reduce_sum,
    gather_objects,
    lost_a_peer,
    restart_count,
    restarts_left,
    set_collective_timeout,
    shutdown_distributed,
    timed_out,
)
from genperf.errors import DataError, GenperfError, LostPeer
from genperf.families import FAMILY_OF, build_objective
from genperf.faults import (
    EXIT_CODES,
    NonFinite,
    StepChecks,
    StopSignals,
    check_parameters,
    diagnose_peers,
    ignore_stop_signals,
)
from genperf.ops.backends import describe, use_backend
from genperf.precision import Precision, keep_freed_cpu_memory
from genperf.runlog import RunLog
from genperf.schedule import lr_factor, scheduled, set_lr
from genperf.streams import seeded

NUM_SAMPLES = 64  # images in each sample grid


class Trainer:
    def __init__(self, config, dist):
        self.config, self.dist, self.device = config, dist, dist.device
        if self.device.type == "cpu":
            keep_freed_cpu_memory()
        c = config
        self.data = load_dataset(c.data, c.data_root, c.image_size, c.channels, c.download, c.seed)
        self.precision = Precision(self.device.type, c.amp)
        if self.device.type == "cuda":  # every step has the same shapes: let cuDNN time its algorithms once
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(c.seed)  # the same initial weights on every rank (FSDP2 keeps each rank's own shard)
        self.objective = build_objective(c, self.data, self.precision, self.device, dist.rank, dist.world_size)
        self.compiling, self.cuda_graphs = False, False
        if compile_choice(c) == "on":
            self.compile_now()
        torch.manual_seed(c.seed * 1000 + dist.rank)  # then a stream of its own per rank
        self.flops, self.peak, memory_line = self._account()
        self.peak_rechecked = False
        self.train = make_batches(
            self.data.train,
            c.batch_size,
            c.seed,
            dist.rank,
            dist.world_size,
            self.device,
            loader=c.loader,
            workers=c.workers,
        )
        self.heldout = make_batches(
            self.data.heldout,
            c.batch_size,
            0,
            dist.rank,
            dist.world_size,
            self.device,
            shuffle=False,
            drop_last=False,
            loader=c.loader,
            workers=c.workers,
        )
        self.steps_per_epoch = len(self.train)
        self.total_steps = c.steps if c.steps is not None else c.epochs * self.steps_per_epoch
        self.temperature = c.sample_temperature or 1.0  # None: the model sets no grid temperature
        noise = self.objective.noise(NUM_SAMPLES, torch.Generator().manual_seed(c.seed))
        self.fixed_noise = noise.to(self.device) * self.temperature
        self.data_print = self.data.fingerprint()
        self.ckpt = os.path.join(c.out, checkpoint.SHARDED_CHECKPOINT if c.fsdp else checkpoint.CHECKPOINT)
        self.step = self._restore()
        self.kept_step = self.step if c.resume else None  # the step of the checkpoint on disk
        self.log = self._start_log(memory_line) if self.step < self.total_steps else None
        # The loop's state: the metrics since the last log line, what was last logged, the stop asked for.
        self.window, self.window_start, self.t_start, self.start_step = (
            {},
            time.perf_counter(),
            time.perf_counter(),
            self.step,
        )
        self.last, self.held, self.held_step, self.artifacts_step, self.last_grid = {}, {}, None, None, None
        self.compile_s, self.compile_reported = 0.0, 0.0  # seconds of the steps in which torch.compile compiled
        self.bar = _silent_bar()  # run() shows a progress bar; steps taken outside it (genperf.audit) show none
        self.auto_compile = self.plan_auto_compile() if compile_choice(c) == "auto" else None
        self.stop, self.finished = None, False
        self.progress = Progress(dist.rank)
        self.progress.at(self.step, "loading its batch")
        self.signals = StopSignals(verbose=dist.is_main)
        self.checks = StepChecks(self.device, self.signals, c.log_every, dist.world_size)

    # ---- the run ----
    def run(self):
        """Trains to the last step or until a stop signal; returns the exit code."""
        if self.log is None:  # nothing to train: the run folder stays as it is
            if self.dist.is_main:
                print(
                    f"genperf: {self.config.out} has already finished its {self.total_steps} steps; nothing to do "
                    f"(pass a larger --steps or --epochs to train further)",
                    flush=True,
                )
            return 0
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.total_steps, initial=self.step, disable=not self.dist.is_main, dynamic_ncols=True, unit="step"
        )
        try:
            # Signals stay deferred until the run has stopped or finished, so a stop always ends with a checkpoint;
            # one during the final grid, evaluation and checkpoint lets them finish.
            with self.signals:
                while self.step < self.total_steps and not self.stop:
                    self.train_epoch()
                if self.stop:
                    self.save_checkpoint()
                else:
                    self.finish()
        except NonFinite as e:
            kept = (
                f"The last good checkpoint (step {self.kept_step}) is kept at {self.ckpt}"
                if self.kept_step is not None
                else "No checkpoint was written before it"
            )
            raise GenperfError(f"{e}; stopping. {kept}") from None
        except DataError as e:
            raise DataError(f"{e} ({self.keep_steps_after_data_error()})") from None
        except Exception as e:
            if lost_a_peer(e):
                ignore_stop_signals()  # the process exits after its line; the launcher's SIGTERM must not cut it
                raise LostPeer(self.lost_peer_line(e)) from None
            raise
        finally:
            self.progress.close()
            self.bar.close()  # ends the bar's line, so a message after it starts a line of its own
            if self.auto_compile:
                self.auto_compile.close()
        return self.say_stop()

    def lost_peer_line(self, error):
        """What rank 0 says when a collective failed because another rank is gone or stopped answering."""
        c = self.config
        # gloo's first sentence, without its source location: "Read error [127.0.0.1]:21662: Connection reset by peer"
        text = str(error).strip()
        cause = text.splitlines()[0].split("] ", 1)[-1].split(". ")[0] if text else type(error).__name__
        left = restarts_left()
        then = (
            f"torchrun starts the job again ({left} restart(s) left) and it resumes from there"
            if left
            else f"continue with: python -m genperf.train --resume --out {c.out}"
        )
        kept = (
            f"the last checkpoint (step {self.kept_step}) is kept at {self.ckpt}; {then}"
            if self.kept_step is not None
            else "no checkpoint was written before it"
        )
        peers = diagnose_peers(c.out, timed_out(error))
        return f"lost contact with the other ranks at step {self.step} ({cause}): {peers}; {kept}"

    def train_epoch(self):
        epoch, first_step = divmod(self.step, self.steps_per_epoch)
        start = self.step
        for x in self.train.epoch(epoch, start=first_step):
            self.train_step(x)
            if self.stop or self.step >= self.total_steps:
                break
        if self.step == start:  # a loader that yields nothing would otherwise loop over empty epochs
            raise DataError(f"epoch {epoch} gave no batch: every image of it was unreadable")
        if self.step % self.steps_per_epoch == 0 and not self.stop:
            self.epoch_artifacts(f"epoch_{self.step // self.steps_per_epoch:03d}")

    def train_step(self, x):
        c = self.config
        if c.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        graphs, step_start = compiled_graphs() if self.compiling else 0, time.perf_counter()
        if self.cuda_graphs:  # a new step: CUDA graph trees may reuse the memory of the last step's outputs
            torch.compiler.cudagraph_mark_step_begin()
        if scheduled(c.warmup, c.lr_schedule):
            factor = lr_factor(self.step, self.step / self.total_steps, c.warmup, c.lr_schedule)
            set_lr(self.objective.optimizers.values(), factor)
        self.progress.at(self.step, "in its step")
        metrics = self.objective.train_step(x, self.step)
        self.progress.at(self.step, "logging or checkpointing after its step")
        if self.compiling and compiled_graphs() > graphs:
            self.compile_s += time.perf_counter() - step_start
        if self.auto_compile and self.step > self.start_step:  # the first step warms up; the next ones are timed
            if self.auto_compile.after_step(time.perf_counter() - step_start, x):
                self.auto_compile = None
                self.compile_now()
        self.step += 1
        if self.step == self.start_step + 2 and self.dist.world_size > 1:  # compiled and warmed up: steps are steady
            set_collective_timeout(c.comm_timeout)
        self.bar.update(1)
        self.stop = self.checks.after_step(self.step, metrics) or self.stop
        for k, v in metrics.items():
            self.window.setdefault(k, []).append(v)
        if self.step % c.log_every == 0 or self.step == self.total_steps:
            self.flush_window()
        if c.eval_every and self.step % c.eval_every == 0 and self.step % self.steps_per_epoch:
            self.verify()
            self.flush_window()
            self.measure_heldout()
        if not self.stop and c.ckpt_every and self.step % c.ckpt_every == 0:
            self.save_checkpoint()
        self.progress.at(self.step, "loading its batch")

    def finish(self):
        """The end of a finished run: the last artifacts, skipped images reported, summary.json, the final plot."""
        self.report_compile()
        if self.artifacts_step != self.step:
            self.epoch_artifacts(f"step_{self.step:06d}")
        c, dist = self.config, self.dist
        elapsed = time.perf_counter() - self.t_start
        skipped_images = sum(gather_objects(self.train.skipped + self.heldout.skipped))  # found decoding, any rank
        if skipped_images and dist.is_main:
            print(f"genperf: skipped {skipped_images} images that failed to decode (named above)", flush=True)
        images_per_s = (self.step - self.start_step) * c.batch_size / max(elapsed, 1e-9)
        n_params = sum(p.numel() for m in self.objective.modules.values() for p in m.parameters())
        summary = dict(
            model=c.model,
            data=c.data,
            steps=self.step,
            start_step=self.start_step,  # where this process began: 0, or the step a resumed run continued from
            epochs=self.step / self.steps_per_epoch,
            parameters=n_params,
            world_size=dist.world_size,
            parallel="ddp" if c.ddp else "fsdp" if c.fsdp else None,
            amp=str(self.precision.dtype) if self.precision.dtype else None,
            skipped_steps=self.precision.skipped_steps,
            skipped_images=skipped_images,
            train=self.last,
            heldout=self.held,
            wall_time_s=elapsed,
            images_per_s=images_per_s,
            flops_per_image=self.flops,
            peak_flops=self.peak,
            mfu=self.mfu(images_per_s) if self.peak else None,
            compile_s=self.compile_s if self.compiling else None,
            samples=sorted(os.listdir(self.log.path("samples"))) if dist.is_main else None,
        )
        self.log.write_json("summary.json", summary)
        self.log.plot_losses(final=True)
        self.log.close()
        self.bar.close()  # the summary starts on a line of its own, under the finished bar
        if dist.is_main:
            temperature = self.temperature if self.data.is_image else None  # a grid says it; a 2-D scatter does not
            print(closing_summary(c, summary, self.held, self.last_grid, temperature, self.ckpt), flush=True)
        self.finished, self.stop = True, self.signals.requested
        self.summary = summary

    def say_stop(self):
        """The line a stopped run ends with; its exit code."""
        if self.stop and self.finished:
            if self.dist.is_main:
                print(
                    f"genperf: {signal.Signals(self.stop).name} arrived as the run finished; it finished (step "
                    f"{self.step}, checkpoint {self.ckpt})",
                    file=sys.stderr,
                    flush=True,
                )
        elif self.stop:
            self.log.plot_losses(final=True)
            self.log.close()
            if self.dist.is_main:
                print(
                    f"genperf: stopped by {signal.Signals(self.stop).name} at step {self.step}; checkpoint written "
                    f"to {self.ckpt}; continue with: python -m genperf.train --resume --out {self.config.out}",
                    file=sys.stderr,
                    flush=True,
                )
        return EXIT_CODES[self.stop] if self.stop else 0

    def keep_steps_after_data_error(self):
        """After the data failed mid-run, the weights are fine: a single process keeps its steps in a checkpoint
        (under FSDP the ranks fail at different steps, so no collective save is tried). Says what is kept."""
        if self.dist.world_size == 1 and self.step and self.step != self.kept_step:
            self.save_checkpoint()
        return (
            f"checkpoint of step {self.kept_step} at {self.ckpt}"
            if self.kept_step is not None
            else "no checkpoint was written"
        )

    # ---- torch.compile: on, or --compile auto's decision ----
    def compile_now(self):
        c = self.config
        self.objective.compile(**compile_options(c))
        self.compiling = True
        self.cuda_graphs = c.compile_mode == "reduce-overhead" and self.device.type == "cuda"

    def graph_key(self):
        return graph_key(self.config, self.device.type, precision_name(self.precision.dtype))

    def plan_auto_compile(self):
        """--compile auto's AutoCompile for this run, or None (said)."""
        return autocompile.plan(
            self.config,
            self.device.type,
            precision_name(self.precision.dtype),
            lambda step_s: (self.total_steps - self.step - 1) * step_s,
            self.say_above_bar,
        )

    def say_above_bar(self, line):
        if self.dist.is_main and self.step < self.total_steps:
            self.bar.write(line, file=sys.stdout)

    # ---- logging, evaluation, checkpoints ----
    def report_compile(self):
        """One line when torch.compile first compiled, and one more for each later recompilation."""
        if self.compile_s > self.compile_reported and self.compile_reported == 0 and self.dist.is_main:
            record_seconds(self.graph_key(), self.compile_s)  # what --compile auto will expect of a warm cache
        if self.compile_s > self.compile_reported and self.dist.is_main:
            what = "compiled" if self.compile_reported == 0 else "recompiled: now"
            print(
                f"genperf: torch.compile {what} {compiled_graphs()} graph(s) by step {self.step}, "
                f"{self.compile_s:.1f} s of steps spent compiling",
                flush=True,
            )
        self.compile_reported = self.compile_s

    def flush_window(self):
        """Logs the mean of every metric since the last flush, over all ranks (the global batch's loss)."""
        self.report_compile()
        if not self.window:
            return
        elapsed = time.perf_counter() - self.window_start
        means = all_reduce_sum(torch.stack([torch.stack(v).float().mean() for v in self.window.values()]))
        self.last = dict(zip(self.window, (means / self.dist.world_size).tolist()))
        ips = len(next(iter(self.window.values()))) * self.config.batch_size / max(elapsed, 1e-9)
        mfu = self.mfu(ips)
        self.log.log(
            dict(
                step=self.step,
                epoch=self.step / self.steps_per_epoch,
                split="train",
                images_per_s=ips,
                mfu=mfu,
                **self.last,
            )
        )
        self.bar.set_postfix(
            {**{k: f"{v:.4g}" for k, v in self.last.items()}, "img/s": f"{ips:.0f}", "mfu": f"{100 * mfu:.1f}%"}
        )
        self.window, self.window_start = {}, time.perf_counter()

    def mfu(self, images_per_s):
        """Model FLOP/s over the measured peak. Above 1 the peak measured at the start was low (a busy machine
        then: a CPU run once logged a median MFU of 1.34 against a peak half another run's): it is measured again,
        longer, and the larger peak kept."""
        if not self.peak:
            return 0.0
        mfu = images_per_s * self.flops / self.peak
        if mfu > 1 and not self.peak_rechecked:
            self.peak_rechecked = True
            dtype = self.precision.dtype or torch.float32
            again = perf.measure_peak_flops(self.device.type, dtype, seconds=1.0) * self.dist.world_size
            self.peak = max(self.peak, again)
            mfu = images_per_s * self.flops / self.peak
        return mfu

    def measure_heldout(self):
        """Held-out metrics of this step into self.held and the log, measured once a step (--eval-every and the
        final artifacts may both ask at the last step), with their own fixed random stream, leaving the training
        stream untouched."""
        if self.held_step == self.step:
            return
        with seeded(self.config.seed, self.heldout.device):
            self.held, self.held_step = self.objective.evaluate(self.heldout), self.step
        if self.held:
            self.log.log(dict(step=self.step, epoch=self.step / self.steps_per_epoch, split="heldout", **self.held))

    def verify(self):
        """Before anything is made from the weights (samples, held-out metrics, a checkpoint): every step's losses
        so far were finite and so are the weights."""
        self.stop = self.checks.resolve() or self.stop
        check_parameters(self.objective.modules, self.step, self.device)

    def save_checkpoint(self):
        self.verify()
        self.flush_window()
        checkpoint.save(
            self.config.out,
            self.objective,
            self.precision,
            self.step,
            self.config,
            self.dist.is_main,
            self.data_print,
            self.kept_step,
        )
        self.kept_step = self.step

    def epoch_artifacts(self, name):
        """Sample grid, held-out metrics, checkpoint and plot."""
        self.verify()
        samples = self.objective.sample(self.fixed_noise)  # all ranks: sharded modules gather parameters
        real = None if self.data.is_image else self.data.heldout[:2000]
        self.last_grid = self.log.save_samples(samples, name, self.step, real=real)
        self.measure_heldout()
        self.save_checkpoint()
        self.log.plot_losses()
        self.artifacts_step = self.step

    # ---- start ----
    def _account(self):
        """What a step costs, before any is taken: the memory it needs (refused where it cannot fit), and for MFU
        its model FLOPs per image against the measured matmul peak of every rank's device. Returns (FLOPs per
        image, peak FLOP/s, the line about memory)."""
        c, dist = self.config, self.dist
        try:
            cost = step_cost(c, self.data, c.batch_size // dist.world_size)
        except Exception as e:  # accounting must never stop a run
            if dist.is_main:
                print(
                    f"genperf: no MFU or memory estimate: counting the step failed ({type(e).__name__}: {e})",
                    flush=True,
                )
            return 0.0, 0.0, None
        memory_line = check_memory(cost, c, self.data, self.precision, self.device, dist.world_size)
        if not dist.is_main:
            return 0.0, 0.0, memory_line
        peak = perf.peak_flops(self.device.type, self.precision.dtype or torch.float32) * dist.world_size
        return cost.flops_per_image, peak, memory_line

    def _restore(self):
        """The step to start from: 0, or the checkpoint's under --resume (refusing what does not fit)."""
        c, dist = self.config, self.dist
        found = checkpoint.find(c.out)
        if not c.resume:
            if found:
                raise GenperfError(f"{c.out} already holds a run; pass --resume to continue it or choose another --out")
            c.run_id = uuid.uuid4().hex  # the run's identity, kept in config.json and every checkpoint
            return 0
        if found is None:
            raise GenperfError(f"--resume: no checkpoint at {self.ckpt}")
        checkpoint.check_belongs(c.out, found)
        step, ranks_then = checkpoint.restore(
            found,
            self.objective,
            self.precision,
            c,
            self.data,
            dist.rank,
            dist.world_size,
            self.device,
            RESUMABLE,
            old_names=models.WeightNormConv2d.OLD_KEYS,
        )
        if step > self.total_steps:
            raise GenperfError(
                f"--resume: the checkpoint in {c.out} is at step {step}, beyond the {self.total_steps} "
                f"steps asked for; pass a larger --steps or --epochs"
            )
        if dist.is_main and (restart_count() or ranks_then != dist.world_size):
            how = f"restart {restart_count()} of the job: resuming" if restart_count() else "resuming"
            print(
                f"genperf: {how} {c.out} from its checkpoint of step {step}"
                f"{resized(ranks_then, dist.world_size, c.batch_size, c.elastic_batch)}",
                flush=True,
            )
        return step

    def _start_log(self, memory_line):
        """The run folder's log (resumed logs keep their lines up to the checkpoint), config.json and the banner."""
        c, dist, data = self.config, self.dist, self.data
        log = RunLog(c.out, dist.is_main, resume_step=self.step if c.resume else None, tensorboard=c.tensorboard)
        n_params = sum(p.numel() for m in self.objective.modules.values() for p in m.parameters())
        precision = self.precision
        log.write_json(
            "config.json",
            dict(
                applicable(c),
                world_size=dist.world_size,
                parameters=n_params,
                steps_per_epoch=self.steps_per_epoch,
                total_steps=self.total_steps,
                data_notes=data.notes,
                autocast_dtype=str(precision.dtype) if precision.dtype else None,
                precision_note=precision.note,
            ),
        )
        if dist.is_main:
            fused = describe(self.device.type, FAMILY_OF[c.model].fused_ops.get(c.model, ()))
            for note in data.notes + [n for n in (precision.note, fused) if n]:
                print(f"genperf: {note}", flush=True)
            print(
                f"genperf: {c.model} on {c.data} {'x'.join(map(str, data.shape))}, {n_params / 1e6:.2f}M parameters, "
                f"{dist.world_size} rank(s) on {self.device.type}, {self.steps_per_epoch} steps/epoch, "
                f"{self.total_steps} steps"
                + (f", resuming at step {self.step}" if self.step else "")
                + (f"; {memory_line}" if memory_line else ""),
                flush=True,
            )
        return log


def closing_summary(config, summary, held, grid, temperature, ckpt):
    """What a finished run prints last: what it did, where its pictures and checkpoint are, how to read its held-out
    numbers, and the commands to try next."""
    out, minutes, seconds = config.out, *divmod(round(summary["wall_time_s"]), 60)
    took = f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
    family = FAMILY_OF[config.model]
    held_line = ", ".join(f"{k} {v:.4g}" for k, v in held.items()) or "none measured"
    steps, start = summary["steps"], summary["start_step"]
    trained = f"{steps - start} steps" + (f" (steps {start} to {steps})" if start else "")
    lines = [
        f"genperf: done. {trained} in {took} ({summary['images_per_s']:.0f} images/s); run directory {out}",
        f"  held-out    {held_line}" + (f"  ({family.heldout_reading})" if family.heldout_reading else ""),
        f"  samples     {grid}" + (f"  (temperature {temperature:g})" if temperature is not None else ""),
        f"  losses      {os.path.join(out, 'loss.png')}",
        f"  checkpoint  {ckpt}",
        "next:",
        f"  python -m genperf.sample {out} --temperature 1              # more samples, at any temperature",
        f"  python -m genperf.evaluate {out}                            # held-out metrics with error bars",
        f"  python -m genperf.train --resume --out {out} --steps {2 * steps}   # train on from here",
    ]
    return "\n".join(lines)


def _silent_bar():
    from tqdm import tqdm

    return tqdm(disable=True)


def resized(ranks_then, ranks_now, batch_size, elastic_batch="global"):
    """What a run continued at another number of ranks (an elastic torchrun after a lost node, --resume --nproc N)
    does, in words: by default the global batch `batch_size` stays, so every step keeps its meaning, and each rank
    takes its share; under --elastic-batch per-rank each rank's batch stays and `batch_size` is the new global one."""
    if ranks_then == ranks_now:
        return ""
    per_rank = batch_size // ranks_now
    if elastic_batch == "per-rank":
        return (
            f" on {ranks_now} rank(s) instead of {ranks_then}: each rank's batch stays {per_rank} "
            f"(--elastic-batch per-rank), the global batch is {batch_size} instead of {per_rank * ranks_then}"
        )
    return (
        f" on {ranks_now} rank(s) instead of {ranks_then}: the global batch stays {batch_size}, "
        f"{per_rank} per rank instead of {batch_size // ranks_then}"
    )


def compiled_graphs():
    """Graphs torch.compile has compiled in this process so far (dynamo's own counter)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@dataclasses.dataclass
class StepCost:
    flops_per_image: float  # model FLOPs per image of a step (averaged over a WGAN's generator cycle)
    bytes: int  # peak memory of one rank's step: weights, gradients, optimizer state, activations (fp32)


def step_cost(config, data, batch):
    """What one training step of `config`'s model costs at `batch` images, counted on the meta device (shapes,
    no arithmetic, no memory) over one step (a whole generator cycle of critic steps for WGANs) of a throwaway
    single-process copy: its model FLOPs by FlopCounterMode and its peak memory by perf.PeakMemory. Meta
    tensors take no autocast, so the bytes are fp32's. Recomputation (--checkpointing, --invertible) saves
    memory but is not model work, so the FLOPs are counted on a copy without it. Random streams are untouched."""
    flops, peak = _count_step(config, data, batch)
    if config.model == "realnvp" and (config.checkpointing != "none" or config.invertible):
        flops = _count_step(
            argparse.Namespace(**dict(vars(config), checkpointing="none", invertible=False)), data, batch
        )[0]
    return StepCost(flops, peak)


def _count_step(config, data, batch):
    """(model FLOPs per image, peak bytes) of one step of `config`'s model on the meta device."""
    meta = torch.device("meta")
    # Meta tensors run the ops' pure-torch reference: the fused backends take real tensors only.
    with torch.random.fork_rng(devices=[]), use_backend("reference"):
        objective = build_objective(
            argparse.Namespace(**dict(vars(config), ddp=False, fsdp=False, compile=False)),
            data,
            Precision("cpu", False),
            meta,
        )
        weights = sum(
            t.untyped_storage().nbytes() for m in objective.modules.values() for t in (*m.parameters(), *m.buffers())
        )
        x = torch.empty(batch, *data.shape, device=meta)
        with perf.PeakMemory() as memory:
            flops = perf.step_flops(lambda i: objective.train_step(x, i), getattr(objective, "critic_iters", 1))
        # Adam's moments appear at the first step's update, after its activation peak; every later step holds
        # them through its peak.
        moments = sum(
            t.untyped_storage().nbytes()
            for opt in objective.optimizers.values()
            for state in opt.state.values()
            for t in state.values()
            if torch.is_tensor(t) and t.dim() > 0
        )
    return flops / batch, weights + moments + memory.peak


def check_memory(cost, config, data, precision, device, world_size):
    """Refuses a step that cannot fit the device's free memory (all ranks' steps, on a CPU); returns the line the
    run prints about it."""
    need = cost.bytes * (0.5 if precision.dtype else 1)  # bf16/fp16 activations: at most half of fp32's
    need *= world_size if device.type == "cpu" else 1  # CPU ranks share the machine's memory
    if device.type != "cpu":  # in-memory data sets move to the device (on a CPU they are loaded already)
        need += sum(t.nbytes for t in (data.train, data.heldout) if torch.is_tensor(t))
    free = perf.free_memory(device)
    what = f"about {need / 2**30:.2f} GiB" + (" (half the fp32 estimate, under --amp)" if precision.dtype else "")
    if free is not None and need > free:
        raise GenperfError(
            f"a training step at --batch-size {config.batch_size} needs {what}, more than the "
            f"{free / 2**30:.1f} GiB free on {device.type}; lower --batch-size or --image-size, or save "
            f"memory with --amp" + (", --checkpointing or --invertible" if config.model == "realnvp" else "")
        )
    return f"a step needs {what} of the {free / 2**30:.1f} GiB free" if free is not None else f"a step needs {what}"


def fit_here(config, dist):
    """Trains `config` on this process's rank; returns (exit code, summary.json's dict or None)."""
    trainer = Trainer(config, dist)
    code = trainer.run()
    shutdown_distributed()
    return code, getattr(trainer, "summary", None)
