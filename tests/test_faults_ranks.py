"""Faults of many processes (gloo, two CPU ranks): a rank killed, a rank stopped, torchrun restarting the job.
Each must end or recover within its bound, with one line, no traceback from genperf's workers and no process left
behind; the killed rank's run resumes, and a restarted job finishes its steps."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_ddp import _free_port
from test_faults import (
    ENV,
    RING,
    _alive,
    _messages,
    _messages_of,
    _wait_for,
)  # the fault tests' run and process helpers

import genperf
from genperf import checkpoint, train
from genperf.distributed import LOST_PEER_EXIT
from genperf.errors import GenperfError
from genperf.faults import RunLock

TRAIN = [sys.executable, "-m", "genperf.train"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _start(out, launcher, *extra, env=ENV, parallel="--ddp", ckpt_every=10):
    """A two-rank run on ring8 (DDP unless `parallel` says --fsdp), its output in OUT.stdout / OUT.stderr."""
    out = str(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    return subprocess.Popen(
        [*launcher, *RING, parallel, "--ckpt-every", str(ckpt_every), "--out", out, *extra],
        stdout=open(out + ".stdout", "w"),
        stderr=open(out + ".stderr", "w"),
        env=env,
        start_new_session=True,
    )


def _workers(launcher_pid):
    """{rank: pid} of the launcher's worker processes."""
    found = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(item.partition(b"=")[::2] for item in f.read().split(b"\0"))
        except (OSError, ValueError, IndexError):
            continue
        if parent == launcher_pid and env.get(b"RANK", b"").isdigit():
            found[int(env[b"RANK"])] = int(entry)
    return found


def _after_first_checkpoint(proc, out):
    """The workers once the run has written a checkpoint and trained on from it."""
    _wait_for(lambda: checkpoint.find(str(out)), 90, "the first checkpoint")
    time.sleep(random.Random(3).uniform(0.5, 1.5))  # a random moment of the steps after it
    workers = _workers(proc.pid)
    assert set(workers) == {0, 1}, workers
    return workers


def _ends(proc, workers, bound_s, since):
    proc.wait(timeout=bound_s + 60)
    took = time.monotonic() - since
    _wait_for(lambda: not any(_alive(p) for p in workers.values()), 10, "every worker to exit")
    return took


def _steps(line):
    """(the step a survivor's line names, the step of the checkpoint it keeps)."""
    at, kept = re.search(r"\bat step (\d+)", line), re.search(r"last checkpoint \(step (\d+)\)", line)
    assert at and kept, line
    return int(at[1]), int(kept[1])


def _record(record_property, seconds, steps):
    """What the fault cost, for benchmarks/bench_faults.py's table: the seconds from the fault to the job's end (or
    to its resumption), and the steps lost, from the step the fault hit (`steps`: it and the checkpoint's)."""
    record_property("seconds", round(seconds, 1))
    record_property("steps_lost", steps[0] - steps[1])


def _injected(tmp_path, code):
    """ENV with a sitecustomize holding `code`, which every worker imports at its start."""
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(code)
    return dict(ENV, PYTHONPATH=os.pathsep.join([str(tmp_path / "inject"), *sys.path]))


# Rank 0 takes a second to find out what became of its peers, so the launcher's SIGTERM, sent to every worker once
# one has died, lands while rank 0 is saying so (a race that a loaded machine also wins).
SLOW_DIAGNOSIS = """import os, time
if os.environ.get("RANK") == "0":
    import genperf.faults as f
    diagnose = f.diagnose_peers
    def slow(*args, **kwargs):
        time.sleep(1.0)
        return diagnose(*args, **kwargs)
    f.diagnose_peers = slow
"""


