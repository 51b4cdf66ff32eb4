"""Augmentations: SpecAugment masks, teacher shift, additive noise.

Also the noise files' stream that feeds AddNoise (NoiseStream).
"""

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from s3l_plugin.augment import NoiseAugment, RandomShift, SpecAugment
from s3l_plugin.config import ConfigError
from s3l_plugin.data.noise import NoiseStream


def _seeded(seed):
    return torch.Generator().manual_seed(seed)


def _padded_feats(lengths, num_bins=40, value=5.0):
    """Constant ``value`` inside each utterance, 0 in the padding."""
    max_len = int(max(lengths))
    frames = torch.arange(max_len).view(1, -1, 1)
    inside = frames < torch.tensor(lengths).view(-1, 1, 1)
    return torch.where(inside, value, 0.0).expand(-1, -1, num_bins).clone()


def _runs(mask):
    """(start, width) of each run of True in a 1-D bool tensor."""
    padded = F.pad(mask.int(), (1, 1))
    edges = padded.diff()
    starts = (edges == 1).nonzero().flatten()
    ends = (edges == -1).nonzero().flatten()
    return list(zip(starts.tolist(), (ends - starts).tolist()))


# ---- SpecAugment ------------------------------------------------------------


def test_spec_augment_is_identity_in_eval_mode():
    feats = _padded_feats([300, 120])
    augment = SpecAugment().eval()
    assert torch.equal(augment(feats, torch.tensor([300, 120])), feats)


def test_spec_augment_keeps_padding_and_input():
    lengths = [800, 300, 40]
    feats = _padded_feats(lengths)
    original = feats.clone()
    augment = SpecAugment()
    generator = _seeded(0)
    for _ in range(20):
        masked = augment(feats, torch.tensor(lengths), generator)
        for b, length in enumerate(lengths):
            assert bool((masked[b, length:] == 0).all())
    assert torch.equal(feats, original)


def test_frequency_masks_are_zero_bins_of_bounded_width():
    augment = SpecAugment(freq_masks=1, freq_width=20, time_mask_ratio=0.0)
    feats = _padded_feats([50] * 64, num_bins=128)
    masked = augment(feats, torch.full((64,), 50), _seeded(1))
    widths = []
    for utterance in masked:
        zero_bins = (utterance == 0).all(dim=0)
        # A bin is either untouched everywhere or zero everywhere.
        assert bool(((utterance == 5.0).all(dim=0) | zero_bins).all())
        runs = _runs(zero_bins)
        assert len(runs) <= 1
        widths.append(runs[0][1] if runs else 0)
    assert max(widths) <= 20
    assert len(set(widths)) > 5  # widths are drawn, not fixed
    # Two masks: at most two runs, at most 40 bins.
    masks = SpecAugment(freq_width=20).frequency_mask(500, 128, "cpu")
    assert int(masks.sum(1).max()) <= 40
    assert all(len(_runs(row)) <= 2 for row in masks)


def test_frequency_mask_widths_cover_zero_to_max_and_fit():
    augment = SpecAugment(freq_masks=1, freq_width=20)
    masks = augment.frequency_mask(4000, 30, "cpu", _seeded(2))
    widths = masks.sum(1)
    assert int(widths.min()) == 0 and int(widths.max()) == 20
    # Masks touching the last bin exist (placement spans the whole range).
    assert bool(masks[:, -1].any()) and bool(masks[:, 0].any())


def test_time_masks_stay_inside_and_follow_each_length():
    lengths = [800, 300, 39]
    augment = SpecAugment(freq_masks=0, time_mask_ratio=0.025, time_width=20)
    feats = _padded_feats(lengths)
    generator = _seeded(3)
    masked_values = []
    for _ in range(30):
        masked = augment(feats, torch.tensor(lengths), generator)
        for b, length in enumerate(lengths):
            assert bool((masked[b, length:] == 0).all())
            hit = (masked[b, :length] != 5.0).any(dim=1)
            num_masks = int(0.025 * length)
            assert int(hit.sum()) <= 20 * num_masks
            assert all(width <= 20 * num_masks for _, width in _runs(hit))
            masked_values.append(masked[b, :length][hit].flatten())
        # 39 frames: int(0.975) = 0 masks.
        assert torch.equal(masked[2], feats[2])
    values = torch.cat(masked_values)
    assert values.numel() > 10000
    assert abs(float(values.mean())) < 0.05
    assert float(values.std()) == pytest.approx(1.0, abs=0.05)


