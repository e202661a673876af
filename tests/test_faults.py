"""Fault injection: what a run does when its launcher is killed, the disk fills, a second run starts
in its folder, a signal arrives, a process dies mid-save, or the data is hostile. Each fault must end
with one clear line, the right exit code, nothing lost and no process left behind. Random moments
come from seeded generators, so a failing trial replays."""

import errno
import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import torch

import genperf
from genperf import checkpoint, config, faults, train, trainer
from genperf.data import celeba, load_dataset, make_batches, mnist
from genperf.errors import DataError, GenperfError
from genperf.faults import RunLock, StepChecks, StopSignals

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
RING = ["dcgan", "--data", "ring8", "--latent-dim", "8", "--batch-size", "64", "--log-every", "10"]


# ---- helpers ----
def _spawn(out, *extra):
    """A long dcgan run on ring8 in a session of its own, its output in OUT.stdout/OUT.stderr."""
    out = str(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    stdout, stderr = open(out + ".stdout", "w"), open(out + ".stderr", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "genperf.train", *RING, "--steps", "1000000", "--out", out, *extra],
        stdout=stdout,
        stderr=stderr,
        env=ENV,
        start_new_session=True,
    )


def _wait_for(condition, timeout=60, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _children(pid):
    """PIDs of the processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _lock_free(out):
    """Whether the run folder's lock can be taken (it is only dropped when a dead process's last thread
    has exited, which can be after the process shows as a zombie)."""
    try:
        RunLock(str(out)).release()
        return True
    except GenperfError:
        return False


def _messages_of(text):
    """genperf's own lines in a run's output (not its progress bar's redraws)."""
    return [line for line in text.replace("\r", "\n").splitlines() if line.startswith("genperf")]


def _messages(path):
    return _messages_of(open(path).read())


def _error(capsys):
    """The one error line of an in-process run's stderr."""
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("genperf")]
    assert len(lines) == 1, lines
    return lines[0]


def _steps_logged(out):
    path = os.path.join(out, "metrics.jsonl")
    return os.path.exists(path) and sum(1 for _ in open(path)) >= 3


def _ring(out, *extra):
    return train.main([*RING, "--out", str(out), *extra])


# ---- 1. --fsdp workers die with their launcher ----
def test_killing_the_launchers_group_ends_its_workers_and_frees_the_folder(tmp_path):
    out = tmp_path / "run"
    proc = _spawn(out, "--fsdp", "--ckpt-every", "1")
    _wait_for(lambda: checkpoint.find_sharded(str(out)), what="a sharded checkpoint")
    workers = _children(proc.pid)
    assert len(workers) == 2
    time.sleep(random.Random(1).uniform(0, 0.5))  # a random moment, most likely within a save (one per step)
    os.killpg(proc.pid, signal.SIGKILL)  # what a closed terminal or a scheduler does to the launcher
    proc.wait()
    _wait_for(lambda: not any(_alive(w) for w in workers), timeout=10, what="the workers to exit")
    _wait_for(lambda: _lock_free(out), timeout=10, what="the folder to be free")
    assert "the launcher (pid" in open(str(out) + ".stderr").read()
    run = genperf.load(str(out))  # the last complete sharded checkpoint loads
    assert run.step >= 1 and all(torch.isfinite(p).all() for p in run.model.parameters())


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("Read error [127.0.0.1]:7576: Connection reset by peer"),
        GenperfError("could not write the checkpoint: Connection reset by peer"),
    ],
)
def test_rank_0_says_the_launcher_is_gone_when_a_peer_stopped_first(error, monkeypatch, capsys):
    """Rank 1's watcher may see the killed launcher first and exit; rank 0, inside a collective with it, then
    fails before its own watcher looks (seen once in CI: a gloo traceback instead of the line)."""
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("TORCHELASTIC_RUN_ID", "t")):
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(faults._LAUNCHER, "pid", -1)  # not our parent: the launcher is gone
    monkeypatch.setitem(faults._LAUNCHER, "said", threading.Lock())

    def fail(*args):
        raise error

    monkeypatch.setattr(train, "run", fail)
    assert train.main(["vae", "--data", "digits"]) == 1
    assert capsys.readouterr().err == "genperf: the launcher (pid -1) is gone; its workers stop\n"


