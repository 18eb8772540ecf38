"""Two machines on one host: `diffae encode-dataset` and `diffae train` under two torchrun
agents (`--nnodes 2 --nproc-per-node 1`, c10d rendezvous on 127.0.0.1) give what one process
gives. Each agent is what a cluster starts on each node; here both are subprocesses of the test,
bounded in time and always stopped. Marked `multinode` (~10 s each: four torch imports and a
rendezvous), a step of its own in `.ci/run`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffae.cli import main
from diffae.latent_dataset import read_manifest
from diffae_core.families import installed_families
from diffae_testing import randomize_weights, randomize_whitening

pytestmark = pytest.mark.multinode

FAMILY = installed_families()["fcdm_diffae"]
NODES = 2
TIMEOUT_SECONDS = 300
DDP_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}
"""2 processes vs 1: the same global batch, gradients averaged in another order (float32)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_on_two_nodes(arguments: list[str], run_id: str) -> list[subprocess.CompletedProcess]:
    """`torchrun ... -m diffae ARGUMENTS` as node 0 and node 1 of a 2-node job; both results."""
    endpoint = f"127.0.0.1:{free_port()}"
    environment = os.environ | {"OMP_NUM_THREADS": "1"}

    def agent(node: int) -> subprocess.Popen:
        command = [
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes", str(NODES), "--nproc-per-node", "1", "--node-rank", str(node),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
            "-m", "diffae", *arguments,
        ]  # fmt: skip
        return subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            start_new_session=True,  # the agent and its worker are stopped together below
        )

    agents = [agent(node) for node in range(NODES)]
    results = []
    try:
        for agent in agents:
            stdout, stderr = agent.communicate(timeout=TIMEOUT_SECONDS)
            results.append(
                subprocess.CompletedProcess(agent.args, agent.returncode, stdout, stderr)
            )
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.communicate()
    return results


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(0)
    for index in range(7):
        height, width = 32 + 8 * (index % 2), 32 + 8 * (index % 3)
        pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"image_{index}.png")
    return folder


def rows_of(out: Path) -> list[dict]:
    files = sorted((out / "data").glob("shard-*.parquet"))
    return [row for path in files for row in pq.read_table(path).to_pylist()]


def test_encode_dataset_on_two_nodes_writes_the_rows_of_one_process(image_dir, tmp_path):
    model = tmp_path / "model"
    randomize_whitening(randomize_weights(FAMILY.model_class(FAMILY.tiny_config))).save_pretrained(
        model
    )
    common = ["encode-dataset", str(image_dir), "--model", str(model), "--family", "fcdm_diffae"]
    common += ["--shard-size", "2", "--batch-size", "1", "--dtype", "float32", "--device", "cpu"]
    assert main([*common, "--quiet", "--out", str(tmp_path / "one")]) == 0
    results = run_on_two_nodes([*common, "--out", str(tmp_path / "two")], "encode")
    for node, result in enumerate(results):
        assert result.returncode == 0, f"node {node}: {result.stderr[-3000:]}"
    one, two = tmp_path / "one", tmp_path / "two"
    assert rows_of(two) == rows_of(one)
    manifest, expected = read_manifest(two), read_manifest(one)
    for key in ("complete", "counts", "skipped", "shards", "latent_mean", "latent_var"):
        assert manifest[key] == expected[key], key
    # One job of 2 (shard k on rank k mod 2): rank 0, on one of the nodes, speaks for it.
    assert sum(r.stdout.count("rank 0: encoded") for r in results) == 1
    assert sum(r.stdout.count("wrote 7 rows in 4 shards") for r in results) == 1


def test_train_on_two_nodes_gives_the_weights_of_one_process(image_dir, tmp_path):
    config = tmp_path / "config.json"
    FAMILY.tiny_config.save(config)
    common = ["train", str(image_dir), "--config", str(config), "--family", "fcdm_diffae"]
    common += ["--steps", "3", "--batch-size", "4", "--crop-size", "32", "--workers", "0"]
    common += ["--threads", "1", "--save-every", "3"]
    assert main([*common, "--quiet", "--out", str(tmp_path / "one")]) == 0
    results = run_on_two_nodes([*common, "--out", str(tmp_path / "two")], "train")
    for node, result in enumerate(results):
        assert result.returncode == 0, f"node {node}: {result.stderr[-3000:]}"
    one = load_file(tmp_path / "one" / "model" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], **DDP_TOLERANCE, msg=name)
    assert sum(r.stdout.count("the EMA weights are in") for r in results) == 1