def test_time_mask_widths_are_bounded_per_mask():
    augment = SpecAugment(time_mask_ratio=0.025, time_width=20)
    # 40 frames: exactly one mask, so the run is that mask's width.
    masks = augment.time_mask(torch.full((3000,), 40), 40, _seeded(4))
    widths = masks.sum(1)
    assert int(widths.min()) == 0 and int(widths.max()) == 20
    assert all(len(_runs(row)) <= 1 for row in masks[:200])


# ---- RandomShift ------------------------------------------------------------


def test_random_shift_draws_cover_the_range():
    shift = RandomShift(unit=8, max_shift=16)
    generator = _seeded(5)
    draws = [shift.draw(generator) for _ in range(400)]
    values = {value for pair in draws for value in pair}
    assert values == set(range(17))
    assert all(isinstance(value, int) for value in values)


def test_pad_shifts_each_utterance_and_pads_after_its_end():
    shift = RandomShift(unit=8, max_shift=16)
    lengths = torch.tensor([50, 20])
    feats = torch.randn(2, 50, 3)
    feats[1, 20:] = 7.0  # garbage past the end must not survive
    padded, new_lengths, left, right = shift.pad(feats, lengths, 2, 3)
    assert (left, right) == (2, 3)
    assert padded.shape == (2, 50 + 8 * 5, 3)
    assert new_lengths.tolist() == [50 + 40, 20 + 40]
    for b, length in enumerate(lengths.tolist()):
        assert torch.equal(padded[b, 16 : 16 + length], feats[b, :length])
        assert bool((padded[b, :16] == 0).all())
        assert bool((padded[b, 16 + length :] == 0).all())


def test_pad_draws_when_not_given():
    shift = RandomShift(unit=8, max_shift=16)
    feats = torch.randn(2, 30, 3)
    lengths = torch.tensor([30, 10])
    generator = _seeded(6)
    for _ in range(20):
        padded, new_lengths, left, right = shift.pad(
            feats, lengths, generator=generator
        )
        assert 0 <= left <= 16 and 0 <= right <= 16
        assert padded.shape[1] == 30 + 8 * (left + right)
        assert torch.equal(new_lengths, lengths + 8 * (left + right))