@pytest.mark.parametrize(
    "parallel, ckpt_every",
    [("--ddp", 10), pytest.param("--fsdp", 1, marks=pytest.mark.slow)],  # FSDP: a sharded save each step, 15 s
    ids=["ddp", "fsdp-during-a-save"],
)
def test_a_killed_rank_ends_the_job_in_seconds_with_one_line_and_the_run_resumes(
    tmp_path, record_property, parallel, ckpt_every
):
    """What the out-of-memory killer does to one rank: the survivor says which rank is gone, at which step, and
    what continues the run, though the launcher's SIGTERM reaches it meanwhile; the launcher exits within seconds,
    nothing is left running, the folder is free. Under FSDP with a save every step the kill most likely lands in a
    sharded save, which must leave the previous complete checkpoint to resume from, at one rank instead of two."""
    out = tmp_path / "run"
    env = _injected(tmp_path, SLOW_DIAGNOSIS)
    proc = _start(out, TRAIN, "--nproc", "2", "--steps", "1000000", env=env, parallel=parallel, ckpt_every=ckpt_every)
    workers = _after_first_checkpoint(proc, out)
    os.kill(workers[1], signal.SIGKILL)
    took = _ends(proc, workers, 10, time.monotonic())
    err = open(str(out) + ".stderr").read()
    assert proc.returncode == LOST_PEER_EXIT and took < 10, (proc.returncode, took, err[-2000:])
    (line,) = _messages(str(out) + ".stderr")
    assert "Traceback" not in err and "lost contact with the other ranks at step" in line, err[-2000:]
    assert "rank 1 is gone" in line and f"continue with: python -m genperf.train --resume --out {out}" in line
    _record(record_property, took, _steps(line))
    RunLock(str(out)).release()  # free
    kept = genperf.load(str(out)).step
    assert kept >= ckpt_every and kept % ckpt_every == 0 and f"last checkpoint (step {kept})" in line, line
    assert train.main(["--resume", "--out", str(out), "--nproc", "1", "--steps", str(kept + 5)]) == 0
    assert json.load(open(out / "summary.json"))["steps"] == kept + 5


@pytest.mark.slow  # 15 s; the killed rank covers the one-line path in the fast tier
def test_a_stopped_rank_ends_the_job_within_the_steady_timeout_naming_it(tmp_path, record_property):
    """A rank that stops answering (SIGSTOP: a frozen node, a debugger): the survivor's collective times out after
    --comm-timeout, it names the stopped rank and ends it, so the launcher does not wait on it."""
    out = tmp_path / "run"
    proc = _start(out, TRAIN, "--nproc", "2", "--steps", "1000000", "--comm-timeout", "3")
    workers = _after_first_checkpoint(proc, out)
    os.kill(workers[1], signal.SIGSTOP)
    took = _ends(proc, workers, 3 + 10, time.monotonic())
    assert proc.returncode == LOST_PEER_EXIT and 3 <= took < 3 + 10, (proc.returncode, took)
    err = open(str(out) + ".stderr").read()
    (line,) = _messages(str(out) + ".stderr")
    assert "Traceback" not in err and f"rank 1 (pid {workers[1]}) was stopped" in line, err[-2000:]
    _record(record_property, took, _steps(line))


# Rank 1 hangs before step 25 outside any collective, for ever, running the loop body {wait}.
HANG_ON_RANK_1 = """import os, time
if os.environ.get("RANK") == "1":
    import genperf.trainer as t
    step = t.Trainer.train_step
    def train_step(self, x):
        while self.step == 25:
            {wait}
        return step(self, x)
    t.Trainer.train_step = train_step
"""


@pytest.mark.slow  # 15 s each, as the stopped rank's
@pytest.mark.parametrize(
    "wait, said",
    [
        ("pass", "was busy outside any collective"),  # an endless loop
        # a read that never returns, a lock: it sleeps as a rank waiting in a collective does, and only the progress
        # every rank reports tells the survivor which rank it waits for
        ("time.sleep(0.5)", "was asleep outside any collective (at step 25, loading its batch"),
    ],
    ids=["busy", "asleep"],
)
def test_a_rank_hung_outside_any_collective_ends_the_job_within_the_steady_timeout_naming_it(
    tmp_path, record_property, wait, said
):
    """A rank hung between collectives takes no SIGTERM before its step ends: the survivor's collective times out
    after --comm-timeout, it names the hung rank and kills it, so the launcher does not wait its 300 s grace on
    it."""
    out = tmp_path / "run"
    env = _injected(tmp_path, HANG_ON_RANK_1.format(wait=wait))
    proc = _start(out, TRAIN, "--nproc", "2", "--steps", "1000000", "--comm-timeout", "3", env=env)
    workers = _after_first_checkpoint(proc, out)
    took = _ends(proc, workers, 3 + 10, time.monotonic())
    assert proc.returncode == LOST_PEER_EXIT and took < 3 + 10, (proc.returncode, took)
    err = open(str(out) + ".stderr").read()
    (line,) = _messages(str(out) + ".stderr")
    assert "Traceback" not in err, err[-2000:]
    assert f"rank 1 (pid {workers[1]}) {said}" in line, line
    _record(record_property, took, _steps(line))


RAISE_ON_RANK = """import os
if os.environ.get("RANK") == os.environ["RAISE_RANK"]:
    import genperf.trainer as t
    step = t.Trainer.train_step
    def train_step(self, x):
        if self.step == 25:
            raise RuntimeError("a failure of rank " + os.environ["RANK"] + " alone")
        return step(self, x)
    t.Trainer.train_step = train_step
"""


