"""Runtime knobs: validated once, resolved per device, reaching every layer."""

import pytest
import torch

from s3l_plugin.ctc import S3LCTC, CTCHead
from s3l_plugin.encoder import S3LEncoder, architecture
from s3l_plugin.predictor import Predictor
from s3l_plugin.pretraining import S3LStudent
from s3l_plugin.runtime import (
    DeviceResolved,
    check_choice,
    resolve_conv_impl,
    set_runtime_options,
)


def test_choices_are_checked_with_one_message():
    for knob, value in (("conv_impl", "winograd"), ("attention_backend", "x")):
        with pytest.raises(ValueError, match=f"{knob} must be one of"):
            check_choice(knob, value)
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        Predictor(8, (8,), (1,), conv_impl="matmul")
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        S3LEncoder(**architecture("toy"), attention_backend="xformers")


def test_plans_are_resolved_once_per_choice_and_device():
    calls = []

    def resolve(choice, device):
        calls.append((choice, device))
        return resolve_conv_impl(choice, device)

    plan = DeviceResolved(resolve)
    cpu = torch.device("cpu")
    for _ in range(3):
        assert plan("auto", cpu).positional == "fft"
    assert plan("direct", cpu).stack == "direct"
    assert plan("auto", torch.device("cuda")).positional == "direct"
    assert calls == [
        ("auto", cpu),
        ("direct", cpu),
        ("auto", torch.device("cuda")),
    ]


def test_set_runtime_options_reaches_every_layer_of_a_model():
    encoder = S3LEncoder(**architecture("toy", transf2_layers=2))
    student = S3LStudent(encoder, Predictor(16, (16, 16), (5, 1)))
    model = S3LCTC(encoder, CTCHead(16, channels=8, vocab_size=5))
    for whole in (student, model):
        set_runtime_options(whole, attention_backend="math", conv_impl="direct")
        knobs = {
            (knob, getattr(layer, knob))
            for layer in whole.modules()
            for knob in ("conv_impl", "attention_backend")
            if hasattr(layer, knob)
        }
        assert knobs == {("conv_impl", "direct"), ("attention_backend", "math")}
    with pytest.raises(ValueError, match="conv_impl"):
        set_runtime_options(model, conv_impl="winograd")


def test_precision_auto_follows_the_device_and_explicit_values_stay(
    monkeypatch, caplog
):
    from speechbrain.utils.run_opts import RunOptions

    from s3l_plugin import runtime
    from s3l_plugin.config import ConfigError, check_run_options
    from s3l_plugin.config import resolve_auto_precision as resolve

    for speedup, wanted in ((0.52, "fp32"), (1.05, "fp32"), (3.3, "bf16")):
        monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda s=speedup: s)
        hparams = {"precision": "auto", "device": "cpu"}
        with caplog.at_level("INFO", logger="s3l_plugin.config"):
            resolve(hparams, RunOptions())
        assert hparams["precision"] == wanted  # where Brain reads it
        assert f"precision: auto -> {wanted} on cpu" in caplog.text
        check_run_options(hparams, {})
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: True)
    for supported, wanted in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(
            runtime.torch.cuda, "is_bf16_supported", lambda s=supported: s
        )
        assert runtime.resolve_precision("auto", "cuda:0") == wanted
    # An explicit value, in the YAML or on the command line, stays.
    hparams = {"precision": "bf16", "device": "cpu"}
    resolve(hparams, RunOptions())
    assert hparams["precision"] == "bf16"
    hparams = {"precision": "auto", "device": "cpu"}
    run_opts = RunOptions(precision="fp32", overridden_args={"precision"})
    resolve(hparams, run_opts)
    assert hparams["precision"] == "auto"  # Brain takes the command line's
    with pytest.raises(ConfigError, match="precision is 'bf17'"):
        check_run_options({"precision": "bf17", "device": "cpu"}, {})