@pytest.mark.parametrize("left, right", [(0, 0), (3, 0), (0, 5), (16, 16)])
def test_pad_then_crop_realigns_a_downsampled_output(left, right):
    """An exact x8 encoder (valid 8-frame pooling) sees the same frames."""
    shift = RandomShift(unit=8, max_shift=16)
    lengths = torch.tensor([64, 40])
    feats = torch.randn(2, 64, 5)
    feats[1, 40:] = 0.0

    def encoder(x):
        return F.avg_pool1d(x.transpose(1, 2), 8).transpose(1, 2)

    padded, new_lengths, left, right = shift.pad(feats, lengths, left, right)
    cropped = shift.crop(encoder(padded), left, right)
    expected = encoder(feats)
    assert cropped.shape == expected.shape
    torch.testing.assert_close(cropped, expected)
    out_lengths = new_lengths // 8 - left - right
    assert torch.equal(out_lengths, lengths // 8)


def test_crop_of_unit_shift_returns_the_input():
    shift = RandomShift(unit=1, max_shift=4)
    feats = torch.randn(3, 10, 2)
    padded, _, left, right = shift.pad(feats, torch.full((3,), 10), 4, 2)
    assert torch.equal(shift.crop(padded, left, right), feats)


# ---- NoiseAugment -----------------------------------------------------------


def _tones(batch, num_samples, seed=0):
    generator = torch.Generator().manual_seed(seed)
    time = torch.arange(num_samples) / 16000
    freqs = 200 + 800 * torch.rand(batch, 1, generator=generator)
    return 0.5 * torch.sin(2 * math.pi * freqs * time)


def _measured_snr(clean, noisy):
    """SNR of ``noisy`` taking its projection on ``clean`` as the speech."""
    scale = (noisy * clean).sum() / (clean * clean).sum()
    speech = scale * clean
    return 20 * math.log10(speech.norm() / (noisy - speech).norm())


@pytest.fixture
def noise_csv(tmp_path):
    """A noise collection of two short noises (shorter than the speech)."""
    rng = np.random.default_rng(0)
    rows = ["ID,duration,wav,wav_format,wav_opts"]
    for index, num_samples in enumerate((4000, 6000)):
        noise = (0.1 * rng.standard_normal(num_samples)).astype(np.float32)
        sf.write(tmp_path / f"noise{index}.wav", noise, 16000)
        rows.append(
            f"noise{index},{num_samples / 16000},"
            f"$noise_folder/noise{index}.wav,wav,"
        )
    path = tmp_path / "noise.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path), {"noise_folder": str(tmp_path)}


def test_noise_with_prob_zero_or_in_eval_is_identity():
    wavs = _tones(3, 8000)
    lengths = torch.tensor([1.0, 0.7, 0.5])
    assert torch.equal(NoiseAugment(prob=0.0)(wavs, lengths), wavs)
    assert torch.equal(NoiseAugment(prob=1.0).eval()(wavs, lengths), wavs)


def test_noise_with_prob_one_changes_every_utterance_not_padding():
    wavs = _tones(4, 8000)
    lengths = torch.tensor([1.0, 0.75, 0.5, 0.25])
    for b, relative in enumerate(lengths.tolist()):
        wavs[b, int(relative * 8000) :] = 0.0
    noisy = NoiseAugment(prob=1.0)(wavs, lengths)
    for b, relative in enumerate(lengths.tolist()):
        end = int(relative * 8000)
        assert bool((noisy[b, :end] != wavs[b, :end]).all())
        assert bool((noisy[b, end:] == 0).all())


def test_noise_probability_is_per_utterance():
    wavs = _tones(400, 400)
    noisy = NoiseAugment(prob=0.5)(wavs, torch.ones(400), _seeded(7))
    changed = (noisy != wavs).any(dim=1).float()
    assert 0.4 < float(changed.mean()) < 0.6


def test_white_noise_snr():
    wavs = _tones(4, 16000)
    noisy = NoiseAugment(prob=1.0, snr_low=10.0, snr_high=10.0)(
        wavs, torch.ones(4)
    )
    for clean, mixed in zip(wavs, noisy):
        assert _measured_snr(clean, mixed) == pytest.approx(10.0, abs=1.0)


def test_noise_from_a_csv_has_the_requested_snr(noise_csv):
    csv_file, replacements = noise_csv
    augment = NoiseAugment(
        csv_file,
        prob=1.0,
        snr_low=10.0,
        snr_high=10.0,
        replacements=replacements,
    )
    wavs = _tones(3, 16000, seed=1)
    lengths = torch.tensor([1.0, 0.8, 0.6])
    for b, relative in enumerate(lengths.tolist()):
        wavs[b, int(relative * 16000) :] = 0.0
    noisy = augment(wavs, lengths)
    for b, relative in enumerate(lengths.tolist()):
        end = int(relative * 16000)
        snr = _measured_snr(wavs[b, :end], noisy[b, :end])
        assert snr == pytest.approx(10.0, abs=2.0)
        assert bool((noisy[b, end:] == 0).all())
    # The SNR range is honoured at 0 dB as well.
    loud = NoiseAugment(
        csv_file, prob=1.0, snr_low=0.0, snr_high=0.0, replacements=replacements
    )(wavs[:1], torch.ones(1))
    assert _measured_snr(wavs[0], loud[0]) == pytest.approx(0.0, abs=2.0)


# ---- NoiseStream: the noise files fed to AddNoise ----------------------------


def _write_csv(folder, paths):
    rows = ["ID,duration,wav,wav_format,wav_opts"]
    rows += [f"n{index},1.0,{path},wav," for index, path in enumerate(paths)]
    path = folder / "noise.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _ramp_csv(folder, lengths=(3000, 20000)):
    """Noises whose samples tell where they were cut: 1e-4 * (index + 1)."""
    paths = []
    for index, num_samples in enumerate(lengths):
        path = folder / f"ramp{index}.wav"
        sf.write(path, 1e-4 * (np.arange(num_samples) + 1), 16000, "FLOAT")
        paths.append(path)
    return _write_csv(folder, paths)


def test_noise_stream_goes_through_add_noise_public_argument(noise_csv):
    csv_file, replacements = noise_csv
    augment = NoiseAugment(csv_file, prob=1.0, replacements=replacements)
    augment(_tones(2, 8000), torch.ones(2))
    add_noise = augment.add_noise
    assert add_noise.csv_file is None
    assert add_noise.noise_funct is augment.noise_stream
    # None of AddNoise's private lazy-loader attributes is set.
    for name in ("data_loader", "noise_data", "resampler"):
        assert not hasattr(add_noise, name)
    assert augment.noise_stream.get_state()["position"] == 2


def test_noise_stream_is_seeded_and_leaves_global_generators(noise_csv):
    csv_file, replacements = noise_csv
    wavs = torch.zeros(3, 9000)

    def draws(seed):
        stream = NoiseStream(csv_file, seed=seed, replacements=replacements)
        return [stream(wavs) for _ in range(3)]

    before = torch.get_rng_state()
    first, again, other = draws(1), draws(1), draws(2)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_noise_stream_crops_long_and_loops_short_noises(tmp_path):
    csv_file = _ramp_csv(tmp_path, lengths=(3000, 20000))
    stream = NoiseStream(csv_file, seed=0)
    ramp = 1e-4 * (torch.arange(20000) + 1)
    for _ in range(4):
        noise = stream(torch.zeros(2, 8000, 1))
        assert noise.shape == (2, 8000, 1)
        for row in noise[:, :, 0]:
            steps = row.diff()
            if bool((steps > 0).all()):  # the long noise: a cut of it
                start = round(float(row[0]) / 1e-4) - 1
                assert torch.allclose(row, ramp[start : start + 8000])
            else:  # the short one, looped: period 3000
                assert torch.allclose(row[3000:], row[:-3000])


def test_noise_stream_cache_is_bounded_and_changes_nothing(tmp_path):
    csv_file = _ramp_csv(tmp_path)
    cached = NoiseStream(csv_file, seed=3)
    uncached = NoiseStream(csv_file, seed=3, cache_mb=0)
    for _ in range(3):
        wavs = torch.zeros(2, 5000)
        assert torch.equal(cached(wavs), uncached(wavs))
    assert len(cached.cache) == 2
    assert uncached.cache == {} and uncached.cached_bytes == 0


def test_noise_stream_skips_bad_files_with_one_warning(tmp_path, caplog):
    good = tmp_path / "good.wav"
    sf.write(good, 0.1 * np.ones(4000), 16000)
    resampled = tmp_path / "8k.wav"
    sf.write(resampled, 0.1 * np.ones(2000), 8000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"not audio at all")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(4000), 16000)
    csv_file = _write_csv(
        tmp_path, [good, corrupt, resampled, silent, tmp_path / "missing.wav"]
    )
    stream = NoiseStream(csv_file, seed=0)
    augment = NoiseAugment(prob=1.0)
    augment.add_noise.noise_funct = stream
    with caplog.at_level("WARNING"):
        for _ in range(6):  # several passes over the collection
            noisy = augment(_tones(2, 3000), torch.ones(2))
            assert bool(torch.isfinite(noisy).all())
    assert stream.skipped_files == 3
    for bad in ("corrupt.wav", "silent.wav", "missing.wav"):
        warned = [r for r in caplog.records if bad in r.getMessage()]
        assert len(warned) == 1, bad
    assert not any("Traceback" in r.getMessage() for r in caplog.records)


