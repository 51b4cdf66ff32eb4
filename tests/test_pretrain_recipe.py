"""The pretraining recipe end to end on a tiny generated corpus.

One in-process 30-step run on the tiny model checks learning, the teacher
and the reshuffling; a subprocess runs the main command without
``--data_folder``; two short in-process runs inject non-finite losses.
"""

import glob
import json
import logging
import math
import os
import re

import pytest
import torch
from conftest import PRETRAIN_RECIPE, PRETRAIN_TINY_YAML
from hooked_recipe import load_recipe

from s3l_plugin.config import ConfigError, run_cli
from s3l_plugin.data.sources import mini_corpus_arguments, resolve_data_folder

CHECKPOINT_FILES = {
    "student.ckpt",
    "teacher.ckpt",
    "optimizer.ckpt",
    "lr_scheduler.ckpt",
    "counter.ckpt",
    "brain.ckpt",
    "random_state.ckpt",
    "noise_stream.ckpt",
    "dataloader-TRAIN.ckpt",
    "CKPT.yaml",
}


recipe = load_recipe(PRETRAIN_RECIPE)  # its Brain records its batches


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster (and far more steadily) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_steps(output_folder):
    """The per-step JSON summaries the recipe logs (log_interval=1)."""
    with open(os.path.join(output_folder, "log.txt"), encoding="utf-8") as f:
        return [
            json.loads(line.split("train step ", 1)[1])
            for line in f
            if "train step {" in line
        ]


def valid_losses(output_folder):
    """Validation loss per epoch, from train_log.txt."""
    path = os.path.join(output_folder, "train_log.txt")
    with open(path, encoding="utf-8") as f:
        return [
            float(v) for v in re.findall(r"valid loss: ([-\d.e+]+)", f.read())
        ]


def checkpoint_folders(output_folder):
    return sorted(glob.glob(os.path.join(output_folder, "save", "CKPT+*")))


