"""Faults a long pretraining run meets: each is survived or clearly refused.

A refusal is one line on stderr, ``s3l: error: ...`` naming what to fix,
exit status 2, and no traceback. Runs that only need to start up are run
concurrently, to share the start-up time.
"""

import glob
import json
import logging
import os
import re
import shutil
import socket
import subprocess

import pytest
import torch
from conftest import BAD_TRAIN_AUDIO, ROOT
from hooked_recipe import CRASH_ENV, CRASH_EXIT_CODE

from s3l_plugin import folder_lock
from s3l_plugin.config import ConfigError
from s3l_plugin.folder_lock import LOCK_NAME, OutputFolderLock

# A run interrupted (as by kill -9) after optimizer step 2: its latest
# checkpoint is the intra-epoch one of step 1, whose files a resume all
# reads (an end-of-epoch resume ignores the data loader's position).
RUN_ARGS = ("--total_steps=4", "--ckpt_interval_steps=1")
CHECKPOINT_FILES = [
    "CKPT.yaml",
    "brain.ckpt",
    "counter.ckpt",
    "counters.ckpt",
    "dataloader-TRAIN.ckpt",
    "lr_scheduler.ckpt",
    "noise_stream.ckpt",
    "optimizer.ckpt",
    "random_state.ckpt",
    "student.ckpt",
    "teacher.ckpt",
    "training_options.ckpt",
]


def start_runs(runner, cases, *extra):
    """Starts ``runner`` on each ``{name: output_folder}`` at once."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return {
        name: subprocess.Popen(
            runner.command(output, *extra),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, output in cases.items()
    }


def finish_runs(processes):
    """``{name: (returncode, stderr)}`` once every process has ended."""
    results = {}
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=600)
        results[name] = (process.returncode, stderr)
    return results


def error_line(returncode, stderr):
    """The one ``s3l: error:`` line of a refused run (asserts it is one)."""
    assert returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("s3l: error: ")]
    assert errors == [lines[-1]], lines[-5:]
    return lines[-1]


@pytest.fixture(scope="module")
def interrupted_run(pretrain_runner, tmp_path_factory):
    """(output folder, its latest checkpoint folder) of a killed run."""
    output = str(tmp_path_factory.mktemp("interrupted") / "out")
    result = pretrain_runner.run(output, *RUN_ARGS, env={CRASH_ENV: "2"})
    assert result.returncode == CRASH_EXIT_CODE, result.stderr[-3000:]
    (checkpoint,) = glob.glob(os.path.join(output, "save", "CKPT+*"))
    return output, checkpoint


# ---- Nothing a resume reads can run code ---------------------------------
class CreatesMarker:
    """Pickles to a call that creates ``marker`` when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_malicious_pickle(path, marker):
    torch.save({"state": CreatesMarker(marker)}, path)


def test_planted_pickle_would_run_code(tmp_path):
    # The payload is live: an unsafe load creates the marker.
    marker = str(tmp_path / "marker")
    plant_malicious_pickle(str(tmp_path / "evil.ckpt"), marker)
    torch.load(str(tmp_path / "evil.ckpt"), weights_only=False)
    assert os.path.exists(marker)


@pytest.fixture(scope="module")
def malicious_resumes(pretrain_runner, interrupted_run, tmp_path_factory):
    """Resumes of copies of the run, one file replaced by a pickle each.

    Returns ``{file: (returncode, stderr, planted path, marker)}``.
    """
    output, checkpoint = interrupted_run
    assert sorted(os.listdir(checkpoint)) == CHECKPOINT_FILES
    base = tmp_path_factory.mktemp("malicious")
    cases, planted = {}, {}
    for name in CHECKPOINT_FILES:
        copy = str(base / name / "out")
        shutil.copytree(output, copy)
        path = os.path.join(copy, os.path.relpath(checkpoint, output), name)
        marker = str(base / name / "marker")
        plant_malicious_pickle(path, marker)
        cases[name], planted[name] = copy, (path, marker)
    results = finish_runs(start_runs(pretrain_runner, cases, *RUN_ARGS))
    return {name: (*results[name], *planted[name]) for name in CHECKPOINT_FILES}


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_resume_refuses_a_malicious_pickle(malicious_resumes, name):
    returncode, stderr, path, marker = malicious_resumes[name]
    assert not os.path.exists(marker), "the planted pickle ran"
    line = error_line(returncode, stderr)
    assert f"cannot resume from {path}: " in line
    # Stopped at start-up: nothing trained, nothing exported.
    output = path.split(os.sep + "save" + os.sep)[0]
    assert not os.path.exists(os.path.join(output, "encoder.ckpt"))
    # The killed run's lock was taken over, and released on the error.
    assert "Taking over the lock of" in stderr
    assert not os.path.exists(os.path.join(output, LOCK_NAME))