@pytest.mark.parametrize("rank", [1, pytest.param(0, marks=pytest.mark.slow)])  # 12 s each
def test_a_rank_that_raises_ends_the_job_with_one_line_and_its_traceback_in_the_run_folder(
    tmp_path, record_property, rank
):
    """An exception of one rank alone (a bug, a GPU out of memory) that no other rank meets: one line names the rank
    and the error, its traceback goes to a file of the run folder instead of stderr, and the run resumes."""
    out = tmp_path / "run"
    env = dict(_injected(tmp_path, RAISE_ON_RANK), RAISE_RANK=str(rank))
    proc = subprocess.run(
        [*TRAIN, *RING, "--ddp", "--ckpt-every", "10", "--steps", "100", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    report = out / f"traceback-rank{rank}.txt"
    took = time.time() - report.stat().st_mtime  # from the raise, which writes the report, to the job's end
    error = f"RuntimeError: a failure of rank {rank} alone (its traceback is in {report})"
    if rank == 0:
        assert proc.returncode == 2 and _messages_of(proc.stderr) == [f"genperf: error: rank 0 raised {error}"]
    else:
        assert proc.returncode == LOST_PEER_EXIT, proc.stderr[-2000:]
        (line,) = _messages_of(proc.stderr)
        assert line.startswith("genperf: error: lost contact with the other ranks at step 25 (")
        assert f"rank 1 raised {error}; the last checkpoint (step 20) is kept" in line, line
    _record(record_property, took, (25, 20))  # the step it raises at, and its checkpoint's
    assert "Traceback" not in proc.stderr
    text = report.read_text()
    assert "Traceback" in text and 'raise RuntimeError("a failure of rank "' in text
    assert train.main(["--resume", "--out", str(out), "--nproc", "1", "--steps", "30"]) == 0
    assert json.load(open(out / "summary.json"))["steps"] == 30


def _restarted(stdout):
    """The line of a restarted job that resumed its run, once it is in its output."""
    said = [line for line in _messages(stdout) if line.startswith("genperf: restart 1 of the job: resuming")]
    return said[0] if said else None


def _final_weights(out):
    return {k: v.clone() for k, v in genperf.load(str(out)).model.state_dict().items()}


@pytest.mark.slow  # two torchrun jobs, 40 s
def test_torchrun_restarts_resume_the_run_and_finish_its_steps_as_an_uninterrupted_one(tmp_path, record_property):
    steps = 200
    out = tmp_path / "restarted"
    proc = _start(out, [*TORCHRUN, "--max-restarts", "2", "-m", "genperf.train"], "--steps", str(steps))
    workers = _after_first_checkpoint(proc, out)
    os.kill(workers[1], signal.SIGKILL)
    killed = time.monotonic()
    _wait_for(lambda: _restarted(str(out) + ".stdout"), 120, "the restarted job to resume")
    took = time.monotonic() - killed
    proc.wait(timeout=180)
    assert proc.returncode == 0, open(str(out) + ".stderr").read()[-3000:]
    assert json.load(open(out / "summary.json"))["steps"] == steps
    err = open(str(out) + ".stderr").read()
    (lost,) = _messages_of(err)
    assert "Traceback" not in err and "torchrun starts the job again (2 restart(s) left)" in lost, err[-3000:]
    _record(record_property, took, _steps(lost))
    whole = tmp_path / "whole"
    proc = _start(whole, [*TORCHRUN, "-m", "genperf.train"], "--steps", str(steps))
    assert proc.wait(timeout=180) == 0
    for name, value in _final_weights(whole).items():  # the steps redone after the restart are the same steps
        torch.testing.assert_close(_final_weights(out)[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.slow  # two torchrun agents and a rendezvous of the survivor, 30 s each
@pytest.mark.parametrize("parallel", ["--ddp", "--fsdp"])
def test_an_elastic_job_that_loses_a_node_finishes_on_the_other(tmp_path, record_property, parallel):
    """torchrun --nnodes 1:2, one worker per node, the second node (its agent and worker) killed: the first node's
    worker says it lost contact and that torchrun restarts the job; the job goes on with one rank from the last
    checkpoint (under FSDP the two ranks' shards resharded onto one), keeps the global batch, says so in one line
    and finishes the steps asked for."""
    steps, port = 300, _free_port()
    agent = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1:2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "elastic",
        "--max-restarts", "2", "--rdzv-conf", "last_call_timeout=2", "-m", "genperf.train",
    ]  # fmt: skip
    out, logs = tmp_path / "run", {}
    nodes = []
    for name in ("a", "b"):
        logs[name] = tmp_path / name / "run"  # each agent's output in logs[name].stdout / .stderr
        nodes.append(_start(logs[name], agent, "--steps", str(steps), "--out", str(out), parallel=parallel))
        time.sleep(1.0)  # the first agent hosts the rendezvous store
    _wait_for(lambda: checkpoint.find(str(out)), 90, "the first checkpoint")
    time.sleep(random.Random(3).uniform(0.5, 1.5))
    # the node of rank 1 goes; rank 0, which speaks for the job, survives
    survivor, lost = (0, 1) if 0 in _workers(nodes[0].pid) else (1, 0)
    os.killpg(nodes[lost].pid, signal.SIGKILL)
    killed = time.monotonic()
    log = str(logs["ab"[survivor]])
    _wait_for(lambda: _restarted(log + ".stdout"), 120, "the job to resume on the surviving node")
    resumed = time.monotonic() - killed
    nodes[survivor].wait(timeout=180)
    took = time.monotonic() - killed
    err, said = open(log + ".stderr").read(), _messages(log + ".stdout")
    assert nodes[survivor].returncode == 0 and took < 90, (nodes[survivor].returncode, took, err[-3000:])
    assert "Traceback" not in err
    (lost,) = _messages_of(err)
    assert "lost contact with the other ranks" in lost and "torchrun starts the job again (2 restart(s) left)" in lost
    (restart,) = [line for line in said if line.startswith("genperf: restart 1 of the job")]
    assert restart.endswith("on 1 rank(s) instead of 2: the global batch stays 64, 64 per rank instead of 32"), restart
    assert json.load(open(out / "summary.json"))["steps"] == steps
    _record(record_property, resumed, _steps(lost))


@pytest.mark.parametrize("counter", ["TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"])
def test_a_restarted_job_continues_the_checkpointed_run_as_if_given_resume(tmp_path, monkeypatch, capsys, counter):
    """torchrun --max-restarts and sbatch --requeue start the same command line again."""
    from genperf import config

    run = tmp_path / "run"
    assert train.main([*RING, "--out", str(run), "--steps", "10"]) == 0
    argv = [*RING, "--out", str(run), "--steps", "20"]
    with pytest.raises(GenperfError, match="already holds a run"):
        genperf.fit("dcgan", data="ring8", latent_dim=8, batch_size=64, out=str(run), steps=20)
    monkeypatch.setenv(counter, "1")
    resumed = config.parse_args(argv)
    assert resumed.resume and resumed.steps == 20 and resumed.run_id == json.load(open(run / "config.json"))["run_id"]
    capsys.readouterr()
    assert train.main(argv) == 0  # the restarted job itself: it continues the run and says so
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("genperf: restart")]
    assert said == [f"genperf: restart 1 of the job: resuming {run} from its checkpoint of step 10"]
    assert json.load(open(run / "summary.json"))["steps"] == 20
    monkeypatch.setenv(counter, "0")
    assert not config.parse_args(argv).resume  # the first attempt of a job starts afresh


def test_the_rank_the_others_wait_for_is_the_one_whose_reported_progress_is_behind(monkeypatch):
    """Each rank's Progress reaches the job's store from a thread of its own; after a timed-out collective, the
    ranks behind the furthest one are named with where they are (a sleeping rank looks like one waiting in a
    collective to /proc: only this tells them apart)."""
    from genperf import distributed, faults

    monkeypatch.setitem(distributed._JOB, "store", torch.distributed.HashStore())
    monkeypatch.setenv("WORLD_SIZE", "3")
    ranks = [distributed.Progress(rank, every_s=0.01) for rank in range(3)]
    for rank, (step, phase) in enumerate([(25, "in its step"), (25, "loading its batch"), (25, "in its step")]):
        ranks[rank].at(step, phase)
    _wait_for(lambda: len(distributed.read_progress(3)) == 3, 5, "every rank's report")
    assert distributed.read_progress(3) == {0: (25, 1), 1: (25, 0), 2: (25, 1)}
    behind = faults._ranks_behind(0)
    assert behind == {1: "at step 25, loading its batch, while rank 0 waited at step 25, in its step"}, behind
    ranks[1].at(25, "in its step")  # it caught up: nobody is behind
    _wait_for(lambda: faults._ranks_behind(0) == {}, 5, "rank 1's new report")
    ranks[0].at(24, "logging or checkpointing after its step")  # now rank 0 itself is the one behind
    _wait_for(lambda: faults._ranks_behind(2) != {}, 5, "rank 0's new report")
    assert faults._ranks_behind(0) == {}  # the rank behind does not name the others
    expected = "at step 24, logging or checkpointing after its step, while rank 2 waited at step 25, in its step"
    assert faults._ranks_behind(2) == {0: expected}
    for progress in ranks:
        progress.close()
