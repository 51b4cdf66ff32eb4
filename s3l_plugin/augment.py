"""Augmentations of S3L pretraining (METHOD.md 4).

- ``SpecAugment``: frequency and time masks on the student's features.
- ``RandomShift``: the teacher's random positional shift, and the crop that
  realigns its output with the student's.
- ``NoiseAugment``: additive noise on the student's waveforms.

All respect padding: masks and noise stay inside each utterance.
"""

import torch
import torch.nn.functional as F
from speechbrain.augment.time_domain import AddNoise
from torch import nn

from s3l_plugin.data.noise import NoiseStream
from s3l_plugin.lengths import relative_to_absolute, valid_mask, zero_padding


def _uniform_int(high, generator=None):
    """Integers uniform in ``{0, ..., high}``, elementwise (``high >= 0``)."""
    draws = torch.rand(high.shape, generator=generator, device=high.device)
    # rand < 1, but rand * (high + 1) can round up to high + 1 in float32.
    return torch.minimum((draws * (high + 1)).long(), high)


def _span_mask(starts, widths, size):
    """(B, size) bool, True inside any span [start, start + width)."""
    positions = torch.arange(size, device=starts.device)
    inside = (positions >= starts.unsqueeze(-1)) & (
        positions < (starts + widths).unsqueeze(-1)
    )
    return inside.any(dim=1)


class SpecAugment(nn.Module):
    """Frequency masks filled with 0, then time masks filled with N(0, 1).

    Per utterance: ``freq_masks`` frequency masks, each ``U{0..freq_width}``
    bins wide, placed uniformly so that they fit; then
    ``int(time_mask_ratio * length)`` time masks, each ``U{0..time_width}``
    frames wide, placed uniformly inside the utterance's valid frames. The
    count follows each utterance's own length, not the padded one, and the
    padding stays 0. Identity in eval mode. Vectorised over the batch.

    Arguments
    ---------
    freq_masks : int
        Frequency masks per utterance.
    freq_width : int
        Largest frequency mask width, in bins.
    time_mask_ratio : float
        Time masks per valid frame.
    time_width : int
        Largest time mask width, in frames.
    time_fill : str
        ``"normal"`` (N(0, 1) values) or ``"zero"``.

    Example
    -------
    >>> augment = SpecAugment()
    >>> feats = torch.ones(2, 400, 128)
    >>> feats[1, 300:] = 0.0
    >>> masked = augment(feats, torch.tensor([400, 300]))
    >>> masked.shape, bool((masked[1, 300:] == 0).all())
    (torch.Size([2, 400, 128]), True)
    >>> torch.equal(augment.eval()(feats, torch.tensor([400, 300])), feats)
    True
    """

    def __init__(
        self,
        freq_masks=2,
        freq_width=20,
        time_mask_ratio=0.025,
        time_width=20,
        time_fill="normal",
    ):
        super().__init__()
        if time_fill not in ("normal", "zero"):
            raise ValueError(f"time_fill must be normal or zero: {time_fill}")
        self.freq_masks = freq_masks
        self.freq_width = freq_width
        self.time_mask_ratio = time_mask_ratio
        self.time_width = time_width
        self.time_fill = time_fill

    def forward(self, feats, feat_lens, generator=None, return_time_mask=False):
        """Masks a batch of features (a new tensor; the input is kept).

        Arguments
        ---------
        feats : torch.Tensor
            (B, T, F) features, zero past each length.
        feat_lens : torch.Tensor
            (B,) long frame counts.
        generator : torch.Generator, optional
            Source of randomness (on ``feats``'s device).
        return_time_mask : bool
            Also return the (B, T) bool time mask (True on masked frames).

        Returns
        -------
        torch.Tensor
            (B, T, F) masked features (and the time mask if asked).
        """
        if not self.training:
            if return_time_mask:
                return feats, torch.zeros(
                    feats.shape[:2], dtype=torch.bool, device=feats.device
                )
            return feats
        batch, max_len, num_bins = feats.shape
        feat_lens = feat_lens.to(feats.device).long().clamp(0, max_len)
        freq_mask = self.frequency_mask(
            batch, num_bins, feats.device, generator
        )
        frames_mask = self.time_mask(feat_lens, max_len, generator)
        time_mask = frames_mask.unsqueeze(-1)
        masked = feats.masked_fill(freq_mask.unsqueeze(1), 0.0)
        if self.time_fill == "zero":
            masked = masked.masked_fill(time_mask, 0.0)
        else:
            noise = torch.randn(
                feats.shape, generator=generator, device=feats.device
            )
            masked = torch.where(time_mask, noise.to(feats.dtype), masked)
        return (masked, frames_mask) if return_time_mask else masked

    def frequency_mask(self, batch, num_bins, device, generator=None):
        """(B, F) bool, True on masked frequency bins.

        Arguments
        ---------
        batch : int
            Number of utterances.
        num_bins : int
            Frequency bins F.
        device : torch.device
            Where to build the mask.
        generator : torch.Generator, optional
            Source of randomness.

        Returns
        -------
        torch.Tensor

        Example
        -------
        >>> mask = SpecAugment(freq_width=5).frequency_mask(3, 40, "cpu")
        >>> mask.shape, bool(mask.sum(1).le(10).all())
        (torch.Size([3, 40]), True)
        """
        shape = (batch, self.freq_masks)
        widest = min(self.freq_width, num_bins)
        widths = _uniform_int(
            torch.full(shape, widest, device=device), generator
        )
        starts = _uniform_int(num_bins - widths, generator)
        return _span_mask(starts, widths, num_bins)

    def time_mask(self, feat_lens, max_len, generator=None):
        """(B, T) bool, True on masked frames (all inside each utterance).

        Arguments
        ---------
        feat_lens : torch.Tensor
            (B,) long frame counts (at most ``max_len``).
        max_len : int
            Padded length T.
        generator : torch.Generator, optional
            Source of randomness.

        Returns
        -------
        torch.Tensor

        Example
        -------
        >>> mask = SpecAugment().time_mask(torch.tensor([400, 100]), 400)
        >>> mask.shape, bool(mask[1, 100:].any())
        (torch.Size([2, 400]), False)
        """
        # The longest utterance has the most masks: a bound known without
        # reading the lengths back from the device.
        most = int(self.time_mask_ratio * max_len)
        # float64 like the Python bound above, so that counts <= most.
        counts = (self.time_mask_ratio * feat_lens.double()).long()
        lengths = feat_lens.unsqueeze(1).expand(-1, most)
        widest = lengths.clamp(max=self.time_width)
        widths = _uniform_int(widest, generator)
        starts = _uniform_int(lengths - widths, generator)
        slots = torch.arange(most, device=feat_lens.device)
        active = slots < counts.unsqueeze(1)
        return _span_mask(starts, widths * active, max_len)