# ---- 2. disk full ----
class _FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are written."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_while_saving_keeps_the_last_checkpoint_and_resumes(tmp_path, monkeypatch, capsys):
    saves = []

    def open_on_a_filling_disk(path, mode="r", *args):
        f = open(path, mode, *args)
        if "w" in mode and path.endswith(".tmp"):
            saves.append(path)
            return _FullDisk(f, room=10_000 if len(saves) >= 2 else 1 << 30)  # the second save fails
        return f

    monkeypatch.setattr(checkpoint, "open", open_on_a_filling_disk, raising=False)
    assert _ring(tmp_path, "--steps", "30", "--ckpt-every", "10") == 2
    err = _error(capsys)
    assert err == (
        f"genperf: error: could not write the checkpoint to {tmp_path}/checkpoint.pt: No space left on "
        f"device; the last good checkpoint (step 10) is kept"
    )
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "config.json", "metrics.jsonl", "run.lock", "samples"]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 10
    monkeypatch.undo()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 21, "epoch": 0.02, "spl')  # a line cut short by the full disk
    assert _ring(tmp_path, "--steps", "30", "--ckpt-every", "10", "--resume") == 0
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in lines if r["split"] == "train"] == [10, 20, 30]


def test_disk_full_while_logging_is_one_line(tmp_path, monkeypatch, capsys):
    from genperf import runlog

    def full(path, mode="r", *args):
        if mode == "a":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return open(path, mode, *args)

    monkeypatch.setattr(runlog, "open", full, raising=False)
    assert _ring(tmp_path, "--steps", "20") == 2
    assert _error(capsys) == f"genperf: error: could not write {tmp_path}/metrics.jsonl: No space left on device"


def test_disk_full_on_one_rank_of_a_sharded_save(tmp_path, monkeypatch, capsys):
    """A one-rank FSDP run in this process; DCP's write of the second checkpoint fails."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    for key, value in dict(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="localhost", MASTER_PORT=str(port)
    ).items():
        monkeypatch.setenv(key, value)
    real_save, calls = checkpoint.save_sharded, []

    def save_on_a_filling_disk(states, path):
        calls.append(path)
        if len(calls) == 2:
            os.makedirs(path, exist_ok=True)
            open(os.path.join(path, "__0_0.distcp"), "wb").write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(states, path)

    monkeypatch.setattr(checkpoint, "save_sharded", save_on_a_filling_disk)
    assert _ring(tmp_path, "--fsdp", "--steps", "30", "--ckpt-every", "10") == 2
    assert _error(capsys) == (
        f"genperf: error: could not write the checkpoint to {tmp_path}/checkpoint: No space left on device; "
        f"the last good checkpoint (step 10) is kept"
    )
    assert not os.path.exists(tmp_path / "checkpoint.tmp")
    assert checkpoint.read_meta(str(tmp_path / "checkpoint"))["step"] == 10


# ---- 3. one run per folder ----
def test_a_second_run_in_a_busy_folder_stops_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    proc = _spawn(out, "--ckpt-every", "50")
    _wait_for(lambda: checkpoint.find(str(out)), what="a checkpoint")
    assert _ring(out, "--steps", "10") == 2
    assert _ring(out, "--resume") == 2  # a resume too: the run is still writing
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err
        == [
            f"genperf: error: {out} is in use by another genperf run (pid {proc.pid}); wait for it to end, "
            f"stop it, or choose another --out"
        ]
        * 2
    )
    proc.kill()
    proc.wait()
    step = checkpoint.read_meta(checkpoint.find(str(out)))["step"]
    assert _ring(out, "--resume", "--steps", str(step + 5)) == 0  # the dead run's lock is taken over


# ---- 4. signals ----
# SIGINT and SIGHUP take SIGTERM's path with their own exit codes: the slow tier's (5 s each)
@pytest.mark.parametrize(
    "sig, code",
    [
        (signal.SIGTERM, 143),
        *(pytest.param(s, c, marks=pytest.mark.slow) for s, c in [(signal.SIGINT, 130), (signal.SIGHUP, 129)]),
    ],
)
def test_a_signal_finishes_the_step_writes_a_checkpoint_and_exits_with_its_code(tmp_path, sig, code):
    out = tmp_path / "run"
    proc = _spawn(out)
    _wait_for(lambda: _steps_logged(str(out)), what="training")
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    lines = _messages(str(out) + ".stderr")
    name = signal.Signals(sig).name
    assert len(lines) == 1 and lines[0].startswith(f"genperf: stopped by {name} at step "), lines
    step = int(lines[0].split(" at step ")[1].split(";")[0])
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == step
    if sig == signal.SIGTERM:  # nothing lost: resumed, it ends where an uninterrupted run does
        assert _ring(out, "--resume", "--steps", str(step + 20)) == 0
        assert _ring(tmp_path / "whole", "--steps", str(step + 20)) == 0
        a, b = (torch.load(p / "checkpoint.pt", weights_only=True)["models"] for p in (out, tmp_path / "whole"))
        assert all(torch.equal(a[m][k], b[m][k]) for m in a for k in a[m])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_final_grid_evaluation_and_checkpoint_lets_them_finish(tmp_path, monkeypatch, capsys, sig):
    """15 steps is mid-epoch: the run's last steps exist only once its final checkpoint is written."""
    from genperf.runlog import RunLog

    real_save_samples = RunLog.save_samples

    def signalled(self, *args, **kwargs):  # the final phase starts with the sample grid
        os.kill(os.getpid(), sig)
        return real_save_samples(self, *args, **kwargs)

    monkeypatch.setattr(RunLog, "save_samples", signalled)
    assert _ring(tmp_path, "--steps", "15") == faults.EXIT_CODES[sig]
    assert _error(capsys) == (
        f"genperf: {signal.Signals(sig).name} arrived as the run finished; it finished "
        f"(step 15, checkpoint {tmp_path}/checkpoint.pt)"
    )
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 15
    assert json.load(open(tmp_path / "summary.json"))["steps"] == 15


