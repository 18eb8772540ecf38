"""Faults as they happen for real, on `diffae encode-dataset` and `diffae train` with tiny models:
a full disk (a small tmpfs), a read-only or missing output folder, two runs on one folder, a
killed run's lock, SIGKILL and SIGINT (Ctrl-C) to a running command.

The mounts need root (CI runs as root): elsewhere those tests skip with the reason, but under
CI=true they fail instead, so CI never passes without them. The commands that are signalled run
in a subprocess whose model is slowed down (a sleep per batch or step), so a signal lands
mid-run on any machine; they are marked `faults` (~10 s each: a subprocess imports torch), a
step of their own in `.ci/run`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffae.cli import dataset_encoding as encode_command
from diffae.cli import main
from diffae.cli import training as train_command
from diffae.faults import LOCK_NAME
from diffae.latent_dataset import read_manifest
from diffae.training import STATE_NAME
from diffae_core.families import installed_families

FAMILY = installed_families()["fcdm_diffae"]
IMAGES = 12
SHARD_SIZE = 2
SHARDS = IMAGES // SHARD_SIZE
WAIT_SECONDS = 120
"""Longest wait for a subprocess to reach a state or to exit (a loaded CI machine)."""
SLOW = """
import sys, time
import diffae.training
from diffae_core.families import installed_families

delay = float(sys.argv[1])
model_class = installed_families()["fcdm_diffae"].model_class
encode, drops = model_class.encode, diffae.training.drops_middle_blocks

def slow_encode(model, images):
    time.sleep(delay)
    return encode(model, images)

def slow_step(*args):
    time.sleep(delay)
    return drops(*args)

model_class.encode = slow_encode
diffae.training.drops_middle_blocks = slow_step  # called once per training step
from diffae.cli import main
sys.exit(main(sys.argv[2:]))
"""
"""`python -c SLOW DELAY ARGS...`: `diffae ARGS...` with a sleep of DELAY s per encode call and
per training step."""


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tiny_fcdm_diffae_folder: Path) -> Path:
    return tiny_fcdm_diffae_folder


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(0)
    for index in range(IMAGES):
        pixels = torch.randint(0, 256, (8, 8, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"image_{index:02d}.png")
    return folder


def encode_arguments(model_dir: Path, images: Path, out: Path, *options: str) -> list[str]:
    return [
        "encode-dataset", str(images), "--model", str(model_dir), "--out", str(out),
        "--family", "fcdm_diffae", "--shard-size", str(SHARD_SIZE), "--dtype", "float32",
        "--device", "cpu", "--batch-size", "1", "--quiet", *options,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(model_dir, image_dir, tmp_path_factory) -> Path:
    """The dataset of one uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(encode_arguments(model_dir, image_dir, out)) == 0
    return out


def rows_of(out: Path) -> list[dict]:
    files = sorted((out / "data").glob("shard-*.parquet"))
    return [row for path in files for row in pq.read_table(path).to_pylist()]


def assert_same_dataset(out: Path, reference: Path) -> None:
    assert rows_of(out) == rows_of(reference)
    manifest, expected = read_manifest(out), read_manifest(reference)
    for key in ("complete", "counts", "skipped", "shards", "latent_mean", "latent_var"):
        assert manifest[key] == expected[key], key
    assert not (out / LOCK_NAME).exists()


def leftovers(out: Path) -> list[str]:
    """Temporary files visible in the dataset folder (a half-written shard or manifest)."""
    return sorted(path.name for path in out.rglob("*.tmp"))


