"""An interrupted pretraining run, rerun, ends exactly as an uninterrupted one.

The runs use gradient accumulation (checkpoints only at optimizer-step
boundaries), the noise collection (its position is checkpointed), dropout,
SpecAugment and the random shift (the generators are checkpointed), and
cross an epoch boundary. Parameters are compared bit for bit.
"""

import glob
import json
import os
import random
import re
import signal
import subprocess
import time

import numpy
import pytest
import soundfile
import torch
import yaml
from conftest import ROOT
from hooked_recipe import CRASH_EXIT_CODE, DUMP_ENV, SLOW_SAVE_ENV
from speechbrain.augment.time_domain import AddNoise
from speechbrain.utils.checkpoints import Checkpointer

from s3l_plugin.checkpointing import (
    STAGING_FOLDER,
    AtomicCheckpointer,
    RandomState,
)
from s3l_plugin.data.noise import NoiseStream

# 9 optimizer steps of 2 micro-batches: epoch 1 has 6 to 8 of them, so the
# run crosses into epoch 2. An intra-epoch checkpoint is due every 3
# micro-batches, i.e. at every second optimizer step.
RUN_ARGS = (
    "--total_steps=9",
    "--grad_accumulation_factor=2",
    "--ckpt_interval_steps=3",
)
CRASH_AFTER_STEPS = 5  # mid-epoch 1; the last checkpoint is at step 4


def load_dump(folder):
    return torch.load(os.path.join(folder, "rank0.pt"), weights_only=False)


def assert_same_state(expected, actual):
    for part in ("student", "teacher"):
        assert expected[part].keys() == actual[part].keys()
        for name, tensor in expected[part].items():
            assert torch.equal(tensor, actual[part][name]), f"{part}.{name}"


def logged_steps(output_folder):
    with open(os.path.join(output_folder, "log.txt"), encoding="utf-8") as f:
        return [
            json.loads(line.split("train step ", 1)[1])
            for line in f
            if "train step {" in line
        ]


@pytest.fixture(scope="module")
def uninterrupted(pretrain_runner, tmp_path_factory):
    """The reference: the same command, never interrupted."""
    base = tmp_path_factory.mktemp("uninterrupted")
    dump = str(base / "dump")
    result = pretrain_runner.run(
        str(base / "out"), *RUN_ARGS, env={DUMP_ENV: dump}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_dump(dump)
    assert state["optimizer_step"] == 9
    assert {epoch for epoch, _ in state["batches"]} == {1, 2}
    return state


def test_crashed_run_resumes_exactly(pretrain_runner, uninterrupted, tmp_path):
    output = str(tmp_path / "out")
    crashed = pretrain_runner.run(
        output,
        *RUN_ARGS,
        env={"S3L_TEST_CRASH_AFTER_STEPS": str(CRASH_AFTER_STEPS)},
    )
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-3000:]
    assert not os.path.exists(os.path.join(output, "encoder.ckpt"))
    (checkpoint,) = glob.glob(os.path.join(output, "save", "CKPT+*"))
    with open(os.path.join(checkpoint, "CKPT.yaml"), encoding="utf-8") as f:
        meta = yaml.safe_load(f)
    assert meta["end-of-epoch"] is False  # an intra-epoch checkpoint

    dump = str(tmp_path / "dump")
    resumed = pretrain_runner.run(output, *RUN_ARGS, env={DUMP_ENV: dump})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = load_dump(dump)
    assert_same_state(uninterrupted, state)
    # The resumed process trained the end of the reference's batches, in
    # the same order, starting after the checkpoint (step 4 of epoch 1).
    batches = uninterrupted["batches"]
    assert state["batches"] == batches[len(batches) - len(state["batches"]) :]
    assert len(batches) - len(state["batches"]) == 2 * 4
    steps = logged_steps(output)
    resumed_steps = [s["step"] for s in steps[CRASH_AFTER_STEPS:]]
    assert resumed_steps == list(range(5, 10))
    # The teacher was restored, not copied from the student again (the
    # copy is the update of momentum 0, at step 1 only).
    assert steps[CRASH_AFTER_STEPS]["momentum"] > 0.99