# ---- One run per output folder -------------------------------------------
def write_lock(folder, pid, host=None):
    os.makedirs(folder, exist_ok=True)
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": "x"}
    with open(os.path.join(folder, LOCK_NAME), "w", encoding="utf-8") as f:
        json.dump(holder, f)
    return holder


def dead_pid():
    """The PID of a process that has ended (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def live_process():
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


def test_busy_folder_is_refused(tmp_path, live_process):
    holder = write_lock(str(tmp_path), live_process.pid)
    with pytest.raises(
        ConfigError, match=f"in use by process {holder['pid']} "
    ):
        OutputFolderLock(str(tmp_path)).acquire()
    # A process on another host cannot be checked: refused as well.
    write_lock(str(tmp_path), dead_pid(), host="other-host")
    with pytest.raises(ConfigError, match="on other-host"):
        OutputFolderLock(str(tmp_path)).acquire()
    assert OutputFolderLock(str(tmp_path)).holder()["host"] == "other-host"


def test_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    stale = write_lock(str(tmp_path), dead_pid())
    with caplog.at_level(logging.WARNING, logger=folder_lock.__name__):
        lock = OutputFolderLock(str(tmp_path)).acquire()
    assert lock.holder()["pid"] == os.getpid()
    (warning,) = caplog.messages
    assert f"from process {stale['pid']} on {stale['host']}" in warning
    lock.release()
    assert os.listdir(tmp_path) == []


def test_second_run_into_a_busy_folder_stops_at_once(
    pretrain_runner, tmp_path, live_process
):
    output = str(tmp_path / "out")
    holder = write_lock(output, live_process.pid)
    result = pretrain_runner.run(output, "--total_steps=1")
    line = error_line(result.returncode, result.stderr)
    assert (
        f"the output folder {output} is in use by process "
        f"{holder['pid']} on {holder['host']}" in line
    )
    assert OutputFolderLock(output).holder() == holder  # left alone
    # Stopped before writing into the folder (the YAML's checkpointer only
    # made sure its folder exists).
    assert sorted(os.listdir(output)) == [LOCK_NAME, "save"]
    assert os.listdir(os.path.join(output, "save")) == []


def test_lock_is_released_at_exit(pretrain_runner, tmp_path):
    output = str(tmp_path / "out")
    result = pretrain_runner.run(output, "--total_steps=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not os.path.exists(os.path.join(output, LOCK_NAME))


# ---- A run that learns nothing does not pass for a success ---------------
@pytest.fixture(scope="module")
def unusable_train_csvs(bad_audio_csvs, tmp_path_factory):
    """A CSV folder whose training audio is all unusable (dev is fine)."""
    folder = str(tmp_path_factory.mktemp("unusable_train"))
    shutil.copy(os.path.join(bad_audio_csvs, "dev-clean.csv"), folder)
    with open(os.path.join(bad_audio_csvs, "train.csv"), encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    bad = [row for row in rows if row.startswith("bad-")]
    assert len(bad) == len(BAD_TRAIN_AUDIO)
    with open(os.path.join(folder, "train.csv"), "w", encoding="utf-8") as f:
        f.write("\n".join([header, *bad]) + "\n")
    return folder


def test_epoch_without_an_optimizer_step_stops_the_run(
    pretrain_runner, unusable_train_csvs, tmp_path
):
    output = str(tmp_path / "out")
    result = pretrain_runner.run(
        output,
        f"--csv_folder={unusable_train_csvs}",
        "--skip_prep=True",
        "--number_of_epochs=5",
        "--total_steps=100",
    )
    line = error_line(result.returncode, result.stderr)
    assert re.search(
        r"epoch 1 made no optimizer step: of its [1-9]\d* training batches, "
        rf"{len(BAD_TRAIN_AUDIO)} audio files were unusable",
        line,
    ), line
    # Stopped after the first epoch; nothing exported.
    assert "epoch 2" not in result.stderr
    assert not os.path.exists(os.path.join(output, "encoder.ckpt"))
    assert not os.path.exists(os.path.join(output, LOCK_NAME))


def test_epoch_skipping_too_much_audio_stops_the_run(
    pretrain_runner, bad_audio_csvs, tmp_path
):
    with open(os.path.join(bad_audio_csvs, "train.csv"), encoding="utf-8") as f:
        total = len(f.read().splitlines()) - 1
    bad = len(BAD_TRAIN_AUDIO)
    limit = round(0.9 * bad / total, 3)  # just under this run's share
    output = str(tmp_path / "out")
    result = pretrain_runner.run(
        output,
        f"--csv_folder={bad_audio_csvs}",
        "--skip_prep=True",
        "--number_of_epochs=1",
        "--total_steps=100",
        f"--max_skipped_audio_share={limit}",
    )
    line = error_line(result.returncode, result.stderr)
    assert (
        f"epoch 1 skipped {bad} of its {total} training audio files "
        f"({bad / total:.0%}), more than max_skipped_audio_share ({limit}) "
        "allows" in line
    ), line
    assert not os.path.exists(os.path.join(output, "encoder.ckpt"))
