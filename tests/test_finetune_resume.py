"""Finetuning is as reliable as pretraining: exact resume, skipped steps.

An interrupted finetuning run, rerun with the same command, ends with the
same parameters (bit for bit) as an uninterrupted one. The runs use
gradient accumulation, dropout and SpecAugment, and cross an epoch
boundary. Unusable audio is skipped, logged and counted as in pretraining.
"""

import glob
import os
import re

import pytest
import torch
import yaml
from conftest import BAD_TRAIN_AUDIO, BAD_VALID_AUDIO
from hooked_recipe import CRASH_ENV, CRASH_EXIT_CODE, DUMP_ENV

# 6 optimizer steps of 2 micro-batches; an intra-epoch checkpoint is due
# every 2 micro-batches (every optimizer step).
RUN_ARGS = (
    "--total_steps=6",
    "--grad_accumulation_factor=2",
    "--ckpt_interval_steps=2",
    "--dynamic_batch_sampler={max_batch_length: 40}",
)
CRASH_AFTER_STEPS = 3


def load_dump(folder):
    return torch.load(os.path.join(folder, "rank0.pt"), weights_only=False)


@pytest.fixture(scope="module")
def uninterrupted(finetune_runner, tmp_path_factory):
    """The reference: the same command, never interrupted."""
    base = tmp_path_factory.mktemp("finetune_uninterrupted")
    dump = str(base / "dump")
    result = finetune_runner.run(
        str(base / "out"), *RUN_ARGS, env={DUMP_ENV: dump}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_dump(dump)
    assert state["optimizer_step"] == 6
    epochs = [epoch for epoch, _ in state["batches"]]
    assert len(set(epochs)) >= 2, epochs
    return state


def test_crashed_finetune_resumes_exactly(
    finetune_runner, uninterrupted, tmp_path
):
    output = str(tmp_path / "out")
    crashed = finetune_runner.run(
        output,
        *RUN_ARGS,
        env={CRASH_ENV: str(CRASH_AFTER_STEPS)},
    )
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-3000:]
    checkpoints = glob.glob(os.path.join(output, "save", "CKPT+*"))
    assert checkpoints
    with open(
        os.path.join(max(checkpoints), "CKPT.yaml"), encoding="utf-8"
    ) as f:
        assert "end-of-epoch" in yaml.safe_load(f)

    # A changed option is refused (the shared training core), and the
    # refused run leaves the checkpoints as they were.
    refused = finetune_runner.run(output, *RUN_ARGS, "--lr_head=0.01")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "s3l: error: lr_head was 0.005 in the checkpoint" in (refused.stderr)

    dump = str(tmp_path / "dump")
    resumed = finetune_runner.run(output, *RUN_ARGS, env={DUMP_ENV: dump})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = load_dump(dump)
    assert state["optimizer_step"] == 6
    expected = uninterrupted["model"]
    assert expected.keys() == state["model"].keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, state["model"][name]), name
    # The resumed process trained the end of the reference's batches, in
    # the same order, after the last checkpoint (step 2: 4 micro-batches).
    batches = uninterrupted["batches"]
    assert state["batches"] == batches[len(batches) - len(state["batches"]) :]
    assert len(batches) - len(state["batches"]) == 2 * 2


def test_finetuning_skips_bad_audio_and_goes_on(
    finetune_runner, bad_audio_csvs, tmp_path
):
    output = str(tmp_path / "out")
    result = finetune_runner.run(
        output,
        f"--csv_folder={bad_audio_csvs}",
        "--skip_prep=True",
        "--number_of_epochs=1",
        "--total_steps=100",
        "--dynamic_batch_sampler={max_batch_length: 10}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(output, "log.txt"), encoding="utf-8") as f:
        log = f.read()
    for utt_id, _, reason in BAD_TRAIN_AUDIO + BAD_VALID_AUDIO:
        found = re.findall(rf"Skipped audio {utt_id}: .*", log)
        assert len(found) == 1, (utt_id, found)
        # The minimum here is the encoder's (one output frame).
        assert re.sub(r"[\d.]+ s$", "", reason) in found[0]
    # The corrupt file was alone in its batch: that step was skipped, not
    # counted.
    assert "skipped: no usable audio in its batches" in log
    with open(os.path.join(output, "train_log.txt"), encoding="utf-8") as f:
        line = f.read()
    skipped = len(BAD_TRAIN_AUDIO) + len(BAD_VALID_AUDIO)
    assert f"skipped_audio: {skipped}" in line
    assert "nonfinite_steps: 0" in line
    # The valid loss averages the batches evaluated only.
    valid_loss = float(re.search(r"valid loss: ([\d.e+-]+)", line)[1])
    assert valid_loss > 1.0, line
