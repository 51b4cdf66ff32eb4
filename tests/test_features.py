"""MelFeatures: METHOD.md 1 features, computed per utterance whatever the batch."""

import pytest
import torch
import torchaudio

from s3l_plugin.features import MelFeatures, reflect_pad_index

SAMPLE_RATE = 16000


def reference_log_mel(wav, pad_mode="reflect", top_db=80.0):
    """Independent per-utterance computation with torchaudio's transform."""
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE,
        n_fft=320,
        win_length=320,
        hop_length=160,
        f_min=0.0,
        f_max=8000.0,
        n_mels=128,
        window_fn=torch.hamming_window,
        power=2.0,
        center=True,
        pad_mode=pad_mode,
        norm=None,
        mel_scale="htk",
    )
    db = 10.0 * torch.log10(mel(wav).clamp(min=1e-10)).T  # (T, n_mels)
    return torch.maximum(db, db.max() - top_db)


def make_batch(lengths, seed=0):
    """Noise bursts with a different loudness per utterance, zero-padded."""
    generator = torch.Generator().manual_seed(seed)
    max_len = max(lengths)
    wavs = torch.zeros(len(lengths), max_len)
    for i, length in enumerate(lengths):
        envelope = torch.linspace(0.05, 1.0, length) ** (i + 1)
        wavs[i, :length] = envelope * torch.randn(length, generator=generator)
    rel_lens = torch.tensor(lengths, dtype=torch.float) / max_len
    return wavs, rel_lens


@pytest.mark.filterwarnings("ignore:At least one mel filterbank")
@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_matches_torchaudio_per_utterance(pad_mode):
    lengths = [16000, 12345, 5000]
    wavs, rel_lens = make_batch(lengths)
    features = MelFeatures(pad_mode=pad_mode)
    feats, feat_lens = features(wavs, rel_lens)
    assert feats.dtype == torch.float32
    assert feats.shape == (3, 1 + 16000 // 160, 128)
    for i, length in enumerate(lengths):
        expected = reference_log_mel(wavs[i, :length], pad_mode)
        assert feat_lens[i] == expected.shape[0] == 1 + length // 160
        torch.testing.assert_close(
            feats[i, : feat_lens[i]], expected, atol=1e-3, rtol=0
        )
        assert (feats[i, feat_lens[i] :] == 0).all()


def test_padding_content_never_leaks():
    """Garbage past an utterance's end changes nothing (reflect, max)."""
    wavs, rel_lens = make_batch([8000, 4321])
    features = MelFeatures()
    clean, _ = features(wavs, rel_lens)
    noisy_wavs = wavs.clone()
    noisy_wavs[1, 4321:] = 100.0 * torch.randn(8000 - 4321)
    noisy, _ = features(noisy_wavs, rel_lens)
    alone, alone_lens = features(wavs[1:, :4321])
    assert torch.equal(clean, noisy)
    torch.testing.assert_close(
        clean[1, : alone_lens[0]], alone[0], atol=1e-4, rtol=0
    )


def test_top_db_clamp_uses_own_maximum():
    wavs, rel_lens = make_batch([6000, 6000])
    wavs[1] *= 1e-3  # 60 dB quieter
    feats, _ = MelFeatures()(wavs, rel_lens)
    for utterance in feats:
        assert utterance.max() - utterance.min() <= 80.0 + 1e-4
    # The 8 empty low filters sit at each utterance's own floor.
    assert feats[0].min() > feats[1].min() + 50.0


def test_float32_under_autocast():
    wavs, rel_lens = make_batch([6400, 3200])
    features = MelFeatures()
    expected, _ = features(wavs, rel_lens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, _ = features(wavs, rel_lens)
    assert feats.dtype == torch.float32
    assert torch.equal(feats, expected)


def test_normalize_per_utterance():
    wavs, rel_lens = make_batch([8000, 5000])
    feats, feat_lens = MelFeatures(n_mels=40, normalize=True)(wavs, rel_lens)
    for utterance, length in zip(feats, feat_lens):
        valid = utterance[:length]
        torch.testing.assert_close(
            valid.mean(0), torch.zeros(40), atol=1e-4, rtol=0
        )
        torch.testing.assert_close(
            valid.std(0, unbiased=False), torch.ones(40), atol=1e-3, rtol=0
        )
        assert (utterance[length:] == 0).all()


def test_num_frames_and_relative_lengths():
    features = MelFeatures()
    assert features.num_frames(torch.tensor([0, 159, 160, 16000])).tolist() == [
        1,
        1,
        2,
        101,
    ]
    wavs = torch.randn(2, 1000)
    _, feat_lens = features(wavs, torch.tensor([1.0, 0.4]))
    assert feat_lens.tolist() == [1 + 1000 // 160, 1 + 400 // 160]


def test_reflect_pad_index_matches_torch_reflect():
    signal = torch.randn(3, 50)
    lengths = torch.tensor([50, 37, 21])
    index = reflect_pad_index(lengths, 50, 16)
    for row, length in enumerate(lengths.tolist()):
        expected = torch.nn.functional.pad(
            signal[row : row + 1, :length], (16, 16), mode="reflect"
        )[0]
        gathered = signal[row].gather(0, index[row])[: length + 32]
        assert torch.equal(gathered, expected)


def test_normalised_features_ignore_a_gain():
    # SpeechBrain's AddNoise scales the clean speech by (1 - f) where the
    # reference adds the noise on top: a uniform gain, a constant dB
    # shift, which the per-utterance normalisation removes (METHOD.md 8.7).
    torch.manual_seed(0)
    wavs = torch.randn(2, 16000) * torch.linspace(0.1, 1.0, 16000)
    lens = torch.tensor([1.0, 0.6])
    features = MelFeatures(n_mels=40, normalize=True)
    clean, _ = features(wavs, lens)
    for gain in (0.5, 0.97):
        scaled, _ = features(gain * wavs, lens)
        assert torch.allclose(scaled, clean, atol=1e-3)
    # Without normalisation the gain shifts every value by 20 log10(gain).
    raw = MelFeatures(n_mels=40)
    shift = raw(0.5 * wavs, lens)[0] - raw(wavs, lens)[0]
    assert torch.allclose(
        shift[0], torch.full_like(shift[0], -6.0206), atol=1e-2
    )
