"""Bad audio at training time: each case has one defined behaviour.

Fixable files (another sample rate, several channels) are fixed with a
warning; unusable ones (unreadable, empty, silent, non-finite, too long,
too short) are skipped, with the path and reason logged and counted, and
training goes on.
"""

import logging
import os
import re

import numpy
import pytest
import soundfile
import torch
from conftest import BAD_TRAIN_AUDIO, BAD_VALID_AUDIO, FIXED_TRAIN_AUDIO

from s3l_plugin.data import audio
from s3l_plugin.data.audio import (
    AudioLoadError,
    EmptyBatch,
    SkipBadAudioCollate,
    load_audio,
    make_audio_pipeline,
)

RATE = 16000


@pytest.fixture
def speech():
    """Two seconds of a 16 kHz chirp-like test signal."""
    t = numpy.arange(2 * RATE) / RATE
    return (0.3 * numpy.sin(2 * numpy.pi * (200 + 300 * t) * t)).astype(
        numpy.float32
    )


def write(tmp_path, name, data, rate=RATE, **kwargs):
    path = str(tmp_path / name)
    soundfile.write(path, data, rate, **kwargs)
    return path


def test_good_file_is_read_as_is(tmp_path, speech):
    path = write(tmp_path, "good.flac", speech)
    wav = load_audio(path, max_seconds=20.0, min_seconds=1.0)
    expected, _ = soundfile.read(path, dtype="float32")
    assert wav.dtype == torch.float32
    assert torch.equal(wav, torch.from_numpy(expected))


def test_corrupt_file_is_rejected(tmp_path):
    path = str(tmp_path / "corrupt.flac")
    with open(path, "wb") as f:
        f.write(b"fLaC" + bytes(range(256)) * 8)
    with pytest.raises(AudioLoadError, match=f"{path}: unreadable audio"):
        load_audio(path)


def test_missing_and_zero_byte_files_are_rejected(tmp_path):
    path = str(tmp_path / "zero.wav")
    open(path, "wb").close()
    with pytest.raises(AudioLoadError, match="unreadable audio"):
        load_audio(path)
    with pytest.raises(AudioLoadError, match="unreadable audio"):
        load_audio(str(tmp_path / "missing.flac"))


def test_empty_file_is_rejected(tmp_path):
    path = write(tmp_path, "empty.wav", numpy.zeros(0))
    with pytest.raises(AudioLoadError, match=f"{path}: empty audio"):
        load_audio(path)


def test_silent_file_is_rejected(tmp_path):
    path = write(tmp_path, "silent.flac", numpy.zeros(RATE))
    with pytest.raises(AudioLoadError, match=f"{path}: silent"):
        load_audio(path)


@pytest.mark.parametrize("value", [numpy.nan, numpy.inf])
def test_non_finite_samples_are_rejected(tmp_path, speech, value):
    speech[123] = value
    path = write(tmp_path, "nan.wav", speech, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match=f"{path}: non-finite"):
        load_audio(path)


def test_huge_samples_are_rejected(tmp_path, speech):
    speech[123] = 1e20  # finite, but the log-mel features would be NaN
    path = write(tmp_path, "huge.wav", speech, subtype="FLOAT")
    with pytest.raises(
        AudioLoadError, match=f"{path}: peak amplitude 1e\\+20 is above 1e\\+15"
    ):
        load_audio(path)


def test_too_long_and_too_short_files_are_rejected(tmp_path, speech):
    path = write(tmp_path, "two_seconds.flac", speech)
    with pytest.raises(AudioLoadError, match="2.0 s is longer than .* 1.5 s"):
        load_audio(path, max_seconds=1.5)
    with pytest.raises(AudioLoadError, match="2.00 s is shorter than .* 3"):
        load_audio(path, min_seconds=3.0)
    assert load_audio(path, max_seconds=2.0, min_seconds=2.0).shape == (
        2 * RATE,
    )


