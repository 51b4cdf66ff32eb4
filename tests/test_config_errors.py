"""Configuration mistakes stop the recipe at start-up with one clear line.

Each case runs the real command in a subprocess (all at once, to share the
start-up time) and checks that it exits with status 2, that its last line
on stderr is ``s3l: error: ...`` saying what to change, and that no
traceback is printed.
"""

import csv
import os
import shutil
import subprocess

import numpy
import pytest
import torch
from conftest import PRETRAIN_TINY_YAML, ROOT, FinetuneRunner
from hyperpyyaml import load_hyperpyyaml
from librispeech_prepare import prepare_librispeech

from s3l_plugin.config import ConfigError, check_run_options, load_yaml
from s3l_plugin.encoder import S3LEncoder, architecture
from s3l_plugin.pretrained import save_encoder

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
    "no_epoch": (
        ["--number_of_epochs=0"],
        "number_of_epochs is 0: it must be an integer >= 1",
    ),
    "negative_checkpoint_interval": (
        ["--ckpt_interval_steps=-1"],
        "ckpt_interval_steps is -1: it must be >= 0",
    ),
    "negative_lr": (["--lr=-1"], "lr is -1: it must be a number > 0"),
    "option_given_twice": (
        ["--lr=0.1", "--lr=0.2"],
        "--lr is given twice (0.1 and 0.2): give it once",
    ),
    "negative_num_workers": (
        ["--num_workers=-1"],
        "num_workers is -1: it must be an integer >= 0",
    ),
    "total_steps_not_a_number": (
        ["--total_steps=abc"],
        "total_steps is 'abc': it must be an integer >= 1",
    ),
    "skipped_share_above_one": (
        ["--max_skipped_audio_share=2"],
        "max_skipped_audio_share is 2: it must be a number from 0 to 1",
    ),
    "relative_wav_paths": (
        ["--csv_folder={tmp}/csv", "--skip_prep=True"],
        "{tmp}/csv/train.csv: {n} wav path(s) relative, e.g. ",
    ),
    "dollar_in_data_folder": (
        ["--data_folder={tmp}/a$HOME"],
        "data_folder '{tmp}/a$HOME' holds '$', which SpeechBrain's CSV "
        "reader takes for a variable",
    ),
    "dollar_in_csv": (
        ["--csv_folder={tmp}/csv", "--skip_prep=True"],
        "requires replacements which were not supplied. (SpeechBrain reads "
        "'$name' in a CSV as a variable; only $data_root",
    ),
}
if not torch.cuda.is_available():
    CASES["cuda_without_gpu"] = (
        ["--device=cuda"],
        "device cuda: no CUDA GPU is usable here",
    )


def write_csvs(corpus, folder, wav):
    """The corpus's train and dev CSVs, each ``wav`` path mapped by ``wav``.

    Returns the number of training rows.
    """
    prepare_librispeech(
        corpus,
        folder,
        tr_splits=["train-clean-100"],
        dev_splits=["dev-clean"],
        merge_lst=["train-clean-100"],
        merge_name="train.csv",
    )
    for name in ("train.csv", "dev-clean.csv"):
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(dict(row, wav=wav(row["wav"])) for row in rows)
        if name == "train.csv":
            count = len(rows)
    return count


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
        corpus = pretrain_runner.corpus
        if name == "relative_wav_paths":
            count = write_csvs(
                corpus,
                f"{tmp}/csv",
                lambda p, corpus=corpus: os.path.relpath(p, corpus),
            )
            expected = expected.replace("{n}", str(count))
        if name == "dollar_in_data_folder":
            os.symlink(corpus, f"{tmp}/a$HOME")
        if name == "dollar_in_csv":
            write_csvs(corpus, f"{tmp}/csv", lambda p: "$HOME" + p)
        has_data_folder = any(a.startswith("--data_folder") for a in extra)
        # A case that fails to fail ends soon.
        steps = [] if "--total_steps=abc" in extra else ["--total_steps=2"]
        command = pretrain_runner.command(
            output,
            *[a.format(tmp=tmp) for a in extra],
            *steps,
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


# ---- The finetuning recipe's --pretrained_path ----------------------------
# name -> text the error line must contain ({path}: the pretrained folder).
PRETRAINED_CASES = {
    "missing_folder": "Pretrained encoder not found: {path} is neither",
    "bad_json": "{path}/encoder_config.json: invalid JSON",
    "random_bytes": "--pretrained_path={path}: cannot load "
    "{path}/encoder.ckpt: it holds objects other than tensors and plain "
    "data, which are never unpickled",
    "another_architecture": "{path}/encoder.ckpt does not match the "
    "S3LEncoder architecture",
}


def damage_pretrained(name, good, folder):
    """A ``--pretrained_path`` for case ``name``, from the good ``good``."""
    if name == "missing_folder":
        return os.path.join(folder, "nowhere")
    shutil.copytree(good, folder)
    if name == "bad_json":
        with open(os.path.join(folder, "encoder_config.json"), "w") as f:
            f.write('{"d_model": 16,')
    elif name == "random_bytes":
        with open(os.path.join(folder, "encoder.ckpt"), "wb") as f:
            f.write(numpy.random.default_rng(0).bytes(4096))
    elif name == "another_architecture":
        # The JSON of a one-layer encoder beside a two-layer one's weights.
        other = os.path.join(folder, "other")
        save_encoder(S3LEncoder(**architecture("toy")), other)
        shutil.copy(os.path.join(other, "encoder_config.json"), folder)
    return folder


@pytest.fixture(scope="module")
def pretrained_failures(tiny_corpus, tiny_pretrained_encoder, tmp_path_factory):
    """Runs finetune.py on each damaged encoder concurrently."""
    base = tmp_path_factory.mktemp("pretrained_errors")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    processes = {}
    for name in PRETRAINED_CASES:
        path = damage_pretrained(
            name, tiny_pretrained_encoder, str(base / name / "pretrained")
        )
        runner = FinetuneRunner(tiny_corpus, path)
        command = runner.command(str(base / name / "out"), "--total_steps=2")
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes[name] = (process, path)
    results = {}
    for name, (process, path) in processes.items():
        _, stderr = process.communicate(timeout=300)
        results[name] = (process.returncode, stderr, path)
    return results


@pytest.mark.parametrize("name", list(PRETRAINED_CASES))
def test_bad_pretrained_path_stops_with_one_line(pretrained_failures, name):
    returncode, stderr, path = pretrained_failures[name]
    assert returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("s3l: error: ")]
    assert errors == [lines[-1]], lines[-5:]
    assert PRETRAINED_CASES[name].format(path=path) in lines[-1]


def test_overrides_are_read_as_hyperpyyaml_reads_them():
    # YAML 1.2: 1e-3 is a number (PyYAML would read the string "1e-3").
    hparams = load_yaml(PRETRAIN_TINY_YAML, "lr: 1e-3\nnumber_of_epochs: 2")
    assert hparams["lr"] == 0.001
    check_run_options(hparams, {})
    with pytest.raises(ConfigError, match="number_of_epochs is 2.5: it must"):
        load_yaml(PRETRAIN_TINY_YAML, "number_of_epochs: 2.5")
    with pytest.raises(ConfigError, match="ckpt_interval_minutes is -1"):
        check_run_options(hparams, {"ckpt_interval_minutes": -1})


def test_unknown_head_type_is_named():
    from conftest import FINETUNE_TINY_YAML

    with pytest.raises(
        ConfigError,
        match="head_type must be one of 'linear', 'conv', 'lstm'; got 'rnn'",
    ):
        load_yaml(FINETUNE_TINY_YAML, {"head_type": "rnn"})