def requirement_missing(reason: str) -> None:
    """Skip for `reason`, except under CI=true, where these tests must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI runs these tests as root")
    pytest.skip(reason)


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator:
    """`mount_tmpfs(options)` -> a fresh folder with a tmpfs mounted on it, unmounted after."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        if os.geteuid() != 0:
            requirement_missing("mounting a tmpfs needs root")
        folder = tmp_path / f"mount{len(mounted)}"
        folder.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            requirement_missing(f"mount -t tmpfs not permitted here: {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    try:
        yield mount
    finally:
        for folder in mounted:
            if subprocess.run(["umount", str(folder)]).returncode:
                subprocess.run(["umount", "--lazy", str(folder)], check=True)  # still busy


def free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def wait_for(condition, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"exited ({process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {WAIT_SECONDS} s")
        time.sleep(0.02)


def start_slow(arguments: list[str], delay: float) -> subprocess.Popen:
    """`diffae ARGUMENTS` slowed down, in a session of its own (a signal to its group is a
    Ctrl-C in a terminal: the DataLoader workers get it too)."""
    return subprocess.Popen(
        [sys.executable, "-c", SLOW, str(delay), *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )


def ctrl_c_when(run: subprocess.Popen, condition, what: str) -> str:
    """Ctrl-C (SIGINT to the process group) once `condition()` holds; the run's stderr."""
    try:
        wait_for(condition, run, what)
        os.killpg(run.pid, signal.SIGINT)
        _, error = run.communicate(timeout=WAIT_SECONDS)
    finally:
        run.kill()
    return error


def shards_written(out: Path) -> int:
    return len(list((out / "data").glob("shard-*.parquet")))


# -- encode-dataset ------------------------------------------------------------------------------


def test_a_full_disk_stops_with_one_line_and_the_same_command_finishes(
    model_dir, image_dir, reference, mount_tmpfs, capsys
):
    """A tmpfs with room for about half the dataset: one line naming the folder, only whole
    shards left; with the space freed, the same command writes the uninterrupted run's rows."""
    disk = mount_tmpfs("size=512k")
    # tmpfs counts whole pages: the manifest and the lock file take one each, every shard of
    # these tiny latents a few; room is left for half the shards.
    page = os.statvfs(disk).f_frsize
    shard_pages = max(-(-path.stat().st_size // page) for path in (reference / "data").iterdir())
    filler = disk / "filler"
    room = (2 + (SHARDS // 2) * shard_pages) * page
    filler.write_bytes(b"\0" * (free_bytes(disk) - room))
    out = disk / "out"
    arguments = encode_arguments(model_dir, image_dir, out)

    assert main(arguments) == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error and len(error.splitlines()) == 1, error
    assert error.startswith(f"diffae encode-dataset: error: --out {out}: no space left on the")
    assert "run the same command again to finish" in error
    assert leftovers(out) == [] and not (out / LOCK_NAME).exists()
    written = sorted((out / "data").glob("shard-*.parquet"))
    assert 0 < len(written) < SHARDS, "the disk fills up mid-run"
    for path in written:  # whole shards only, each the reference's
        assert pq.read_table(path).equals(pq.read_table(reference / "data" / path.name))
    assert not read_manifest(out)["complete"]

    filler.unlink()
    assert main(arguments) == 0
    assert_same_dataset(out, reference)


def test_a_read_only_or_missing_folder_is_refused_before_the_model_loads(
    model_dir, image_dir, mount_tmpfs, monkeypatch, capsys
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the folder was checked")

    monkeypatch.setattr(encode_command, "load_model", no_model)
    missing = image_dir.parent / "no_such_folder" / "out"
    assert main(encode_arguments(model_dir, image_dir, missing)) == 1
    assert capsys.readouterr().err == (
        f"diffae encode-dataset: error: --out {missing}: its parent folder {missing.parent} "
        "does not exist\n"
    )
    read_only = mount_tmpfs("ro,size=64k")
    for out in (read_only, read_only / "out"):  # the folder itself, or its parent
        assert main(encode_arguments(model_dir, image_dir, out)) == 1
        assert capsys.readouterr().err == (
            f"diffae encode-dataset: error: --out {out}: cannot write there "
            "(Read-only file system)\n"
        )


@pytest.mark.faults
def test_a_second_run_is_refused_and_a_killed_runs_lock_taken_over(
    model_dir, image_dir, reference, tmp_path, capsys
):
    """A run in progress (a real process) holds the folder: a second run is refused, naming
    it. SIGKILL leaves its lock behind, stale (this host, that pid gone): the same command
    takes it over and finishes with the uninterrupted run's rows."""
    out = tmp_path / "out"
    arguments = encode_arguments(model_dir, image_dir, out)
    first = start_slow(arguments, delay=0.2)
    try:
        wait_for(lambda: shards_written(out) >= 1, first, "a shard written")
        assert main(arguments) == 1
        error = capsys.readouterr().err
        assert len(error.splitlines()) == 1 and error.startswith(
            f"diffae encode-dataset: error: --out {out}: in use by another run (pid "
            f"{first.pid} on host {socket.gethostname()}, since "
        )
        assert error.endswith(
            f"lock file {out / LOCK_NAME}): wait for it to finish, or delete the lock file if "
            "that run is gone\n"
        )
        first.kill()  # SIGKILL, mid-run
        first.wait(timeout=WAIT_SECONDS)
    finally:
        first.kill()
        first.communicate()
    assert (out / LOCK_NAME).exists() and shards_written(out) < SHARDS
    assert main(arguments) == 0
    assert_same_dataset(out, reference)
    assert leftovers(out) == []


@pytest.mark.faults
def test_ctrl_c_stops_at_a_batch_boundary_and_says_how_to_resume(
    model_dir, image_dir, reference, tmp_path
):
    """SIGINT to the command's process group (as Ctrl-C in a terminal, DataLoader workers
    included): whole shards kept, none half-written, exit status 130 and one line saying how to
    go on; the same command finishes with the uninterrupted run's rows."""
    out = tmp_path / "out"
    arguments = encode_arguments(model_dir, image_dir, out, "--num-workers", "1")
    run = start_slow(arguments, delay=0.2)
    error = ctrl_c_when(run, lambda: shards_written(out) >= 1, "a shard written")
    assert run.returncode == 130, error
    assert "Traceback" not in error
    assert "stopping at the end of this batch" in error
    last = error.splitlines()[-1]
    assert last.startswith("diffae encode-dataset: interrupted: ") and last.endswith(
        f"of {SHARDS} shards are written and kept, the one being encoded is not; run the same "
        "command again to finish"
    )
    assert leftovers(out) == [] and not (out / LOCK_NAME).exists()
    assert 0 < shards_written(out) < SHARDS
    assert main(encode_arguments(model_dir, image_dir, out)) == 0
    assert_same_dataset(out, reference)


# -- train ---------------------------------------------------------------------------------------


def train_arguments(data: Path, config: Path, out: Path, steps: int) -> list[str]:
    return [
        "train", str(data), "--config", str(config), "--family", "fcdm_diffae", "--out", str(out),
        "--steps", str(steps), "--batch-size", "2", "--crop-size", "8", "--warmup-steps", "2",
        "--save-every", "1000", "--log-every", "1", "--threads", "1", "--quiet",
    ]  # fmt: skip


def test_train_refuses_a_read_only_or_missing_folder_before_the_model(
    image_dir, tmp_path, mount_tmpfs, monkeypatch, capsys
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the folder was checked")

    monkeypatch.setattr(train_command, "choose_family", no_model)
    config = tmp_path / "config.json"
    FAMILY.tiny_config.save(config)
    missing = tmp_path / "no_such_folder" / "run"
    assert main(train_arguments(image_dir, config, missing, steps=2)) == 1
    assert capsys.readouterr().err == (
        f"diffae train: error: --out {missing}: its parent folder {missing.parent} does not exist\n"
    )
    read_only = mount_tmpfs("ro,size=64k") / "run"
    assert main(train_arguments(image_dir, config, read_only, steps=2)) == 1
    assert capsys.readouterr().err == (
        f"diffae train: error: --out {read_only}: cannot write there (Read-only file system)\n"
    )


def pages(folder: Path, page: int) -> int:
    """The tmpfs pages the files under `folder` take."""
    return sum(-(-path.stat().st_size // page) for path in folder.rglob("*") if path.is_file())


def test_train_on_a_full_disk_keeps_the_last_checkpoint_and_resumes_exactly(
    image_dir, tmp_path, mount_tmpfs, capsys
):
    """Room for one checkpoint but not for the next one's temporary state: one line saying
    which step is kept; with the space freed, `--resume` ends with the weights of a run on a
    disk with room."""
    config = tmp_path / "config.json"
    FAMILY.tiny_config.save(config)
    arguments = [*train_arguments(image_dir, config, tmp_path / "straight", 3), "--save-every", "1"]
    assert main(arguments) == 0
    disk = mount_tmpfs("size=4m")
    page = os.statvfs(disk).f_frsize
    state_pages = -(-(tmp_path / "straight" / STATE_NAME).stat().st_size // page)
    filler = disk / "filler"
    room = pages(tmp_path / "straight", page) + 1 + state_pages // 2  # + the lock file
    filler.write_bytes(b"\0" * (free_bytes(disk) - room * page))
    out = disk / "run"
    assert main([*train_arguments(image_dir, config, out, 3), "--save-every", "1"]) == 1
    error = capsys.readouterr().err
    assert error == (
        f"diffae train: error: --out {out}: no space left on the device (the checkpoint of "
        "step 1 is kept; nothing half-written is left): free some space and run again with "
        "--resume to continue from it\n"
    )
    assert leftovers(out) == [] and not (out / LOCK_NAME).exists()

    filler.unlink()
    assert main(["train", str(image_dir), "--out", str(out), "--resume", "--threads", "1"]) == 0
    expected = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    resumed = load_file(out / "model" / "model.safetensors")
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name


def test_train_refuses_a_folder_a_live_run_holds_and_takes_over_a_dead_ones(
    image_dir, tmp_path, capsys
):
    """Lock files as another run leaves them: pid 1 (alive on any host) holds the folder; a
    pid that has exited (a killed run) does not."""
    config = tmp_path / "config.json"
    FAMILY.tiny_config.save(config)
    out = tmp_path / "run"
    out.mkdir()
    host = socket.gethostname()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": host, "started": "then"}))
    assert main(train_arguments(image_dir, config, out, steps=2)) == 1
    assert capsys.readouterr().err.startswith(
        f"diffae train: error: --out {out}: in use by another run (pid 1 on host {host}, since "
        "then; lock file"
    )
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    (out / LOCK_NAME).write_text(json.dumps({"pid": int(gone.stdout), "host": host}))
    assert main(train_arguments(image_dir, config, out, steps=2)) == 0
    assert (out / "model").is_dir() and not (out / LOCK_NAME).exists()


@pytest.mark.faults
def test_ctrl_c_during_training_saves_the_step_and_resume_continues_exactly(image_dir, tmp_path):
    """SIGINT to `diffae train` (workers included): the step finishes, a checkpoint is saved
    there although no save was due, exit status 130 with how to continue; `--resume` then
    ends with the weights of a run never interrupted."""
    steps = 30
    config = tmp_path / "config.json"
    FAMILY.tiny_config.save(config)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run = start_slow([*train_arguments(image_dir, config, stopped, steps), "--workers", "1"], 0.1)
    log = stopped / "log.jsonl"

    def two_steps() -> bool:
        return log.exists() and len(log.read_text().splitlines()) >= 2

    error = ctrl_c_when(run, two_steps, "2 steps")
    assert run.returncode == 130, error
    assert "Traceback" not in error
    last = error.splitlines()[-1]
    step = int(last.removeprefix("diffae train: interrupted after step ").split()[0])
    assert 2 <= step < steps
    assert last == (
        f"diffae train: interrupted after step {step} of {steps}, saved in {stopped}: run again "
        "with --resume to continue exactly from there"
    )
    assert leftovers(stopped) == []

    resume = ["train", str(image_dir), "--out", str(stopped), "--resume", "--quiet"]
    assert main([*resume, "--threads", "1"]) == 0
    assert main([*train_arguments(image_dir, config, straight, steps), "--workers", "1"]) == 0
    expected = load_file(straight / "model" / "model.safetensors")
    resumed = load_file(stopped / "model" / "model.safetensors")
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name
