"""Resume survives damage, and refuses options that would change the maths.

A damaged checkpoint is passed over (one warning naming it and why) for
the newest one that loads completely; with none usable, or checkpoint
folders without a valid ``CKPT.yaml``, the run stops with one line, never
starting afresh silently; ``--restart`` moves the checkpoints aside. The
options that change what is trained are stored with each checkpoint and
compared on resume: a larger ``total_steps`` rebuilds the schedules, any
other change stops the run naming the key.
"""

import glob
import logging
import os
import shutil
import subprocess

import pytest
import torch
from conftest import ROOT
from hooked_recipe import CRASH_ENV, CRASH_EXIT_CODE, DUMP_ENV
from test_faults import error_line, finish_runs, start_runs
from test_resume import assert_same_state, load_dump, logged_steps

from s3l_plugin import checkpointing
from s3l_plugin.checkpointing import (
    AtomicCheckpointer,
    CheckpointLoadError,
    PerRankState,
)
from s3l_plugin.config import ConfigError, check_resumed_options

RUN_ARGS = ("--total_steps=4", "--ckpt_interval_steps=1")


# ---- The checkpointer on its own -----------------------------------------
def truncate(path):
    with open(path, "rb") as fin:
        data = fin.read()
    with open(path, "wb") as fout:
        fout.write(data[: len(data) // 2])


def empty(path):
    open(path, "w").close()


def bad_meta(path):
    with open(path, "w", encoding="utf-8") as fout:
        fout.write("just: [a list")


@pytest.fixture
def two_checkpoints(tmp_path):
    """A checkpointer with two checkpoints (layer weights 1, then 2)."""
    layer = torch.nn.Linear(2, 2)
    counters = {"value": 0}
    state = PerRankState(lambda: dict(counters), counters.update)
    checkpointer = AtomicCheckpointer(
        tmp_path, {"layer": layer, "counters": state}
    )
    paths = []
    for value in (1.0, 2.0):
        torch.nn.init.constant_(layer.weight, value)
        counters["value"] = value
        paths.append(checkpointer.save_checkpoint(meta={"v": value}).path)
    torch.nn.init.constant_(layer.weight, 0.0)
    counters["value"] = 0
    return checkpointer, layer, counters, paths


@pytest.mark.parametrize(
    "name, damage, problem",
    [
        ("layer.ckpt", truncate, "cannot resume from {}: "),
        ("counters.ckpt", truncate, "cannot resume from {}: "),
        ("counters.ckpt", empty, "cannot resume from {}: ValueError: the "),
        ("CKPT.yaml", bad_meta, "cannot resume from {}: "),
    ],
)
def test_damaged_newest_checkpoint_falls_back_to_the_older(
    two_checkpoints, caplog, name, damage, problem
):
    checkpointer, layer, counters, (older, newest) = two_checkpoints
    damage(newest / name)
    with caplog.at_level(logging.WARNING, logger=checkpointing.__name__):
        loaded = checkpointer.recover_if_possible()
    assert loaded.path == older == checkpointer.resumed.path
    assert torch.all(layer.weight == 1.0)
    assert counters["value"] == 1.0
    (warning,) = caplog.messages  # one line, naming the file and why
    assert problem.format(newest / name) in warning
    assert "\n" not in warning


def test_no_usable_checkpoint_stops_naming_the_newest(two_checkpoints):
    checkpointer, _, _, (older, newest) = two_checkpoints
    truncate(older / "layer.ckpt")
    truncate(newest / "counters.ckpt")
    with pytest.raises(CheckpointLoadError) as error:
        checkpointer.recover_if_possible()
    message = str(error.value)
    assert message.startswith(f"cannot resume from {newest}/counters.ckpt: ")
    assert "nor from the other 1" in message
    assert "pass --restart" in message


def test_checkpoint_folders_without_meta_never_start_afresh(two_checkpoints):
    checkpointer, _, _, paths = two_checkpoints
    for path in paths:
        os.remove(path / "CKPT.yaml")
    assert checkpointer.list_checkpoints() == []
    with pytest.raises(CheckpointLoadError, match="none with a valid CKPT"):
        checkpointer.recover_if_possible()
    # An empty checkpoints folder is a fresh start.
    for path in paths:
        shutil.rmtree(path)
    assert checkpointer.recover_if_possible() is None


def test_options_compared_leaf_by_leaf():
    saved = {
        "lr": 0.001,
        "loss": {"!new:Loss": {"temperature": 0.5}},
        "total_steps": 10,
    }
    changed = {
        "lr": 0.001,
        "loss": {"!new:Loss": {"temperature": 0.1}},
        "total_steps": 12,
    }
    with pytest.raises(ConfigError, match="loss.temperature was 0.5 in the"):
        check_resumed_options(saved, changed, "ckpt")
    changed["loss"] = {"!new:OtherLoss": {"temperature": 0.5}}
    with pytest.raises(ConfigError, match="loss was !new:Loss in the"):
        check_resumed_options(saved, changed, "ckpt")
    changed["loss"] = saved["loss"]
    assert check_resumed_options(saved, changed, "ckpt") == 10
    changed["total_steps"] = 8
    with pytest.raises(ConfigError, match="it can only grow on resume"):
        check_resumed_options(saved, changed, "ckpt")


# ---- The recipe ----------------------------------------------------------
def copy_run(source, folder):
    shutil.copytree(source, folder)
    return str(folder)


@pytest.fixture(scope="module")
def finished_run(pretrain_runner, tmp_path_factory):
    """A finished 4-step run (its output folder)."""
    output = str(tmp_path_factory.mktemp("finished") / "out")
    result = pretrain_runner.run(output, *RUN_ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.fixture(scope="module")
def crashed_run(pretrain_runner, tmp_path_factory):
    """A run killed after step 3 with two checkpoints: steps 1 and 2.

    The step-1 checkpoint of a run killed after step 2 is put back next
    to the step-2 one of its rerun (which deleted it).
    """
    base = tmp_path_factory.mktemp("crashed")
    output = str(base / "out")
    first = pretrain_runner.run(output, *RUN_ARGS, env={CRASH_ENV: "2"})
    assert first.returncode == CRASH_EXIT_CODE, first.stderr[-3000:]
    (step1,) = glob.glob(os.path.join(output, "save", "CKPT+*"))
    kept = shutil.copytree(step1, base / "step1")
    second = pretrain_runner.run(output, *RUN_ARGS, env={CRASH_ENV: "3"})
    assert second.returncode == CRASH_EXIT_CODE, second.stderr[-3000:]
    (step2,) = glob.glob(os.path.join(output, "save", "CKPT+*"))
    assert step2 != step1
    shutil.copytree(kept, step1)
    return output, step1, step2


def lrs_of_one_cycle(total_steps, steps):
    """The lr logged after each of ``steps`` (s3l_tiny.yaml's schedule)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=1e-3,
        total_steps=total_steps,
        pct_start=0.08,
        anneal_strategy="cos",
        div_factor=1e6,
        final_div_factor=1.0,
        cycle_momentum=False,
    )
    lrs = {}
    for step in range(1, max(steps) + 1):
        optimizer.step()
        scheduler.step()
        lrs[step] = scheduler.get_last_lr()[0]
    return [lrs[step] for step in steps]


DAMAGES = {
    "student.ckpt": truncate,
    "optimizer.ckpt": truncate,
    "random_state.ckpt": truncate,
    "counters.ckpt": truncate,
    "CKPT.yaml": bad_meta,
}


@pytest.fixture(scope="module")
def fallback_resumes(pretrain_runner, crashed_run, tmp_path_factory):
    """Reruns of copies of the crashed run, one newest file damaged each.

    Returns ``{file: (returncode, stderr, output, damaged file, dump)}``.
    """
    source, _, step2 = crashed_run
    base = tmp_path_factory.mktemp("fallback")
    processes, cases = {}, {}
    for name, damage in DAMAGES.items():
        output = copy_run(source, base / name / "out")
        damaged = os.path.join(output, "save", os.path.basename(step2), name)
        damage(damaged)
        dump = str(base / name / "dump")
        processes[name] = subprocess.Popen(
            pretrain_runner.command(output, *RUN_ARGS),
            cwd=ROOT,
            env=dict(os.environ, OMP_NUM_THREADS="1", **{DUMP_ENV: dump}),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        cases[name] = (output, damaged, dump)
    results = finish_runs(processes)
    return {name: (*results[name], *cases[name]) for name in DAMAGES}


@pytest.mark.parametrize("name", DAMAGES)
def test_damaged_newest_checkpoint_of_a_run_resumes_from_the_older(
    fallback_resumes, crashed_run, name
):
    returncode, stderr, output, damaged, dump = fallback_resumes[name]
    assert returncode == 0, stderr[-3000:]
    with open(os.path.join(output, "log.txt"), encoding="utf-8") as log:
        text = log.read()
    (warning,) = [
        line for line in text.splitlines() if "cannot resume from" in line
    ]
    assert f"cannot resume from {damaged}: " in warning
    older = os.path.join(output, "save", os.path.basename(crashed_run[1]))
    assert f"Loading a checkpoint from {older}" in text
    # Steps 1 and 2 of the first process, 2 and 3 of the second, then
    # steps 2 to 4 again from the step-1 checkpoint.
    steps = [step["step"] for step in logged_steps(output)]
    assert steps == [1, 2, 2, 3, 2, 3, 4]
    # Every fallback ends with the same parameters.
    reference = load_dump(fallback_resumes["student.ckpt"][-1])
    assert_same_state(reference, load_dump(dump))


def test_refusals_on_resume(
    pretrain_runner, finished_run, crashed_run, tmp_path
):
    """Changed options, and checkpoints none of which can be resumed."""
    cases = {
        "lr": (finished_run, ["--lr=0.002"]),
        "fewer_steps": (finished_run, ["--total_steps=3"]),  # replaces 4
        "accumulation": (finished_run, ["--grad_accumulation_factor=2"]),
        "nested": (finished_run, ["--contrastive_loss={temperature: 0.1}"]),
        "no_meta": (crashed_run[0], []),
        "all_damaged": (crashed_run[0], []),
    }
    folders, extra = {}, {}
    for name, (source, args) in cases.items():
        folders[name] = copy_run(source, tmp_path / name)
        extra[name] = args
    for path in glob.glob(os.path.join(folders["no_meta"], "save", "CKPT+*")):
        os.remove(os.path.join(path, "CKPT.yaml"))
    damaged = sorted(
        glob.glob(os.path.join(folders["all_damaged"], "save", "CKPT+*"))
    )
    for path in damaged:
        truncate(os.path.join(path, "student.ckpt"))
    processes = {}
    for name in cases:
        given = {arg.split("=")[0] for arg in extra[name]}
        args = [arg for arg in RUN_ARGS if arg.split("=")[0] not in given]
        processes.update(
            start_runs(
                pretrain_runner, {name: folders[name]}, *args, *extra[name]
            )
        )
    results = finish_runs(processes)
    lines = {name: error_line(*results[name]) for name in cases}
    assert "lr was 0.001 in the checkpoint" in lines["lr"]
    assert ", now 0.002" in lines["lr"]
    assert "total_steps was 4 in the checkpoint" in lines["fewer_steps"]
    assert "it can only grow on resume" in lines["fewer_steps"]
    assert "grad_accumulation_factor was 1" in lines["accumulation"]
    assert "contrastive_loss.temperature was 0.5" in lines["nested"]
    assert "none with a valid CKPT.yaml" in lines["no_meta"]
    assert (
        f"cannot resume from {damaged[-1]}/student.ckpt"
        in (lines["all_damaged"])
    )
    for line in lines.values():
        assert "pass --restart" in line
    # Refused at start-up: nothing trained, the checkpoints left as they
    # were, and hyperparams.yaml still the resumed run's, not the refused.
    assert logged_steps(folders["lr"]) == logged_steps(finished_run)
    for name in ("lr", "fewer_steps", "accumulation", "nested"):
        with open(os.path.join(folders[name], "hyperparams.yaml")) as f:
            kept = f.read()
        with open(os.path.join(finished_run, "hyperparams.yaml")) as f:
            assert kept == f.read(), name


def test_restart_moves_the_checkpoints_aside(
    pretrain_runner, crashed_run, tmp_path
):
    output = copy_run(crashed_run[0], tmp_path / "out")
    for path in glob.glob(os.path.join(output, "save", "CKPT+*")):
        os.remove(os.path.join(path, "CKPT.yaml"))
    result = pretrain_runner.run(output, *RUN_ARGS, "--restart")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--restart: the checkpoints of the previous run are moved to" in (
        result.stderr
    )
    (moved,) = glob.glob(os.path.join(output, "save.before-restart-*"))
    assert len(glob.glob(os.path.join(moved, "CKPT+*"))) == 2
    steps = [step["step"] for step in logged_steps(output)]
    assert steps[-4:] == [1, 2, 3, 4]  # afresh


@pytest.mark.parametrize("source", ["finished", "crashed"])
def test_larger_total_steps_rebuilds_the_schedule(
    pretrain_runner, finished_run, crashed_run, tmp_path, source
):
    origin = finished_run if source == "finished" else crashed_run[0]
    output = copy_run(origin, tmp_path / "out")
    before = len(logged_steps(output))
    result = pretrain_runner.run(output, "--total_steps=7", *RUN_ARGS[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(output, "log.txt"), encoding="utf-8") as log:
        assert "total_steps extended from 4 to 7" in log.read()
    resumed = logged_steps(output)[before:]
    steps = [step["step"] for step in resumed]
    assert steps[-1] == 7
    expected = lrs_of_one_cycle(7, steps)
    assert [step["lr"] for step in resumed] == pytest.approx(expected)
    # And the extended run's checkpoint now holds the new total: the
    # same command again trains nothing more and is not refused.
    again = pretrain_runner.run(output, "--total_steps=7", *RUN_ARGS[1:])
    assert again.returncode == 0, again.stderr[-3000:]
