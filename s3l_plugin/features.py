"""Log-mel features computed per utterance, whatever the batch (METHOD.md 1).

A 20 ms hamming-windowed STFT every 10 ms, the power spectrum, 128 HTK mel
filters and a decibel scale clamped 80 dB under the utterance's maximum. Each
utterance of a padded batch gets exactly the features it would get alone: its
centre padding reflects at its own end, its maximum is taken over its own
frames, and frames past its end are 0.

Authors
 * S3L contributors 2025
"""

import warnings

import torch
import torchaudio
from torch import nn

from s3l_plugin.lengths import (
    masked_mean,
    padding_mask,
    relative_to_absolute,
    valid_mask,
)


def reflect_pad_index(lengths, max_len, pad):
    """Gather index that reflect-pads each row at its own length.

    Row ``b`` of the result indexes a ``(B, max_len)`` signal so that
    gathering gives ``pad`` reflected samples, the ``lengths[b]`` samples,
    then ``pad`` samples reflected at ``lengths[b]`` (as
    ``torch.nn.functional.pad(mode="reflect")`` on the unpadded row), then
    arbitrary in-range indices up to ``max_len + 2 * pad`` (only ever seen
    by frames past the row's end).

    Arguments
    ---------
    lengths : torch.Tensor
        (B,) long number of valid samples per row.
    max_len : int
        Padded length of the signal.
    pad : int
        Samples reflected at each end.

    Returns
    -------
    torch.Tensor
        (B, max_len + 2 * pad) long indices into each row.

    Example
    -------
    >>> reflect_pad_index(torch.tensor([4, 3]), 4, 2)
    tensor([[2, 1, 0, 1, 2, 3, 2, 1],
            [2, 1, 0, 1, 2, 1, 0, 0]])
    """
    positions = torch.arange(-pad, max_len + pad, device=lengths.device)
    positions = positions.unsqueeze(0).expand(lengths.shape[0], -1)
    last = (lengths - 1).clamp(min=0).unsqueeze(1)
    index = positions.abs()
    index = torch.where(index > last, 2 * last - index, index)
    # Beyond the reflected tail (and for rows too short to reflect) the
    # index is clamped into the row; those samples only reach frames that
    # are past the row's end, which are zeroed.
    return torch.minimum(index.clamp(min=0), last)