def test_killed_run_resumes_exactly(pretrain_runner, uninterrupted, tmp_path):
    output = str(tmp_path / "out")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        pretrain_runner.command(output, *RUN_ARGS),
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pattern = os.path.join(output, "save", "CKPT+*", "CKPT.yaml")
    deadline = time.monotonic() + 300
    while not glob.glob(pattern) and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint in 300 s"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # mid-epoch, maybe mid-save
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(output, "encoder.ckpt"))

    dump = str(tmp_path / "dump")
    resumed = pretrain_runner.run(output, *RUN_ARGS, env={DUMP_ENV: dump})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_state(uninterrupted, load_dump(dump))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_the_rerun_resumes_exactly(
    pretrain_runner, uninterrupted, tmp_path, signum
):
    output = str(tmp_path / "out")
    # No interval checkpoints: the one saved is the signal's.
    process = subprocess.Popen(
        pretrain_runner.command(output, *RUN_ARGS, "--ckpt_interval_steps=0"),
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    log = os.path.join(output, "log.txt")
    while process.poll() is None and not (
        os.path.exists(log) and logged_steps(output)
    ):
        assert time.monotonic() < deadline, "no optimizer step in 300 s"
        time.sleep(0.02)
    process.send_signal(signum)  # after step 1, maybe within step 2
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    name = signal.Signals(signum).name
    match = re.fullmatch(
        rf"s3l: error: stopped by {name} after optimizer step (\d+): a "
        r"checkpoint is saved in .*; rerun the same command to resume",
        lines[-1],
    )
    assert match, lines[-3:]
    stopped_at = int(match.group(1))
    assert 1 <= stopped_at < 9
    assert not os.path.exists(os.path.join(output, "encoder.ckpt"))
    (checkpoint,) = glob.glob(os.path.join(output, "save", "CKPT+*"))
    with open(os.path.join(checkpoint, "CKPT.yaml"), encoding="utf-8") as f:
        assert yaml.safe_load(f)["end-of-epoch"] is False
    with open(os.path.join(checkpoint, "brain.ckpt"), encoding="utf-8") as f:
        assert yaml.safe_load(f)["optimizer_step"] == stopped_at

    dump = str(tmp_path / "dump")
    resumed = pretrain_runner.run(output, *RUN_ARGS, env={DUMP_ENV: dump})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_state(uninterrupted, load_dump(dump))
    resumed_steps = [s["step"] for s in logged_steps(output)[stopped_at:]]
    assert resumed_steps == list(range(stopped_at + 1, 10))


def _noise_csv(folder, count=4):
    lines = ["ID,duration,wav,wav_format,wav_opts"]
    generator = numpy.random.default_rng(0)
    for index in range(count):
        path = os.path.join(folder, f"noise{index}.wav")
        soundfile.write(path, generator.standard_normal(4000) * 0.1, 16000)
        lines.append(f"noise{index},0.25,{path},wav,")
    csv_file = os.path.join(folder, "noise.csv")
    with open(csv_file, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return csv_file


@pytest.mark.parametrize(
    "batch_size, state",
    [(1, {"passes": 2, "position": 1}), (3, {"passes": 2, "position": 1})],
)
def test_noise_stream_resumes_where_it_stopped(tmp_path, batch_size, state):
    csv_file = _noise_csv(str(tmp_path))
    wavs = torch.ones(batch_size, 8000)
    lens = torch.linspace(1.0, 0.5, batch_size)

    def noise_and_rng():
        stream = NoiseStream(csv_file, seed=5)
        add_noise = AddNoise(noise_funct=stream, snr_low=0, snr_high=10)
        return add_noise, stream, RandomState()

    add_noise, stream, rng = noise_and_rng()
    for _ in range(9 // batch_size):  # 9 noises: into the third pass
        add_noise(wavs, lens)
    stream.save(str(tmp_path / "stream.ckpt"))
    rng.save(str(tmp_path / "rng.ckpt"))
    expected = [add_noise(wavs, lens) for _ in range(3)]

    add_noise, stream, rng = noise_and_rng()
    stream.load(str(tmp_path / "stream.ckpt"))
    rng.load(str(tmp_path / "rng.ckpt"))
    saved = stream.get_state()
    assert {key: saved[key] for key in state} == state
    for want in expected:
        assert torch.equal(add_noise(wavs, lens), want)


class _FailingSave:
    """A recoverable whose save dies, like a process killed mid-save."""

    def save(self, path):
        raise KeyboardInterrupt("killed")

    def load(self, path, end_of_epoch):
        pass


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path):
    layer = torch.nn.Linear(2, 2)
    failing = _FailingSave()
    # SpeechBrain's own Checkpointer: the half-written checkpoint is the
    # latest one, and recovering from it fails.
    plain = Checkpointer(tmp_path / "plain", {"layer": layer})
    plain.save_checkpoint(meta={"n": 1})
    plain.add_recoverable(
        "failing", failing, _FailingSave.load, _FailingSave.save
    )
    with pytest.raises(KeyboardInterrupt):
        plain.save_checkpoint(meta={"n": 2})
    assert plain.find_checkpoint().meta["n"] == 2
    with pytest.raises(RuntimeError, match="missing a load path"):
        plain.recover_if_possible()

    atomic = AtomicCheckpointer(tmp_path / "atomic", {"layer": layer})
    first = atomic.save_checkpoint(meta={"n": 1})
    atomic.add_recoverable(
        "failing", failing, _FailingSave.load, _FailingSave.save
    )
    with pytest.raises(KeyboardInterrupt):
        atomic.save_checkpoint(meta={"n": 2})
    assert atomic.find_checkpoint().path == first.path
    folders = sorted(os.listdir(tmp_path / "atomic"))
    assert folders == [STAGING_FOLDER, first.path.name]
    (removed,) = atomic.remove_incomplete()
    assert not os.path.exists(removed)
    assert os.listdir(tmp_path / "atomic") == [first.path.name]


def test_yaml_declares_the_atomic_checkpointer(tmp_path):
    from conftest import PRETRAIN_TINY_YAML
    from hyperpyyaml import load_hyperpyyaml

    with open(PRETRAIN_TINY_YAML, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, {"output_folder": str(tmp_path)})
    checkpointer = hparams["checkpointer"]
    assert isinstance(checkpointer, AtomicCheckpointer)
    checkpointer.add_recoverable("rng", RandomState(), optional_load=True)
    checkpoint = checkpointer.save_checkpoint()
    assert checkpoint.path.parent == tmp_path / "save"
    assert sorted(os.listdir(checkpoint.path)) == [
        "CKPT.yaml",
        "counter.ckpt",
        "rng.ckpt",
        "student.ckpt",
        "teacher.ckpt",
    ]
    assert os.listdir(tmp_path / "save" / STAGING_FOLDER) == []
    assert checkpointer.find_checkpoint().path == checkpoint.path


def _last_logged_step(output):
    log = os.path.join(output, "log.txt")
    if not os.path.exists(log):
        return 0
    steps = logged_steps(output)
    return steps[-1]["step"] if steps else 0


def test_run_killed_at_random_moments_resumes_exactly(
    pretrain_runner, uninterrupted, tmp_path
):
    """20+ kill -9s, most during a checkpoint save; then the same result.

    Every optimizer step is checkpointed, and each save pauses halfway
    through its files (``SLOW_SAVE_ENV``). A kill comes either during the
    first or second save of the process, or at a random moment once it
    trains. Once the run has made 6 of its 9 steps, the kills all fall in
    the first save (no progress), so that the run is still unfinished
    after 20 kills.
    """
    output = str(tmp_path / "out")
    marker = str(tmp_path / "saving")
    dump = str(tmp_path / "dump")
    command = pretrain_runner.command(
        output, *RUN_ARGS, "--ckpt_interval_steps=1"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.update({SLOW_SAVE_ENV: marker, DUMP_ENV: dump})
    generator = random.Random(14)
    kills = during_save = 0
    for attempt in range(40):
        if kills >= 20:
            break
        with open(tmp_path / f"stderr{attempt}", "w") as stderr:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        draw = generator.random()
        saves_to_wait = 1 if draw < 0.5 or _last_logged_step(output) >= 6 else 2
        random_moment = draw >= 0.8 and _last_logged_step(output) < 6
        start_step = _last_logged_step(output)
        seen_saves, was_saving = 0, False
        deadline = time.monotonic() + 300
        while process.poll() is None:
            assert time.monotonic() < deadline, "no progress in 300 s"
            saving = os.path.exists(marker)
            if random_moment and _last_logged_step(output) > start_step:
                time.sleep(generator.uniform(0.0, 1.0))
                break
            if saving and not was_saving:
                seen_saves += 1
                if seen_saves == saves_to_wait:
                    time.sleep(generator.uniform(0.0, 0.25))
                    break
            was_saving = saving
            time.sleep(0.005)
        if process.poll() is not None:  # ended on its own
            with open(tmp_path / f"stderr{attempt}") as stderr:
                assert process.returncode == 0, stderr.read()[-3000:]
            break
        during_save += os.path.exists(marker)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        kills += 1
        if os.path.exists(marker):
            os.remove(marker)
    assert kills >= 20
    assert during_save >= 10
    final = pretrain_runner.run(
        output, *RUN_ARGS, "--ckpt_interval_steps=1", env={DUMP_ENV: dump}
    )
    assert final.returncode == 0, final.stderr[-3000:]
    assert_same_state(uninterrupted, load_dump(dump))
