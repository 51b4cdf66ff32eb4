"""Ablation switches of hparams/s3l*.yaml (issue #5 item 6), run for real.

One short pretraining run combines three ablations: fixed-size shuffled
batches (``dynamic_batching: False``), one layer in the second transformer
stack (``--transf2_layers=1``) and no EMA teacher (momentum 0.0 throughout).
"""

import json
import os

import pytest
import torch
from hooked_recipe import DUMP_ENV
from hyperpyyaml import load_hyperpyyaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATION_ARGS = (
    "--total_steps=2",
    "--dynamic_batching=False",
    "--batch_size=3",
    "--transf2_layers=1",
    "--ema_base_momentum=0.0",
    "--ema_final_momentum=0.0",
)


@pytest.fixture(scope="module")
def ablated(pretrain_runner, tmp_path_factory):
    """The ablated run's output folder and final state."""
    base = tmp_path_factory.mktemp("ablated")
    dump = str(base / "dump")
    output = str(base / "out")
    result = pretrain_runner.run(output, *ABLATION_ARGS, env={DUMP_ENV: dump})
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(os.path.join(dump, "rank0.pt"), weights_only=False)
    assert state["optimizer_step"] == 2
    with open(os.path.join(output, "log.txt"), encoding="utf-8") as f:
        log = f.read()
    return state, log


def _layers(state_dict, prefix):
    return {
        key[len(prefix) :].split(".")[0]
        for key in state_dict
        if key.startswith(prefix)
    }


def test_fixed_size_batches_log_their_padding(ablated):
    state, log = ablated
    assert "dynamic_batching is False" in log
    sizes = [len(ids) for _, ids in state["batches"]]
    assert sizes == [3, 3], sizes
    steps = [
        json.loads(line.split("train step ", 1)[1])
        for line in log.splitlines()
        if "train step {" in line
    ]
    assert [s["step"] for s in steps] == [1, 2]
    # Utterances of mixed durations in one batch: some padding.
    assert all(0.0 < s["padded_fraction"] < 1.0 for s in steps), steps


def test_transf2_layers_override_sets_the_depth(ablated):
    state, _ = ablated
    student = state["student"]
    assert _layers(student, "encoder.transf2.layers.") == {"0"}
    assert _layers(student, "encoder.transf1.layers.") == {"0"}


def test_no_ema_teacher_is_a_copy_of_the_student(ablated):
    state, log = ablated
    teacher, student = state["teacher"], state["student"]
    encoder_keys = [k for k in student if k.startswith("encoder.")]
    assert encoder_keys
    for key in encoder_keys:
        assert torch.equal(teacher[key], student[key]), key
    assert '"momentum": 0.0' in log


@pytest.mark.parametrize("name", ["s3l_tiny.yaml", "s3l.yaml"])
def test_ablation_keys_are_exposed(name):
    path = os.path.join(ROOT, "hparams", name)
    overrides = {
        "transf1_layers": 1,
        "transf2_layers": 1,
        "ema_base_momentum": 0.0,
        "ema_final_momentum": 0.0,
        "dynamic_batching": False,
        "conv_impl": "direct",
        "attention_backend": "math",
    }
    with open(path, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    encoder = hparams["encoder"]
    config = encoder.config
    assert (config["transf1_layers"], config["transf2_layers"]) == (1, 1)
    # Runtime options, not architecture: out of encoder_config.json.
    assert (encoder.conv_impl, encoder.attention_backend) == ("direct", "math")
    assert "conv_impl" not in config and "attention_backend" not in config
    teacher = hparams["teacher"]
    assert teacher.momentum(0) == teacher.momentum(5) == 0.0
    assert hparams["dynamic_batching"] is False
    assert hparams["batch_size"] > 0