def _celeba_vanishing_after(tmp_path, monkeypatch, reads):
    """A fake CelebA folder whose images are all deleted once `reads` of them have been read."""
    celeba.write_fake_celeba(str(tmp_path / "data"), 60)
    real_getitem, count = celeba.CelebAFolder.__getitem__, [0]

    def getitem(self, i):
        count[0] += 1
        if count[0] == reads + 1:
            for name in os.listdir(os.path.dirname(self.paths[0])):
                os.remove(os.path.join(os.path.dirname(self.paths[0]), name))
        return real_getitem(self, i)

    monkeypatch.setattr(celeba.CelebAFolder, "__getitem__", getitem)
    return [
        "vae",
        "--data",
        "celeba",
        "--data-root",
        str(tmp_path / "data"),
        "--loader",
        "torch",
        "--workers",
        "0",
        "--image-size",
        "16",
        "--batch-size",
        "8",
        "--steps",
        "100",
        "--out",
        str(tmp_path / "run"),
    ]


def test_images_vanishing_mid_run_end_it_with_one_line_and_a_checkpoint(tmp_path, monkeypatch, capsys):
    argv = _celeba_vanishing_after(tmp_path, monkeypatch, reads=3 * 8)  # three steps' batches
    assert train.main(argv) == 2
    err = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("genperf")]
    assert err == [
        f"genperf: error: 8 images of epoch 0 could not be read (named above): the data set changed during "
        f"the run; restore it and resume (checkpoint of step 3 at {tmp_path}/run/checkpoint.pt)"
    ]
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 3


def test_an_epoch_without_a_single_readable_batch_is_an_error_not_a_loop(tmp_path, monkeypatch, capsys):
    from genperf.data import loader

    monkeypatch.setattr(loader.Batches, "count_unreadable", lambda self, n, lost, epoch: lost + n)  # no threshold
    argv = _celeba_vanishing_after(tmp_path, monkeypatch, reads=0)
    assert train.main(argv) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("genperf: error: epoch 0 gave no batch: every image of it was unreadable (no checkpoint was written)")
    )