def test_noise_stream_without_usable_file_is_one_clear_error(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"not audio at all")
    csv_file = _write_csv(tmp_path, [corrupt, tmp_path / "missing.wav"])
    stream = NoiseStream(csv_file, seed=0)
    with pytest.raises(ConfigError, match="none of its 2 noise files"):
        stream(torch.zeros(1, 100))


def test_spec_augment_returns_the_time_mask_it_applied():
    from s3l_plugin.pretraining import masked_output_frames

    augment = SpecAugment(freq_masks=0, time_mask_ratio=0.05, time_width=20)
    feats = torch.randn(2, 400, 8)
    generator = torch.Generator().manual_seed(0)
    masked, mask = augment(
        feats, torch.tensor([400, 200]), generator, return_time_mask=True
    )
    assert mask.shape == (2, 400) and mask.any()
    assert not mask[1, 200:].any()
    # Masked frames were replaced, the others kept.
    assert torch.equal(masked[~mask], feats[~mask])
    assert not torch.isclose(masked[mask], feats[mask]).all()
    # An output frame is masked when most of its centre block is.
    frames = masked_output_frames(mask, 48, unit=8, offset=10)
    blocks = mask[:, 10 : 10 + 8 * 48].reshape(2, 48, 8).float().mean(-1)
    assert torch.equal(frames, blocks >= 0.5)
    assert not augment.eval()(feats, torch.tensor([400, 200]), None, True)[
        1
    ].any()