def test_other_sample_rate_is_resampled_with_one_warning(
    tmp_path, speech, caplog
):
    path = write(tmp_path, "8k.flac", speech[::2], rate=8000)
    audio._warned.clear()
    with caplog.at_level(logging.WARNING, logger=audio.__name__):
        wav = load_audio(path)
        again = load_audio(path)  # next epoch: no second warning
    assert wav.shape == (2 * RATE,)
    assert torch.equal(wav, again)
    assert caplog.messages == [
        f"{path}: sample rate 8000 Hz, resampled to 16000 Hz"
    ]
    # Resampling keeps the signal: compare with the 16 kHz original.
    error = (wav[1000:-1000] - torch.from_numpy(speech)[1000:-1000]).abs()
    assert error.max() < 0.05


def test_max_seconds_counts_after_resampling(tmp_path, speech):
    path = write(tmp_path, "44k.wav", numpy.tile(speech, 2), rate=44100)
    wav = load_audio(path, max_seconds=2.0)  # 4 s at 16 kHz: 1.45 s here
    assert abs(wav.shape[0] - round(4 * RATE * RATE / 44100)) <= 1


def test_stereo_is_down_mixed_with_one_warning(tmp_path, speech, caplog):
    stereo = numpy.stack([speech, 0.5 * speech], axis=1)
    path = write(tmp_path, "stereo.flac", stereo)
    audio._warned.clear()
    with caplog.at_level(logging.WARNING, logger=audio.__name__):
        wav = load_audio(path)
        load_audio(path)
    mono = torch.from_numpy(soundfile.read(path, dtype="float32")[0]).mean(1)
    assert torch.equal(wav, mono)
    assert caplog.messages == [f"{path}: 2 channels, down-mixed to mono"]


def test_pipeline_reports_instead_of_raising(tmp_path, speech):
    good = write(tmp_path, "good.wav", speech)
    silent = write(tmp_path, "silent.wav", numpy.zeros(RATE))
    pipeline = make_audio_pipeline(RATE, max_seconds=20.0, min_seconds=1.0)
    sig, error = pipeline(good)
    assert error == "" and sig.shape == (2 * RATE,)
    sig, error = pipeline(silent)
    assert sig.numel() == 0 and error.startswith(f"{silent}: silent")


def test_collate_drops_bad_examples_and_keeps_reasons():
    good = {"id": "a", "sig": torch.ones(4), "audio_error": ""}
    bad = {"id": "b", "sig": torch.zeros(0), "audio_error": "b: silent"}
    batch = SkipBadAudioCollate(empty_batch=True)([bad, good])
    assert batch.id == ["a"] and batch.skipped == [("b", "b: silent")]
    assert batch.sig.data.shape == (1, 4)
    empty = SkipBadAudioCollate(empty_batch=True)([bad])
    assert isinstance(empty, EmptyBatch)
    assert empty.skipped == [("b", "b: silent")] and len(empty) == 0
    assert SkipBadAudioCollate()([bad]) is None


def test_training_skips_bad_audio_and_goes_on(
    pretrain_runner, bad_audio_csvs, tmp_path
):
    output = str(tmp_path / "out")
    result = pretrain_runner.run(
        output,
        f"--csv_folder={bad_audio_csvs}",
        "--skip_prep=True",
        "--number_of_epochs=1",
        "--total_steps=100",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(output, "log.txt"), encoding="utf-8") as f:
        log = f.read()
    folder = bad_audio_csvs
    for utt_id, _, reason in BAD_TRAIN_AUDIO + BAD_VALID_AUDIO:
        # "Skipped audio <id>: <path>: <reason>", once (one epoch).
        pattern = rf"Skipped audio {utt_id}: {folder}/{utt_id}\.\w+: .*"
        found = re.findall(pattern, log)
        assert len(found) == 1, (utt_id, found)
        assert reason in found[0]
    for utt_id, warning in FIXED_TRAIN_AUDIO:
        assert re.search(rf"{folder}/{utt_id}\.flac: {warning}", log)
        assert f"Skipped audio {utt_id}" not in log
    # The corrupt file was alone in its batch: that step was skipped.
    assert "skipped: no usable audio in its batches" in log
    skipped = len(BAD_TRAIN_AUDIO) + len(BAD_VALID_AUDIO)
    with open(os.path.join(output, "train_log.txt"), encoding="utf-8") as f:
        assert f"skipped_audio: {skipped}" in f.read()
    assert f"{skipped} skipped audio files" in log
    assert os.path.getsize(os.path.join(output, "encoder.ckpt")) > 0