@pytest.mark.parametrize(
    "damage, line",
    [  # the damage that is hardest to see in the fast tier, the other two in the slow one
        pytest.param("a shard deleted", "its shard __1_0.distcp is missing", marks=pytest.mark.slow),
        pytest.param("the index deleted", "its index .metadata is missing", marks=pytest.mark.slow),
        ("a shard cut to 7%", "its shard __0_0.distcp is cut short"),
    ],
)
def test_a_damaged_sharded_checkpoint_is_one_line_for_resume_sample_and_evaluate(tmp_path, capsys, damage, line):
    from genperf import evaluate, sample

    out = tmp_path / "run"
    assert _ring(out, "--fsdp", "--steps", "5") == 0
    shards = out / "checkpoint"
    if damage == "a shard deleted":
        os.remove(shards / "__1_0.distcp")
    elif damage == "the index deleted":
        os.remove(shards / ".metadata")
    else:
        data = (shards / "__0_0.distcp").read_bytes()
        (shards / "__0_0.distcp").write_bytes(data[: len(data) * 7 // 100])
    capsys.readouterr()
    proc = subprocess.run(
        [sys.executable, "-m", "genperf.train", "--resume", "--out", str(out), "--steps", "10"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    messages = _messages_of(proc.stderr)
    assert len(messages) == 1 and messages[0].startswith(
        f"genperf: error: {shards}: the sharded checkpoint is damaged: {line}"
    ), messages
    for name, module in (("sample", sample), ("evaluate", evaluate)):
        assert module.main([str(out)]) == 2
        assert _error(capsys).startswith(f"genperf.{name}: error: {shards}: the sharded checkpoint is damaged: {line}")


def test_a_second_signal_exits_at_once():
    code = (
        "import os, signal, time\n"
        "from genperf.faults import StopSignals\n"
        "with StopSignals() as s:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    assert s.requested == signal.SIGTERM\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert proc.returncode == 143
    assert proc.stderr.strip() == "genperf: second SIGTERM: stopping now, without a checkpoint"


@pytest.mark.slow  # two ranks; single-process signals stay in the fast tier
def test_sigterm_to_the_launcher_stops_every_rank_with_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = _spawn(out, "--fsdp")
    _wait_for(lambda: _steps_logged(str(out)), what="training")
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert not any(_alive(w) for w in workers)
    lines = _messages(str(out) + ".stderr")
    assert len(lines) == 1 and lines[0].startswith("genperf: stopped by SIGTERM at step "), lines
    step = int(lines[0].split(" at step ")[1].split(";")[0])
    assert checkpoint.read_meta(str(out / "checkpoint"))["step"] == step


# ---- kill -9 at random moments of a save ----
@pytest.mark.slow  # 20 s of killed saves; the sharded case stays in the fast tier
def test_kill_9_at_random_moments_of_single_file_saves_leaves_a_checkpoint_that_resumes(tmp_path):
    rng = random.Random(13)
    for trial in range(3):
        out = tmp_path / f"trial{trial}"
        proc = _spawn(out, "--ckpt-every", "1")  # a save every step: most moments fall in one
        _wait_for(lambda: checkpoint.find(str(out)), what="a checkpoint")
        time.sleep(rng.uniform(0, 1.0))
        proc.kill()
        proc.wait()
        meta = checkpoint.read_meta(checkpoint.find(str(out)))
        assert not os.path.exists(out / "checkpoint.pt.tmp") or meta["step"] >= 1
        assert _ring(out, "--resume", "--steps", str(meta["step"] + 3), "--ckpt-every", "1") == 0, f"trial {trial}"


def test_kill_9_of_every_process_at_a_random_moment_of_sharded_saves(tmp_path):
    out = tmp_path / "run"
    proc = _spawn(out, "--fsdp", "--ckpt-every", "1")
    _wait_for(lambda: checkpoint.find_sharded(str(out)), what="a sharded checkpoint")
    processes = [proc.pid, *_children(proc.pid)]
    time.sleep(random.Random(7).uniform(0, 0.5))
    for pid in processes:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    _wait_for(lambda: not any(_alive(p) for p in processes), timeout=10, what="every process to exit")
    run = genperf.load(str(out))  # the last complete checkpoint, whatever the moment
    assert run.step >= 1 and run.checkpoint.endswith(("checkpoint", "checkpoint.old"))


# ---- 5. hostile files ----
def _png_claiming(path, width, height):
    """A valid PNG header that claims width x height pixels, followed by a few rows."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(4 * (width + 1))))
            + chunk(b"IEND", b"")
        )


def _jpeg_claiming(path, jpeg, width, height):
    data = bytearray(jpeg)
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    open(path, "wb").write(bytes(data))


def _dali_only_rejects(jpeg, folder, decodes, tries=30):
    """A JPEG whose header scan passes and which PIL decodes, but DALI's decoder (`decodes`) rejects:
    bytes of its Huffman tables overwritten (seeded). None if no try of `tries` is one."""
    from PIL import Image

    for seed in range(tries):
        rng = np.random.default_rng(seed)
        data = bytearray(jpeg)
        dht, sos = data.index(b"\xff\xc4"), data.index(b"\xff\xda")
        start = int(rng.integers(dht + 4, sos - 4))
        for k in range(start, min(sos, start + int(rng.integers(4, 40)))):
            data[k] = int(rng.integers(0, 256))
        path = os.path.join(folder, f"damaged{seed}.jpg")
        open(path, "wb").write(bytes(data))
        try:
            with Image.open(path) as im:
                im.load()
            if celeba.unreadable_reason(path) is None and not decodes(path):
                return path
        except OSError:
            pass
        os.remove(path)
    return None


@pytest.mark.parametrize(
    "loader",
    [
        pytest.param(
            "dali", marks=pytest.mark.skipif(not celeba.dali_available(), reason="nvidia-dali is not installed")
        ),
        "torch",
    ],
)
def test_hostile_images_are_skipped_counted_and_reported_by_both_loaders(tmp_path, loader, capsys):
    from PIL import Image

    folder = celeba.write_fake_celeba(str(tmp_path), 12, partition=(1.0, 0.0))
    jpeg = open(os.path.join(folder, "000001.jpg"), "rb").read()
    _png_claiming(os.path.join(folder, "000002.png"), 65000, 65000)  # decompression bombs
    os.remove(os.path.join(folder, "000002.jpg"))
    _jpeg_claiming(os.path.join(folder, "000003.jpg"), jpeg, 65000, 65000)
    Image.new("RGB", (50, 40)).save(os.path.join(folder, "000004.jpg"))  # smaller than the crop
    Image.new("RGB", (147, 300)).save(os.path.join(folder, "000005.jpg"))
    part = os.path.join(tmp_path, "celeba", "list_eval_partition.txt")
    lines = open(part).read().replace("000002.jpg", "000002.png")
    open(part, "w").write(lines + "000001.jpg 2\n")
    data = load_dataset("celeba", str(tmp_path), image_size=32)
    note = next(n for n in data.notes if "train" in n)
    assert note.startswith("celeba train: skipped 4 unreadable images: 000002.png (its header claims more than ")
    assert "000004.jpg (50x40, smaller than the 148-pixel centre crop)" in note
    assert "000005.jpg (147x300, smaller" in note and "000003.jpg (its header claims" in note
    assert len(data.train) == 8
    batches = make_batches(data.train, 3, loader=loader, workers=0 if loader == "torch" else 1)
    if loader == "dali":  # a file that only DALI's decoder rejects, found at run time
        damaged = _dali_only_rejects(jpeg, folder, batches._decodes)
        assert damaged is not None, "no crafted JPEG was rejected by DALI: the test cannot show the recovery"
        data.train.paths[3] = damaged
    for epoch in (0, 1):
        sizes = [len(x) for x in batches.epoch(epoch)]
        assert sum(sizes) == (5 if loader == "dali" else 6) and len(sizes) == 2, sizes  # 8 // 3 batches of 3
    if loader == "dali":
        assert batches.skipped == 2  # once per epoch, like the torch loader's decode failures
        assert capsys.readouterr().out.count(f"genperf: skipping {damaged}: DALI cannot decode it") == 1


def test_an_idx_header_with_absurd_dimensions_is_one_line(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 65536, 16777216, 16777216))
    with pytest.raises(DataError, match=r"IDX header says 65536x16777216x16777216 = \d+ bytes of data, file has 0"):
        mnist.read_idx(str(path))


# ---- 6. resume compares what matters ----
def test_resume_accepts_other_spellings_of_the_same_folders_and_a_moved_run(tmp_path, mnist_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink(mnist_root, "data-link")
    argv = ["vae", "--data", "mnist", "--batch-size", "500", "--log-every", "4"]
    assert train.main([*argv, "--data-root", "data-link/", "--steps", "4", "--out", "runs/a/"]) == 0
    os.rename("runs/a", "moved")
    assert (
        train.main(
            ["--resume", "--out", str(tmp_path / "moved"), "--data-root", os.path.realpath(mnist_root), "--steps", "8"]
        )
        == 0
    )
    assert torch.load(tmp_path / "moved" / "checkpoint.pt", weights_only=True)["step"] == 8


# ---- 7. an --fsdp data error is one line, exit 2 ----
def test_an_fsdp_data_error_is_printed_once_and_exits_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "genperf.train",
            "vae",
            "--fsdp",
            "--data",
            "mnist",
            "--data-root",
            str(tmp_path / "none"),
            "--no-download",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert proc.returncode == 2
    assert "launching" not in proc.stdout  # found before any worker started
    assert proc.stderr.strip() == (
        f"genperf: error: mnist: no IDX files under {tmp_path}/none (looked in "
        f"{tmp_path}/none and {tmp_path}/none/MNIST/raw); pass --data-root to the folder "
        f"holding them"
    )


def test_an_error_on_rank_0_alone_is_one_line_without_the_other_ranks_tracebacks(tmp_path):
    (tmp_path / "samples").write_text("a file where the run wants its samples folder")  # rank 0 alone writes there
    proc = subprocess.run(
        [sys.executable, "-m", "genperf.train", *RING, "--fsdp", "--steps", "20", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert proc.returncode == 2
    assert _messages_of(proc.stderr) == [f"genperf: error: could not write {tmp_path}/samples: File exists"]
    assert "Traceback" not in proc.stderr


# ---- 8. non-finite values are caught at their step ----
@pytest.mark.parametrize(
    "bad_after, message",
    [
        (24, "non-finite discriminator_loss, generator_loss at step 26"),  # the next step's losses
        (29, "non-finite weights in generator after step 30"),  # the checkpoint of step 30 checks the weights
    ],
)
def test_a_nan_is_caught_at_its_step_before_any_grid_or_checkpoint_is_made_from_it(
    tmp_path, monkeypatch, capsys, bad_after, message
):
    from genperf.families.gan import GANObjective

    real_step = GANObjective.train_step

    def poisoned(self, x, step):
        out = real_step(self, x, step)
        if step == bad_after:  # the weights go bad while this step's losses are finite
            with torch.no_grad():
                next(self.G.parameters()).fill_(float("nan"))
        return out

    monkeypatch.setattr(GANObjective, "train_step", poisoned)
    # log lines every 1000 steps: the check does not wait for them
    assert _ring(tmp_path, "--steps", "40", "--ckpt-every", "10", "--log-every", "1000") == 2
    assert _error(capsys) == (
        f"genperf: error: {message}; stopping. The last good checkpoint (step 20) is kept at {tmp_path}/checkpoint.pt"
    )
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 20 and all(
        torch.isfinite(v).all() for m in state["models"].values() for v in m.values() if v.is_floating_point()
    )
    assert os.listdir(tmp_path / "samples") == []


def test_step_checks_name_the_bad_metric_and_pass_stop_requests():
    checks = StepChecks(torch.device("cpu"), StopSignals())
    assert checks.after_step(1, {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}) is None
    checks.signals.requested = signal.SIGINT
    assert checks.after_step(2, {"a": torch.tensor(1.0)}) == signal.SIGINT
    with pytest.raises(Exception, match="non-finite b at step 3"):
        checks.after_step(3, {"a": torch.tensor(1.0), "b": torch.tensor(float("inf"))})


# ---- 9. messages that say what is wrong ----
def test_a_missing_labels_file_and_a_short_split_are_named(tmp_path, mnist_root):
    images = os.path.join(mnist_root, "t10k-images-idx3-ubyte.gz")
    os.symlink(images, tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(
        DataError,
        match="found .*t10k-images-idx3-ubyte.gz but not its labels file "
        r"\(t10k-labels-idx1-ubyte\[.gz\]\)",
    ):
        load_dataset("mnist", str(tmp_path), download=False)
    short = tmp_path / "short"
    short.mkdir()
    for kind, (dims, item) in {"images": ((900, 28, 28), 784), "labels": ((900,), 1)}.items():
        header = bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
        (short / f"t10k-{kind}-idx{3 if kind == 'images' else 1}-ubyte").write_bytes(header + bytes(900 * item))
    with pytest.raises(DataError, match="its 900 images are too few to hold out 1000"):
        load_dataset("mnist", str(short), download=False)


# ---- 10. results and folders that cannot be written ----
def _vae_digits(out, *extra):
    return train.main(["vae", "--data", "digits", "--batch-size", "32", "--steps", "4", "--out", str(out), *extra])


def test_an_evaluation_whose_json_cannot_be_written_still_prints_its_results(tmp_path, capsys):
    from genperf import evaluate

    assert _vae_digits(tmp_path / "run") == 0
    (tmp_path / "file").write_text("")
    capsys.readouterr()
    assert evaluate.main([str(tmp_path / "run"), "--samples", "2", "--json", str(tmp_path / "file" / "eval.json")]) == 2
    captured = capsys.readouterr()
    assert "ELBO" in captured.out  # the results, before the failed write
    assert _messages_of(captured.err) == [
        f"genperf.evaluate: error: could not write {tmp_path}/file/eval.json: Not a "
        f"directory; the results are printed above"
    ]


def test_a_sample_grid_on_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    import torchvision

    from genperf import sample

    assert _vae_digits(tmp_path / "run") == 0

    def full_disk(image, path, **kwargs):
        open(path, "wb").write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torchvision.utils, "save_image", full_disk)
    capsys.readouterr()
    assert sample.main([str(tmp_path / "run"), "--grid", str(tmp_path / "grid.png")]) == 2
    assert _error(capsys) == f"genperf.sample: error: could not write {tmp_path}/grid.png: No space left on device"
    assert not [name for name in os.listdir(tmp_path) if "grid" in name]


@pytest.mark.parametrize("where, reason", [("file", "File exists"), ("file/run", "Not a directory")])
def test_an_out_that_is_a_file_or_under_one_is_one_line(tmp_path, capsys, where, reason):
    (tmp_path / "file").write_text("")
    assert _vae_digits(tmp_path / where) == 2
    assert _error(capsys) == f"genperf: error: cannot use {tmp_path / where} as a run folder: {reason}"


def test_a_read_only_run_folder_is_one_line_for_a_run_and_a_resume(tmp_path, monkeypatch, capsys):
    assert _vae_digits(tmp_path) == 0
    real_open = open

    def read_only(path, mode="r", *args, **kwargs):  # root ignores chmod, so the folder's refusal is staged
        if "w" in mode and str(path).startswith(str(tmp_path)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(faults, "open", read_only, raising=False)
    capsys.readouterr()
    for extra in (["--resume", "--steps", "8"], ["--out", str(tmp_path / "new")]):
        assert _vae_digits(tmp_path, *extra) == 2
        folder = tmp_path / "new" if "--resume" not in extra else tmp_path
        assert _error(capsys) == f"genperf: error: cannot use {folder} as a run folder: Permission denied"


@pytest.mark.slow  # a cold compile in a fresh cache
def test_an_unusable_inductor_cache_folder_is_replaced_for_the_run_and_said(tmp_path):
    (tmp_path / "file").write_text("")
    env = dict(ENV, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "file" / "cache"))
    for cmd in (
        ["genperf.train", "vae", "--data", "digits", "--steps", "2", "--out", str(tmp_path / "run")],
        ["genperf.sample", str(tmp_path / "run"), "--n", "4"],
    ):
        proc = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        prog = "genperf" if cmd[0] == "genperf.train" else cmd[0]
        line = next(line for line in proc.stderr.splitlines() if "TORCHINDUCTOR_CACHE_DIR" in line)
        assert line.startswith(
            f"{prog}: TORCHINDUCTOR_CACHE_DIR={tmp_path}/file/cache cannot be used (Not a "
            f"directory); this run compiles into "
        )


def test_a_damaged_metrics_log_is_resumed_past_with_its_bad_lines_counted(tmp_path, capsys):
    assert _vae_digits(tmp_path, "--log-every", "2") == 0
    with open(tmp_path / "metrics.jsonl", "ab") as f:
        f.write(b'\xff\xfe not utf-8\n[1, 2]\n"a string"\n{"no": "step"}\n')
    capsys.readouterr()
    assert _vae_digits(tmp_path, "--resume", "--steps", "8", "--log-every", "2") == 0
    assert f"genperf: {tmp_path}/metrics.jsonl: left out 4 damaged lines" in capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == sorted(steps) and steps[-1] == 8


# ---- 11. what a step costs, said and bounded before training ----
def test_a_step_that_cannot_fit_memory_is_refused_before_training(tmp_path, monkeypatch, capsys):
    from genperf import perf

    monkeypatch.setattr(perf, "free_memory", lambda device: 10 << 20)  # 10 MiB free
    assert (
        train.main(
            ["realnvp", "--data", "digits", "--mid-channels", "32", "--num-blocks", "4", "--batch-size", "64"]
            + ["--out", str(tmp_path)]
        )
        == 2
    )
    line = _error(capsys)
    assert line.startswith(
        "genperf: error: a training step at --batch-size 64 needs about 0.10 GiB, more than the "
        "0.0 GiB free on cpu; lower --batch-size or --image-size"
    ), line
    assert not os.path.exists(tmp_path / "metrics.jsonl")


def test_the_step_memory_estimate_follows_the_measured_peak_of_a_gpu(tmp_path):
    """The meta-device estimate against max_memory_allocated of the same configuration on one H200 (benchmarks/
    bench_memory.py, RealNVP celeba64, fp32: 1.30 GiB fixed + 207 MiB a sample, 14.2 GiB at batch 64)."""
    args = config.parse_args(
        ["realnvp", "--data", "synthetic", "--image-size", "64", "--arch", "celeba64", "--st-norm", "none"]
    )  # the network measured there
    data = load_dataset("synthetic", image_size=64, download=False)
    estimate = trainer.step_cost(args, data, 64).bytes / 2**30
    assert 0.85 * 14.2 < estimate < 1.15 * 14.2, estimate


# ---- 12. a folder holds one run ----
def test_a_checkpoint_copied_in_from_another_run_is_refused(tmp_path, capsys):
    import shutil

    assert _vae_digits(tmp_path / "a") == 0
    assert _ring(tmp_path / "b", "--steps", "4") == 0
    shutil.copy(tmp_path / "b" / "checkpoint.pt", tmp_path / "a" / "checkpoint.pt")
    capsys.readouterr()
    assert train.main(["--resume", "--out", str(tmp_path / "a"), "--steps", "8"]) == 2
    line = _error(capsys)
    assert line.startswith(
        f"genperf: error: {tmp_path}/a/checkpoint.pt is not this folder's run: it trained dcgan on ring8 (run "
    ), line
    assert line.endswith("a checkpoint copied from another run folder? Move it out, or resume the run it came from")


def test_deleting_the_lock_file_does_not_let_a_second_run_in(tmp_path, capsys):
    out = tmp_path / "run"
    proc = _spawn(out)
    try:
        _wait_for(lambda: _steps_logged(str(out)), what="training")
        os.remove(out / "run.lock")
        assert _ring(out, "--steps", "10") == 2
        assert _error(capsys) == (
            f"genperf: error: {out} is in use by another genperf run (pid unknown); wait for it "
            f"to end, stop it, or choose another --out"
        )
    finally:
        proc.kill()
        proc.wait()


# ---- 13. options out of range ----
@pytest.mark.parametrize(
    "argv, line",
    [
        (["--fsdp", "--nproc", "-2"], "--nproc must be >= 1 (got -2)"),
        (["--fsdp", "--nproc", "0"], "--nproc must be >= 1 (got 0)"),
        (["--fsdp", "--nproc", "4096"], "--nproc 4096 asks for more ranks than this machine's"),
        (["--beta", "-1"], "--beta must be >= 0 (got -1.0)"),
        (["--lr", "0"], "--lr must be a number > 0 (got 0.0)"),
        (["--lr", "nan"], "--lr must be a number > 0 (got nan)"),
        (["--latent-dim", "0"], "--latent-dim must be >= 1 (got 0)"),
        (["--ckpt-every", "-1"], "--ckpt-every must be >= 0 (got -1)"),
        (["--image-size", "0"], "--image-size must be >= 1 (got 0)"),
    ],
)
def test_options_out_of_range_are_one_line(tmp_path, capsys, argv, line):
    assert train.main(["vae", "--data", "digits", "--out", str(tmp_path), *argv]) == 2
    assert _error(capsys).startswith(f"genperf: error: {line}")
    assert not os.path.exists(tmp_path / "config.json")


# ---- 14. messages that point the right way ----
def test_a_foreign_torch_file_as_checkpoint_gives_no_unsafe_advice(tmp_path, capsys):
    assert _vae_digits(tmp_path) == 0
    torch.save({"step": 1, "config": {}, "x": os.getcwd}, tmp_path / "checkpoint.pt")  # a pickled function
    capsys.readouterr()
    assert train.main(["--resume", "--out", str(tmp_path)]) == 2
    line = _error(capsys)
    assert (
        line == f"genperf: error: {tmp_path}/checkpoint.pt is not a genperf checkpoint: it holds Python objects a "
        f"checkpoint never holds"
    )


def test_a_moved_data_set_is_named_on_resume_and_evaluate_and_checked_by_content(tmp_path, mnist_root, capsys):
    from genperf import evaluate

    for name in ("old", "other"):
        (tmp_path / name).mkdir()
    for f in os.listdir(mnist_root):
        os.symlink(os.path.join(mnist_root, f), tmp_path / "old" / f)
    argv = [
        "vae",
        "--data",
        "mnist",
        "--data-root",
        str(tmp_path / "old"),
        "--no-download",
        "--batch-size",
        "32",
        "--steps",
        "4",
        "--out",
        str(tmp_path / "run"),
    ]
    assert train.main(argv) == 0
    os.rename(tmp_path / "old", tmp_path / "moved")
    assert (
        train.main(["--resume", "--out", str(tmp_path / "run"), "--steps", "8", "--data-root", str(tmp_path / "moved")])
        == 0
    )
    assert (
        evaluate.main(
            [str(tmp_path / "run"), "--samples", "2", "--metrics", "elbo", "--data-root", str(tmp_path / "moved")]
        )
        == 0
    )
    # Other images under the same names: refused, naming what differs.
    for kind, (dims, item) in {"images": ((2000, 28, 28), 784), "labels": ((2000,), 1)}.items():
        header = bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
        (tmp_path / "other" / f"t10k-{kind}-idx{3 if kind == 'images' else 1}-ubyte").write_bytes(
            header + bytes(2000 * item)
        )
    capsys.readouterr()
    assert (
        train.main(
            ["--resume", "--out", str(tmp_path / "run"), "--steps", "12", "--data-root", str(tmp_path / "other")]
        )
        == 2
    )
    assert _error(capsys).startswith(
        f"genperf: error: the mnist data under {tmp_path}/other is not the data this run "
        f"trained on (train 9000 -> 1000, "
    )