class RandomShift(nn.Module):
    """The teacher's random positional shift, and the crop that undoes it.

    One draw per batch: ``left, right ~ U{0..max_shift}``. ``pad`` puts
    ``unit * left`` zero frames before every utterance and ``unit * right``
    after its own end; with an encoder that downsamples exactly ``unit``
    times, the output then has ``left`` extra frames at the front and
    ``right`` after each utterance, which ``crop`` removes. The draw is from
    the global torch generator (checkpointed with the run) on the CPU, so it
    never waits for the device.

    Arguments
    ---------
    unit : int
        Frames per shift unit (the encoder's downsampling).
    max_shift : int
        Largest shift, in units, on each side.

    Example
    -------
    >>> shift = RandomShift(unit=8, max_shift=16)
    >>> feats = torch.randn(2, 100, 4)
    >>> padded, lens, left, right = shift.pad(
    ...     feats, torch.tensor([100, 60]), left=2, right=1
    ... )
    >>> padded.shape[1], lens.tolist(), (left, right)
    (124, [124, 84], (2, 1))
    >>> shift.crop(torch.randn(2, 15, 3), left, right).shape
    torch.Size([2, 12, 3])
    """

    def __init__(self, unit=8, max_shift=16):
        super().__init__()
        self.unit = unit
        self.max_shift = max_shift

    def draw(self, generator=None):
        """Draws the batch's shifts.

        Arguments
        ---------
        generator : torch.Generator, optional
            A CPU generator; default the global one.

        Returns
        -------
        left, right : int
            Shifts in units, each in ``[0, max_shift]``.

        Example
        -------
        >>> left, right = RandomShift(max_shift=3).draw()
        >>> 0 <= left <= 3 and 0 <= right <= 3
        True
        """
        left, right = torch.randint(
            0, self.max_shift + 1, (2,), generator=generator
        ).tolist()
        return left, right

    def pad(self, feats, feat_lens, left=None, right=None, generator=None):
        """Shifts the batch by ``unit * left`` frames, pads ``unit * right``.

        Arguments
        ---------
        feats : torch.Tensor
            (B, T, F) features.
        feat_lens : torch.Tensor
            (B,) long frame counts.
        left, right : int, optional
            Shifts in units; drawn when not given.
        generator : torch.Generator, optional
            For the draw.

        Returns
        -------
        feats : torch.Tensor
            (B, T + unit * (left + right), F); zero outside each shifted
            utterance.
        feat_lens : torch.Tensor
            (B,) ``feat_lens + unit * (left + right)``.
        left, right : int
            The shifts, in units (output frames to crop).
        """
        if left is None or right is None:
            drawn_left, drawn_right = self.draw(generator)
            left = drawn_left if left is None else left
            right = drawn_right if right is None else right
        feat_lens = feat_lens.to(feats.device).long()
        # Zero past each end, so each utterance's right padding follows it.
        feats = zero_padding(feats, feat_lens)
        feats = F.pad(feats, (0, 0, self.unit * left, self.unit * right))
        return feats, feat_lens + self.unit * (left + right), left, right

    def crop(self, out, left, right):
        """Removes the shift from an encoder output.

        Frame ``i`` of the result is aligned with the unshifted input's
        output frame ``i``; the lengths become ``lengths - left - right``.

        Arguments
        ---------
        out : torch.Tensor
            (B, T', ...) output of the padded input.
        left, right : int
            The shifts ``pad`` returned.

        Returns
        -------
        torch.Tensor
            (B, T' - left - right, ...).

        Example
        -------
        >>> out = torch.arange(6).view(1, 6)
        >>> RandomShift().crop(out, 2, 1).tolist()
        [[2, 3, 4]]
        """
        return out[:, left : out.shape[1] - right]


