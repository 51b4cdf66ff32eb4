"""Saving, loading and using a pretrained encoder."""

import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from speechbrain.utils.parameter_transfer import Pretrainer

from s3l_plugin.data.audio import AudioLoadError
from s3l_plugin.encoder import EncoderArchitecture, S3LEncoder, architecture
from s3l_plugin.pretrained import (
    CheckpointMismatchError,
    build_encoder,
    extract_features,
    extract_features_from_file,
    load_encoder,
    read_encoder_config,
    save_encoder,
    transfer_encoder,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster (and far more steadily) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**changes):
    return dict(architecture("toy"), transf2_layers=2, **changes)


@pytest.fixture
def pretrained(tmp_path):
    torch.manual_seed(0)
    encoder = S3LEncoder(**tiny_config()).eval()
    folder = str(tmp_path / "pretrained")
    save_encoder(encoder, folder)
    return encoder, folder


def test_save_writes_the_agreed_format(pretrained):
    encoder, folder = pretrained
    assert sorted(os.listdir(folder)) == ["encoder.ckpt", "encoder_config.json"]
    with open(os.path.join(folder, "encoder_config.json")) as fin:
        config = json.load(fin)
    assert config["d_model"] == 16 and config["transf2_layers"] == 2
    state = torch.load(os.path.join(folder, "encoder.ckpt"))
    assert state.keys() == encoder.state_dict().keys()


@pytest.mark.parametrize("from_file", [False, True])
def test_load_reproduces_outputs_exactly(pretrained, from_file):
    encoder, folder = pretrained
    path = os.path.join(folder, "encoder.ckpt") if from_file else folder
    loaded = load_encoder(path)
    assert not loaded.training
    wavs = torch.randn(2, 16000)
    wav_lens = torch.tensor([1.0, 0.6])
    with torch.no_grad():
        expected = encoder(wavs, wav_lens)
        got = loaded(wavs, wav_lens)
    assert torch.equal(expected, got)


def test_missing_files_are_named(tmp_path, pretrained):
    _, folder = pretrained
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_encoder(str(tmp_path / "nowhere"))
    os.remove(os.path.join(folder, "encoder_config.json"))
    with pytest.raises(FileNotFoundError, match="encoder_config.json"):
        load_encoder(folder)


def test_mismatched_checkpoint_gives_one_clear_line(tmp_path, pretrained):
    _, folder = pretrained
    # The config claims a wider, deeper model than the checkpoint holds.
    config = read_encoder_config(folder)
    config.update(d_ffn=64, transf2_layers=3)
    with open(os.path.join(folder, "encoder_config.json"), "w") as fout:
        json.dump(config, fout)
    with pytest.raises(CheckpointMismatchError) as error:
        load_encoder(folder)
    message = str(error.value)
    assert "\n" not in message
    assert "encoder.ckpt" in message
    assert "missing keys" in message and "transf2.layers.2" in message
    assert "shape mismatches" in message and "(32, 16) vs model (64, 16)" in (
        message
    )


def test_pretrainer_hook_loads_strictly(tmp_path, pretrained):
    encoder, folder = pretrained
    target = S3LEncoder(**tiny_config())
    pretrainer = Pretrainer(
        collect_in=str(tmp_path / "collect"),
        loadables={"encoder": target},
        paths={"encoder": os.path.join(folder, "encoder.ckpt")},
        custom_hooks={"encoder": transfer_encoder},
    )
    pretrainer.collect_files()
    pretrainer.load_collected()
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key
    wrong = Pretrainer(
        collect_in=str(tmp_path / "collect2"),
        loadables={"encoder": S3LEncoder(**tiny_config(d_ffn=48))},
        paths={"encoder": os.path.join(folder, "encoder.ckpt")},
        custom_hooks={"encoder": transfer_encoder},
    )
    wrong.collect_files()
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        wrong.load_collected()


def test_extract_features_layers_and_padding(pretrained):
    encoder, _ = pretrained
    encoder.train()
    wavs = torch.randn(2, 16000)
    feats, lengths = extract_features(encoder, wavs, torch.tensor([1.0, 0.5]))
    assert encoder.training  # mode restored
    assert len(feats) == len(lengths) == 3  # 1 + 2 transformer layers
    assert all(not f.requires_grad for f in feats)
    assert [f.shape[-1] for f in feats] == [16, 16, 16]
    # Eval mode (no dropout) and padding-independent: alone == in batch.
    last, last_len = extract_features(encoder, wavs[1, :8000], layers=[-1])
    valid = int(lengths[-1][1])
    assert valid == int(last_len[0][0])
    assert torch.allclose(feats[-1][1, :valid], last[0][0], atol=1e-5)
    with pytest.raises(IndexError, match="3 transformer layers"):
        extract_features(encoder, wavs, layers=[3])