class MelFeatures(nn.Module):
    """Log-mel spectrogram in float32, invariant to batch padding (METHOD.md 1).

    STFT (centred, reflect padding) -> power spectrum -> HTK mel filters
    (``torchaudio.functional.melscale_fbanks``) -> ``10 log10(max(x, amin))``
    clamped at (the utterance's maximum over its valid frames - ``top_db``).
    The computation runs in float32 even under autocast: the dB scale and
    its clamp lose their meaning in bf16.

    Arguments
    ---------
    sample_rate : int
        Sampling rate of the waveforms, in Hz.
    n_fft : int
        FFT size.
    win_length : int
        Window length in samples (hamming window).
    hop_length : int
        Hop between frames in samples.
    n_mels : int
        Number of mel filters.
    f_min : float
        Lowest filter frequency, in Hz.
    f_max : float
        Highest filter frequency, in Hz.
    top_db : float
        Dynamic range kept under each utterance's maximum, in dB.
    normalize : bool
        If True, normalise each utterance to zero mean and unit variance
        per mel channel over its valid frames. The reference does not.
    pad_mode : str
        Centre padding, ``"reflect"`` (torchaudio's default) or
        ``"constant"`` (zeros, as SpeechBrain's ``STFT``).
    amin : float
        Floor of the mel power before the logarithm.

    Example
    -------
    >>> features = MelFeatures()
    >>> feats, feat_lens = features(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> feats.shape, feat_lens
    (torch.Size([2, 101, 128]), tensor([101,  51]))
    >>> bool((feats[1, 51:] == 0).all())
    True
    """

    def __init__(
        self,
        sample_rate=16000,
        n_fft=320,
        win_length=320,
        hop_length=160,
        n_mels=128,
        f_min=0.0,
        f_max=8000.0,
        top_db=80.0,
        normalize=False,
        pad_mode="reflect",
        amin=1e-10,
    ):
        super().__init__()
        if pad_mode not in ("reflect", "constant"):
            raise ValueError(
                f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}"
            )
        if win_length > n_fft:
            raise ValueError(
                f"win_length ({win_length}) must be <= n_fft ({n_fft})"
            )
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.top_db = top_db
        self.normalize = normalize
        self.pad_mode = pad_mode
        self.amin = amin
        # Not persistent: both are fixed by the arguments, so checkpoints
        # need not carry them.
        self.register_buffer(
            "window", torch.hamming_window(win_length), persistent=False
        )
        with warnings.catch_warnings():
            # With 128 HTK filters on 161 FFT bins (50 Hz apart), 8 of the
            # lowest filters fall between bins and are empty, as in the
            # reference's SpeechBrain filterbank; torchaudio warns each time.
            warnings.filterwarnings("ignore", message=".*all zero values.*")
            fbanks = torchaudio.functional.melscale_fbanks(
                n_freqs=n_fft // 2 + 1,
                f_min=f_min,
                f_max=f_max,
                n_mels=n_mels,
                sample_rate=sample_rate,
                norm=None,
                mel_scale="htk",
            )
        self.register_buffer("mel_fbanks", fbanks, persistent=False)

    def num_frames(self, num_samples):
        """Number of frames of a centred STFT of ``num_samples`` samples.

        ``1 + num_samples // hop_length`` for an even ``n_fft``.

        Arguments
        ---------
        num_samples : torch.Tensor or int
            Sample counts.

        Returns
        -------
        torch.Tensor
            Long frame counts.

        Example
        -------
        >>> MelFeatures().num_frames(torch.tensor([16000, 159, 160]))
        tensor([101,   1,   2])
        """
        num_samples = torch.as_tensor(num_samples).long()
        centred = num_samples + 2 * (self.n_fft // 2)
        return 1 + (centred - self.n_fft) // self.hop_length

    def forward(self, wavs, wav_lens=None):
        """Computes the features of a padded batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, S) waveforms.
        wav_lens : torch.Tensor, optional
            (B,) relative lengths in (0, 1]; None means all full.

        Returns
        -------
        feats : torch.Tensor
            (B, T, n_mels) float32 features, ``T = num_frames(S)``; frames
            past each utterance's length are 0.
        feat_lens : torch.Tensor
            (B,) long valid frame counts.
        """
        batch_size, max_samples = wavs.shape
        if wav_lens is None:
            num_samples = torch.full(
                (batch_size,), max_samples, device=wavs.device
            )
        else:
            num_samples = relative_to_absolute(wav_lens, max_samples)
            num_samples = num_samples.to(wavs.device).clamp(1, max_samples)
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            feats = self._log_mel(wavs.float(), num_samples)
            feat_lens = self.num_frames(num_samples)
            valid = valid_mask(feat_lens, feats.shape[1]).unsqueeze(-1)
            floor = feats.masked_fill(~valid, float("-inf")).amax(dim=(1, 2))
            feats = torch.maximum(feats, (floor - self.top_db)[:, None, None])
            if self.normalize:
                feats = _normalize_valid(feats, feat_lens)
            feats = feats.masked_fill(~valid, 0.0)
        return feats, feat_lens

    def _log_mel(self, wavs, num_samples):
        """(B, T, n_mels) unclamped dB mel energies, padding per row."""
        pad = self.n_fft // 2
        if self.pad_mode == "reflect":
            index = reflect_pad_index(num_samples, wavs.shape[1], pad)
            padded = wavs.gather(1, index)
        else:
            padded = nn.functional.pad(wavs, (pad, pad))
        # Samples past each row's padded end (its right padding: zeros, or
        # the reflection) belong to other frames only, but zeroing them
        # keeps the padded region deterministic.
        right = pad if self.pad_mode == "reflect" else 0
        end = num_samples + pad + right
        padded = padded.masked_fill(padding_mask(end, padded.shape[1]), 0.0)
        spec = torch.stft(
            padded,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=False,
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(power.transpose(1, 2), self.mel_fbanks)
        return 10.0 * torch.log10(mel.clamp(min=self.amin))


def _normalize_valid(feats, lengths, eps=1e-5):
    """Per-utterance, per-channel standardisation over the valid frames."""
    mean = masked_mean(feats, lengths)
    var = masked_mean((feats - mean).square(), lengths)
    return (feats - mean) / torch.sqrt(var + eps)
