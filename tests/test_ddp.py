"""Two processes (torchrun, gloo on CPU) train one model.

Each rank gets its own batches, a rank whose batch is all unusable audio
still joins the gradient all-reduce, the ranks end with identical students
and teachers, the main process alone writes checkpoints and logs, and a
crashed run resumes (each rank from its own random state).
"""

import glob
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from conftest import BAD_TRAIN_AUDIO, BAD_VALID_AUDIO, ROOT
from hooked_recipe import CRASH_ENV, DUMP_ENV

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(pretrain_runner, bad_audio_csvs, tmp_path_factory):
    """Crashes a 2-process run mid-epoch, then reruns it to the end."""
    base = tmp_path_factory.mktemp("ddp")
    output, dump = str(base / "out"), str(base / "dump")
    command = [
        TORCHRUN,
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
    ] + pretrain_runner.command(
        output,
        "--distributed_backend=gloo",
        f"--csv_folder={bad_audio_csvs}",
        "--skip_prep=True",
        "--number_of_epochs=1",
        "--total_steps=100",
        # Intra-epoch checkpoints: saving and deleting them are collective.
        "--ckpt_interval_steps=2",
    )[1:]  # torchrun runs the script itself
    env = dict(os.environ, OMP_NUM_THREADS="1")
    crashed = subprocess.run(
        command,
        cwd=ROOT,
        env=dict(env, **{CRASH_ENV: "4"}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert crashed.returncode != 0
    assert glob.glob(os.path.join(output, "save", "CKPT+*", "CKPT.yaml"))
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=dict(env, **{DUMP_ENV: dump}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    ranks = [
        torch.load(os.path.join(dump, f"rank{r}.pt"), weights_only=False)
        for r in (0, 1)
    ]
    return output, ranks


def test_ranks_end_with_identical_models(ddp_run):
    _, (first, second) = ddp_run
    assert first["optimizer_step"] == second["optimizer_step"] > 0
    for part in ("student", "teacher"):
        for name, tensor in first[part].items():
            assert torch.equal(tensor, second[part][name]), f"{part}.{name}"
    assert int(first["teacher"]["step"]) == first["optimizer_step"]


def test_ranks_see_different_batches(ddp_run):
    _, (first, second) = ddp_run
    assert len(first["batches"]) == len(second["batches"]) > 2
    ours = [tuple(ids) for _, ids in first["batches"]]
    theirs = [tuple(ids) for _, ids in second["batches"]]
    # DistributedSampler pads the shorter rank by repeating a batch.
    shared = set(ours) & set(theirs) - {()}
    assert len(shared) <= 1, shared
    # An all-unusable (empty) batch on one rank while the other trained:
    # the empty rank joined the all-reduce with zero gradients.
    assert any(not a and b for a, b in zip(ours, theirs)) or any(
        a and not b for a, b in zip(ours, theirs)
    )


def test_main_process_alone_writes_and_logs(ddp_run):
    output, _ = ddp_run
    (folder,) = glob.glob(os.path.join(output, "save", "CKPT+*"))
    states = torch.load(
        os.path.join(folder, "random_state.ckpt"), weights_only=False
    )["ranks"]
    assert len(states) == 2  # each rank's own generators
    assert not torch.equal(states[0]["torch"], states[1]["torch"])
    with open(os.path.join(output, "log.txt"), encoding="utf-8") as f:
        log = f.read()
    assert log.count("Resuming from") == 1
    assert log.count("Saved an end-of-epoch checkpoint") == 1
    assert log.count("Pretrained encoder written") == 1
    # Skipped files of both ranks are logged by the main process (twice
    # for those read between the last checkpoint and the crash), and
    # counted once: the counters are checkpointed.
    for utt_id, _, _ in BAD_TRAIN_AUDIO + BAD_VALID_AUDIO:
        assert 1 <= len(re.findall(rf"Skipped audio {utt_id}: ", log)) <= 2
    skipped = len(BAD_TRAIN_AUDIO) + len(BAD_VALID_AUDIO)
    with open(os.path.join(output, "train_log.txt"), encoding="utf-8") as f:
        assert f"skipped_audio: {skipped}" in f.read()
    assert os.path.getsize(os.path.join(output, "encoder.ckpt")) > 0