def test_extract_features_from_file_resamples_and_downmixes(
    tmp_path, pretrained, caplog
):
    encoder, _ = pretrained
    rng = np.random.default_rng(0)
    stereo = (rng.standard_normal((8000, 2)) * 0.1).astype("float32")
    path = str(tmp_path / "stereo8k.wav")
    sf.write(path, stereo, 8000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING):
        feats, _ = extract_features_from_file(encoder, path, layers=[-1])
    assert any("resampled" in r.message for r in caplog.records)
    assert any("down-mixed" in r.message for r in caplog.records)
    mono = torch.from_numpy(stereo).mean(dim=1)
    wav = torchaudio.functional.resample(mono, 8000, 16000)
    expected, _ = extract_features(encoder, wav, layers=[-1])
    assert torch.allclose(feats[0], expected[0], atol=1e-5)


@pytest.mark.parametrize("amplitude", [1e20, np.inf])
def test_huge_or_infinite_audio_is_refused_not_nan(
    tmp_path, pretrained, amplitude
):
    encoder, _ = pretrained
    wav = np.sin(np.arange(16000) / 10.0).astype("float32")
    wav[5000] = amplitude
    path = str(tmp_path / "huge.wav")
    sf.write(path, wav, 16000, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match=f"{path}: (peak|non-finite)"):
        extract_features_from_file(encoder, path)
    with pytest.raises(ValueError, match="the features would be NaN"):
        extract_features(encoder, torch.from_numpy(wav))


def test_integer_scaled_float_audio_gives_the_same_features(
    tmp_path, pretrained
):
    # Float files written with integer scale (here int32's): the features
    # are normalised per utterance, so they are those of the [-1, 1] audio.
    encoder, _ = pretrained
    wav = np.sin(np.arange(16000) / 10.0).astype("float32") * 0.5
    path = str(tmp_path / "int_scale.wav")
    sf.write(path, wav * 2.0**31, 16000, subtype="FLOAT")
    feats, _ = extract_features_from_file(encoder, path, layers=[-1])
    expected, _ = extract_features(encoder, torch.from_numpy(wav), layers=[-1])
    assert torch.isfinite(feats[0]).all()
    assert torch.allclose(feats[0], expected[0], atol=1e-3)


def test_config_holds_architecture_only(pretrained):
    _, folder = pretrained
    config = read_encoder_config(folder)
    assert set(config) == set(EncoderArchitecture.keys())
    for knob in ("attention_backend", "conv_impl", "dropout"):
        assert knob not in config


def test_old_config_with_runtime_keys_still_loads(pretrained):
    """Files written before the knobs left encoder_config.json."""
    encoder, folder = pretrained
    path = os.path.join(folder, "encoder_config.json")
    config = read_encoder_config(folder)
    config.update(attention_backend="math", conv_impl="direct", dropout=0.3)
    with open(path, "w") as fout:
        json.dump(config, fout)
    loaded = load_encoder(folder, conv_impl="fft")
    assert (loaded.attention_backend, loaded.conv_impl) == ("auto", "fft")
    with torch.no_grad():
        wavs = torch.randn(1, 8000)
        torch.testing.assert_close(loaded(wavs), encoder(wavs))


def test_build_encoder_from_folder_or_size(pretrained):
    encoder, folder = pretrained
    built = build_encoder(folder, dropout=0.0, conv_impl="direct")
    assert built.config == encoder.config
    assert built.conv_impl == "direct"
    tiny = build_encoder()
    assert tiny.config == build_encoder(size="tiny").config
    assert (tiny.architecture.d_model, tiny.architecture.proj_dim) == (128, 64)
    assert build_encoder(size="base").architecture.d_model == 512
    with pytest.raises(ValueError, match="architecture keys"):
        build_encoder(folder, d_model=32)
    with pytest.raises(ValueError, match="Unknown encoder size"):
        build_encoder(size="huge")