@pytest.fixture(scope="module")
def fitted(tiny_corpus, tmp_path_factory):
    """30 optimizer steps of hparams/s3l_tiny.yaml's model, in-process."""
    output = str(tmp_path_factory.mktemp("fit") / "out")
    argv = [
        PRETRAIN_TINY_YAML,
        f"--data_folder={tiny_corpus}",
        f"--output_folder={output}",
        "--noprogressbar",
        "--total_steps=30",
        "--dynamic_batch_sampler={max_batch_length: 10}",
        "--log_interval=1",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    brain = recipe.main(argv)
    torch.set_num_threads(threads)
    return brain, output


def test_tiny_fit_lowers_the_loss(fitted):
    brain, output = fitted
    steps = train_steps(output)
    assert [s["step"] for s in steps] == list(range(1, 31))
    first = sum(s["loss"] for s in steps[:5]) / 5
    last = sum(s["loss"] for s in steps[-5:]) / 5
    # About 4.617 then 4.56 with this seed; chance level is ln(101) = 4.615.
    assert last < first - 0.02, (first, last)
    losses = valid_losses(output)
    assert len(losses) >= 2 and losses[-1] < losses[0], losses


def test_masked_frame_loss_predicts_only_the_masked_frames(
    tiny_corpus, tmp_path, monkeypatch
):
    from s3l_plugin.loss import ContrastiveLoss

    counted = []
    forward = ContrastiveLoss.forward

    def spy(self, predictions, targets, lengths, *args, frame_mask=None):
        counted.append(None if frame_mask is None else frame_mask.clone())
        return forward(
            self, predictions, targets, lengths, *args, frame_mask=frame_mask
        )

    monkeypatch.setattr(ContrastiveLoss, "forward", spy)
    output = str(tmp_path / "out")
    recipe.main(
        [
            PRETRAIN_TINY_YAML,
            f"--data_folder={tiny_corpus}",
            f"--output_folder={output}",
            "--noprogressbar",
            "--total_steps=3",
            "--dynamic_batch_sampler={max_batch_length: 10}",
            "--log_interval=1",
            "--loss_on_masked_frames=True",
            "--time_mask_ratio=0.05",
        ]
    )
    steps = train_steps(output)
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert all(math.isfinite(s["loss"]) for s in steps)
    train = [mask for mask in counted if mask is not None]
    # Training batches: a strict, non-empty subset of the frames counts;
    # validation (clean input, no SpecAugment): every frame.
    assert len(train) == 3 and None in counted
    assert all(0 < mask.float().mean() < 0.9 for mask in train)


def test_teacher_follows_the_student_without_training(fitted):
    brain, _ = fitted
    teacher = brain.modules.teacher
    student = brain.modules.student
    optimized = {
        id(p) for group in brain.optimizer.param_groups for p in group["params"]
    }
    teacher_params = list(teacher.parameters())
    assert teacher_params
    assert not optimized & {id(p) for p in teacher_params}
    assert optimized == {id(p) for p in student.parameters()}
    assert all(not p.requires_grad and p.grad is None for p in teacher_params)
    assert not teacher.training
    assert int(teacher.step) == brain.optimizer_step == 30
    student_encoder = dict(student.encoder.named_parameters())
    differs = [
        name
        for name, param in teacher.encoder.named_parameters()
        if not torch.equal(param, student_encoder[name])
    ]
    # The EMA lags the student: by now every weight differs.
    assert len(differs) == len(student_encoder)


def test_batches_are_reshuffled_between_epochs(fitted):
    brain, _ = fitted
    by_epoch = {}
    for epoch, ids in brain.batch_log:
        by_epoch.setdefault(epoch, []).append(tuple(ids))
    assert len(by_epoch) >= 2  # about 16 batches an epoch
    first, second = by_epoch[1], by_epoch[2]
    # Epoch 1 holds every utterance once; epoch 2 (cut by the step limit)
    # draws from the same ones, grouped and ordered anew.
    first_ids = [i for b in first for i in b]
    assert len(first_ids) == len(set(first_ids))
    assert {i for b in second for i in b} <= set(first_ids)
    assert len(second) >= 8
    assert {frozenset(b) for b in first} != {frozenset(b) for b in second}
    assert first[: len(second)] != second


def test_fit_writes_checkpoint_and_encoder(fitted):
    _, output = fitted
    (folder,) = checkpoint_folders(output)
    assert CHECKPOINT_FILES <= set(os.listdir(folder))
    for name in ("encoder.ckpt", "encoder_config.json"):
        assert os.path.getsize(os.path.join(output, name)) > 0


def test_inference_folder_loads_with_speechbrain(fitted, tiny_corpus, tmp_path):
    """``WaveformEncoder.from_hparams`` gives the saved encoder's layers."""
    from speechbrain.inference.encoders import WaveformEncoder

    from s3l_plugin.pretrained import extract_features_from_file, load_encoder

    _, output = fitted
    folder = os.path.join(output, "inference")
    card = open(os.path.join(folder, "README.md"), encoding="utf-8").read()
    assert "Optimizer steps: 30" in card and "accuracy" in card
    ssl = WaveformEncoder.from_hparams(source=folder, savedir=str(tmp_path))
    wav = sorted(
        glob.glob(
            os.path.join(tiny_corpus, "test-clean", "**", "*.flac"),
            recursive=True,
        )
    )[0]
    expected, _ = extract_features_from_file(load_encoder(output), wav)
    layers = ssl.encode_batch(ssl.load_audio(wav).unsqueeze(0), torch.ones(1))
    assert len(layers["layers"]) == len(expected)
    for got, want in zip(layers["layers"], expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_main_command_uses_the_mini_corpus_without_data_folder(
    pretrain_runner, tiny_corpus, tmp_path
):
    # The YAML has no mini_corpus_*_minutes keys (overriding an absent key
    # is an error), so the test's YAML appends them to s3l_tiny.yaml.
    yaml = tmp_path / "s3l_tiny_small_corpus.yaml"
    extra = "".join(
        f"\nmini_corpus_{key}: {value}"
        for key, value in tiny_corpus.args.items()
        if key not in ("seed", "sentences")  # both in the YAML already
    )
    with open(PRETRAIN_TINY_YAML, encoding="utf-8") as f:
        yaml.write_text(f.read() + extra + "\n")
    output = str(tmp_path / "out")
    result = pretrain_runner.run(
        output,
        f"--mini_corpus_folder={tiny_corpus}",
        f"--mini_corpus_seed={tiny_corpus.args['seed']}",
        "--total_steps=2",
        data_folder=False,
        yaml=str(yaml),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(output, "log.txt"), encoding="utf-8") as f:
        log = f.read()
    assert (
        "No --data_folder given: using the synthetic mini LibriSpeech "
        f"corpus at {tiny_corpus}"
    ) in log
    assert "already holds this mini LibriSpeech" in log  # not regenerated
    (folder,) = checkpoint_folders(output)
    assert CHECKPOINT_FILES <= set(os.listdir(folder))
    with open(os.path.join(output, "encoder_config.json")) as f:
        assert json.load(f)["d_model"] == 64
    assert os.path.getsize(os.path.join(output, "encoder.ckpt")) > 0
    assert [s["step"] for s in train_steps(output)] == [1, 2]
    # SpeechBrain copies the recipe script next to its YAML.
    assert os.path.isfile(os.path.join(output, "pretrain.py"))


def test_resolve_data_folder_passes_the_mini_corpus_arguments(
    tiny_corpus, caplog
):
    hparams = {"data_folder": None, "mini_corpus_folder": str(tiny_corpus)}
    hparams.update(
        {f"mini_corpus_{key}": value for key, value in tiny_corpus.args.items()}
    )
    assert mini_corpus_arguments(hparams) == tiny_corpus.args
    with caplog.at_level(logging.INFO):
        assert resolve_data_folder(hparams) == str(tiny_corpus)
    assert "No --data_folder given" in caplog.text
    hparams["mini_corpus_train_minutes"] = 2.0  # another corpus
    with pytest.raises(ConfigError, match="other arguments"):
        resolve_data_folder(hparams)


def _poison(monkeypatch, bad_batches):
    """Makes chosen training micro-batches non-finite: {index: kind}."""
    original = recipe.S3LPretrain.compute_objectives
    seen = []

    def compute_objectives(self, outputs, batch, stage):
        loss = original(self, outputs, batch, stage)
        if stage != recipe.sb.Stage.TRAIN:
            return loss
        seen.append(len(batch.id))
        kind = bad_batches(len(seen))
        if kind == "loss":
            loss = loss * float("nan")
        elif kind == "gradient":
            # Finite forward, NaN backward: d sqrt(x) / dx at 0 is inf,
            # times the zero factor gives NaN.
            zero = outputs.predictions.sum() * 0.0
            loss = loss + torch.sqrt(zero) * 0.0
        return loss

    monkeypatch.setattr(
        recipe.S3LPretrain, "compute_objectives", compute_objectives
    )
    return seen


def test_nonfinite_steps_are_skipped_and_counted(
    pretrain_runner, tmp_path, monkeypatch
):
    seen = _poison(monkeypatch, {2: "loss", 3: "gradient"}.get)
    output = str(tmp_path / "out")
    brain = recipe.main(pretrain_runner.argv(output, "--total_steps=4"))
    assert len(seen) == 6  # 4 optimizer steps and 2 skipped
    assert brain.optimizer_step == 4
    assert brain.nonfinite_steps == 2
    assert int(brain.modules.teacher.step) == 4
    assert brain.lr_scheduler.last_epoch == 4
    adam_steps = {
        int(state["step"]) for state in brain.optimizer.state.values()
    }
    assert adam_steps == {4}
    for param in brain.modules.student.parameters():
        assert torch.isfinite(param).all()
    for param in brain.modules.teacher.parameters():
        assert torch.isfinite(param).all()
    with open(os.path.join(output, "log.txt"), encoding="utf-8") as f:
        log = f.read()
    assert "Optimizer step 2 skipped: non-finite loss (1 in this epoch" in log
    assert "Optimizer step 2 skipped: non-finite gradient" in log
    assert (
        "nonfinite_steps: 2"
        in open(os.path.join(output, "train_log.txt"), encoding="utf-8").read()
    )


def test_run_stops_after_nonfinite_patience(
    pretrain_runner, tmp_path, monkeypatch, capsys
):
    seen = _poison(monkeypatch, lambda index: "loss")
    output = str(tmp_path / "out")
    argv = pretrain_runner.argv(
        output, "--total_steps=10", "--nonfinite_patience=2"
    )
    with pytest.raises(SystemExit) as stop:
        run_cli(recipe.main, argv)
    assert stop.value.code == 1
    assert len(seen) == 3
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith(
        "s3l: error: the loss was not finite in 3 batches of this epoch"
    )
    assert "--nonfinite_patience" in last_line
    assert not checkpoint_folders(output)
