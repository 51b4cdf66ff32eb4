"""Configuration mistakes stop the recipe at start-up with one clear line.

Each case runs the real command in a subprocess (all at once, to share the
start-up time) and checks that it exits with status 2, that its last line
on stderr is ``s3l: error: ...`` saying what to change, and that no
traceback is printed.
"""

import os
import subprocess

import pytest
from conftest import PRETRAIN_TINY_YAML, ROOT
from hyperpyyaml import load_hyperpyyaml

# name -> (extra arguments, text the error line must contain)
CASES = {
    "attention_backend": (
        ["--attention_backend=foo"],
        "attention_backend must be one of 'auto', 'math', 'sdpa', "
        "'flash_attn'; got 'foo'",
    ),
    "missing_data_folder": (
        ["--data_folder={tmp}/nowhere"],
        "data_folder {tmp}/nowhere does not exist: pass "
        "--data_folder=/path/to/LibriSpeech",
    ),
    "data_folder_without_splits": (
        ["--data_folder={tmp}"],
        "LibriSpeech split 'train-clean-100' not found",
    ),
    "fp16_on_cpu": (
        ["--precision=fp16"],
        "precision fp16 is not supported on cpu: use --precision=bf16 or "
        "--precision=fp32",
    ),
    "unknown_option": (
        ["--no_such_option=1"],
        "--no_such_option is neither a run option nor a key of",
    ),
    "two_checkpoint_intervals": (
        ["--ckpt_interval_minutes=1", "--ckpt_interval_steps=5"],
        "ckpt_interval_minutes and ckpt_interval_steps are both set (1 and "
        "5): keep one",
    ),
    "checkpoint_of_another_model": (
        [],
        "does not fit this model (student: ",
    ),
}


def save_checkpoint_of_another_model(output_folder):
    """A checkpoint of a 32-wide model where the 64-wide one will run."""
    overrides = {
        "output_folder": output_folder,
        "d_model": 32,
        "encoder": {
            "conv1_channels": [32, 32, 32],
            "conv2_channels": [64, 32],
            "d_ffn": 64,
            "nhead": 2,
            "pos_conv_kernel": 16,
            "pos_conv_groups": 4,
        },
    }
    with open(PRETRAIN_TINY_YAML, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, overrides)
    return hparams["checkpointer"].save_checkpoint().path


@pytest.fixture(scope="module")
def failures(pretrain_runner, tmp_path_factory):
    """Runs every case concurrently; name -> (result, expected, details)."""
    base = tmp_path_factory.mktemp("config_errors")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    processes = {}
    for name, (extra, expected) in CASES.items():
        tmp = str(base / name)
        os.makedirs(tmp)
        output = os.path.join(tmp, "out")
        if name == "checkpoint_of_another_model":
            expected = (expected, save_checkpoint_of_another_model(output))
        has_data_folder = any(a.startswith("--data_folder") for a in extra)
        command = pretrain_runner.command(
            output,
            *[a.format(tmp=tmp) for a in extra],
            "--total_steps=2",  # a case that fails to fail ends soon
            data_folder=not has_data_folder,
        )
        processes[name] = (
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            expected,
            tmp,
        )
    results = {}
    for name, (process, expected, tmp) in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (process.returncode, stdout, stderr, expected, tmp)
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_stops_with_one_clear_line(failures, name):
    returncode, stdout, stderr, expected, tmp = failures[name]
    assert returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr and "Traceback" not in stdout
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("s3l: error: ")]
    assert errors == [lines[-1]], lines[-5:]
    if isinstance(expected, tuple):
        expected, checkpoint = expected
        assert f"the checkpoint {checkpoint} does not fit" in lines[-1]
        assert "pass --restart to move its checkpoints aside" in lines[-1]
    assert expected.format(tmp=tmp) in lines[-1]