class NoiseAugment(nn.Module):
    """Additive noise at a random SNR, on a random subset of utterances.

    Wraps SpeechBrain's ``AddNoise``: each utterance independently gets
    noise with probability ``prob``, at an SNR uniform in
    ``[snr_low, snr_high]`` dB (RMS over its valid samples). Noise comes
    from the files of ``csv_file`` (SpeechBrain's extended CSV: ``ID,
    duration,wav,wav_format,wav_opts``; see ``s3l_plugin.data.noise``)
    through a :class:`~s3l_plugin.data.noise.NoiseStream` given to
    ``AddNoise`` as its ``noise_funct`` (resumable, seeded by ``seed``,
    checkpointed as ``noise_stream``); ``None`` means white noise from the
    global generator. The pretraining recipe passes a noise collection (a
    generated one when none is given); white noise is a fallback for tests
    and quick runs. Padding is left untouched. Identity in eval mode.

    Arguments
    ---------
    csv_file : str, optional
        Noise CSV; ``None``: white noise.
    prob : float
        Probability that an utterance gets noise.
    snr_low, snr_high : float
        SNR range in dB.
    replacements : dict
        ``$key`` substitutions in the CSV's paths.
    seed : int
        Seed of the noise files' order and offsets.
    sample_rate : int
        Sample rate of the speech (noise files are resampled to it).
    cache_mb : float
        Most megabytes of decoded noise kept in memory.

    Example
    -------
    >>> augment = NoiseAugment(prob=1.0, snr_low=10.0, snr_high=10.0)
    >>> wavs = torch.sin(torch.arange(32000) / 10.0).repeat(2, 1)
    >>> wavs[1, 16000:] = 0.0
    >>> noisy = augment(wavs, torch.tensor([1.0, 0.5]))
    >>> bool((noisy != wavs).any(dim=1).all())
    True
    >>> bool((noisy[1, 16000:] == 0).all())  # padding untouched
    True
    >>> augment.noise_stream is None  # white noise
    True
    """

    def __init__(
        self,
        csv_file=None,
        prob=0.5,
        snr_low=0.0,
        snr_high=30.0,
        replacements={},
        seed=0,
        sample_rate=16000,
        cache_mb=256,
    ):
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1]: {prob}")
        self.prob = prob
        self.noise_stream = None
        noise_funct = torch.randn_like
        if csv_file is not None:
            self.noise_stream = NoiseStream(
                csv_file, seed, sample_rate, replacements, cache_mb
            )
            noise_funct = self.noise_stream
        self.add_noise = AddNoise(
            snr_low=snr_low, snr_high=snr_high, noise_funct=noise_funct
        )

    def forward(self, wavs, wav_lens, generator=None):
        """Adds noise to some of the utterances (a new tensor).

        Arguments
        ---------
        wavs : torch.Tensor
            (B, S) waveforms.
        wav_lens : torch.Tensor
            (B,) relative lengths in (0, 1].
        generator : torch.Generator, optional
            For choosing the utterances (AddNoise itself draws the SNRs
            from the global generator).

        Returns
        -------
        torch.Tensor
            (B, S) waveforms.
        """
        if not self.training or self.prob == 0.0:
            return wavs
        batch, num_samples = wavs.shape
        lengths = relative_to_absolute(wav_lens.to(wavs.device), num_samples)
        if self.noise_stream is None:
            noisy = self.add_noise(wavs, wav_lens)
        else:
            with self.noise_stream.utterance_lengths(lengths.tolist()):
                noisy = self.add_noise(wavs, wav_lens)
        chosen = (
            torch.rand(batch, generator=generator, device=wavs.device)
            < self.prob
        )
        inside = valid_mask(lengths, num_samples)
        return torch.where(chosen.unsqueeze(1) & inside, noisy, wavs)
