"""Audio loading that survives bad files.

SpeechBrain's ``read_audio`` neither resamples nor down-mixes, and a corrupt
file raises inside a DataLoader worker, which ends a multi-hour run. Here
every file is checked: fixable problems (wrong sample rate, several
channels) are fixed with a warning (once per file and process, not every
epoch), unusable files (unreadable, empty, silent, non-finite or huge
samples, too long or too short) are reported with their path and reason and dropped from
the batch by :class:`SkipBadAudioCollate`.
"""

import logging

import soundfile as sf
import torch
import torchaudio
from speechbrain.dataio.batch import PaddedBatch

logger = logging.getLogger(__name__)

# Largest accepted sample magnitude. Float audio lies within [-1, 1], but
# files scaled like integers (up to 2**31) occur and give the same features
# (they are normalised per utterance); from an amplitude of about 1e17 the
# power spectrum overflows float32 and every feature is NaN (measured with
# s3l_plugin.features.MelFeatures: finite at 1e17, NaN at 1e18).
MAX_AMPLITUDE = 1e15

# Files already warned about in this process: a fixable file is loaded
# every epoch, and one warning is enough.
_warned = set()


def _warn_once(path, problem, message, *args):
    if (path, problem) in _warned:
        return
    _warned.add((path, problem))
    logger.warning(message, *args)


class AudioLoadError(ValueError):
    """Raised when an audio file cannot be used; the message names it."""


def load_audio(path, sample_rate=16000, max_seconds=None, min_seconds=None):
    """Reads one audio file as a mono float32 waveform at ``sample_rate``.

    Arguments
    ---------
    path : str
        Audio file (any format soundfile reads: FLAC, WAV, ...).
    sample_rate : int
        Wanted sample rate; other rates are resampled, with a warning.
    max_seconds : float, optional
        Files longer than this (after resampling) are rejected.
    min_seconds : float, optional
        Files shorter than this (after resampling) are rejected.

    Returns
    -------
    torch.Tensor
        (samples,) float32.

    Raises
    ------
    AudioLoadError
        With the path and the reason: unreadable, empty, silent,
        non-finite samples or above ``MAX_AMPLITUDE``, too long or too
        short.

    Example
    -------
    >>> import tempfile, os, numpy
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(path, numpy.random.randn(8000, 2) * 0.1, 8000)
    >>> load_audio(path).shape
    torch.Size([16000])
    """
    try:
        # (samples,) for mono files: no down-mix copy.
        data, file_rate = sf.read(path, dtype="float32")
    except Exception as error:  # soundfile raises several error types
        raise AudioLoadError(f"{path}: unreadable audio ({error})") from error
    if data.shape[0] == 0:
        raise AudioLoadError(f"{path}: empty audio (0 samples)")
    wav = torch.from_numpy(data)
    # One pass for both checks (NaN and Inf propagate to the maximum):
    # separate isfinite and abs-max passes cost 1/3 of the decoding time
    # (benchmarks/dataloader.py).
    peak = wav.abs().max()
    if not torch.isfinite(peak):
        raise AudioLoadError(f"{path}: non-finite (NaN or Inf) samples")
    if float(peak) > MAX_AMPLITUDE:
        raise AudioLoadError(
            f"{path}: peak amplitude {float(peak):.3g} is above "
            f"{MAX_AMPLITUDE:.0e}: not audio (float audio lies within "
            "[-1, 1]), and its features would overflow"
        )
    if wav.dim() == 2:
        if wav.shape[1] > 1:
            _warn_once(
                path,
                "channels",
                "%s: %d channels, down-mixed to mono",
                path,
                wav.shape[1],
            )
        wav = wav.mean(dim=1)
    if file_rate != sample_rate:
        _warn_once(
            path,
            "rate",
            "%s: sample rate %d Hz, resampled to %d Hz",
            path,
            file_rate,
            sample_rate,
        )
        wav = torchaudio.functional.resample(wav, file_rate, sample_rate)
    if peak == 0:
        raise AudioLoadError(f"{path}: silent (all samples are zero)")
    if max_seconds is not None and wav.shape[0] > max_seconds * sample_rate:
        seconds = wav.shape[0] / sample_rate
        raise AudioLoadError(
            f"{path}: {seconds:.1f} s is longer than the maximum "
            f"{max_seconds} s"
        )
    # A 1 % margin: a file cut at exactly min_seconds may lose a sample or
    # two to resampling.
    if min_seconds is not None and wav.shape[0] < (
        0.99 * min_seconds * sample_rate
    ):
        seconds = wav.shape[0] / sample_rate
        raise AudioLoadError(
            f"{path}: {seconds:.2f} s is shorter than the minimum "
            f"{min_seconds} s"
        )
    return wav.contiguous()


def make_audio_pipeline(sample_rate=16000, max_seconds=None, min_seconds=None):
    """Builds a SpeechBrain dynamic item: ``wav`` path -> ``sig`` waveform.

    A file that cannot be used yields an empty waveform and its reason under
    ``audio_error``, so that :class:`SkipBadAudioCollate` drops it instead
    of the whole run stopping.

    Arguments
    ---------
    sample_rate : int
        Wanted sample rate.
    max_seconds : float, optional
        Longest accepted file.
    min_seconds : float, optional
        Shortest accepted file.

    Returns
    -------
    callable
        A ``takes("wav")``, ``provides("sig", "audio_error")`` pipeline.

    Example
    -------
    >>> pipeline = make_audio_pipeline()
    >>> sig, error = pipeline("missing.flac")
    >>> sig.shape, "unreadable" in error
    (torch.Size([0]), True)
    """
    import speechbrain as sb

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig", "audio_error")
    def audio_pipeline(wav):
        try:
            return load_audio(wav, sample_rate, max_seconds, min_seconds), ""
        except AudioLoadError as error:
            return torch.zeros(0), str(error)

    return audio_pipeline


class EmptyBatch:
    """A batch whose audio was all unusable; it only carries the reasons.

    Arguments
    ---------
    skipped : list of (str, str)
        ``(id, reason)`` of each example left out.

    Example
    -------
    >>> batch = EmptyBatch([("b", "b: empty")])
    >>> len(batch), batch.skipped
    (0, [('b', 'b: empty')])
    """

    def __init__(self, skipped):
        self.skipped = skipped
        self.id = []

    def __len__(self):
        return 0


class SkipBadAudioCollate:
    """Collates examples with ``PaddedBatch``, leaving out bad audio.

    Examples whose ``audio_error`` is set are removed; their ids and reasons
    travel with the batch as ``batch.skipped`` (a list of ``(id, reason)``)
    so that the training process, not a DataLoader worker, logs and counts
    them. A batch with nothing left is returned as ``None``, or as an
    :class:`EmptyBatch` (which keeps the reasons) with ``empty_batch=True``.

    Arguments
    ---------
    empty_batch : bool
        Return an ``EmptyBatch`` rather than None when nothing is left.

    Example
    -------
    >>> collate = SkipBadAudioCollate()
    >>> good = {"id": "a", "sig": torch.ones(3), "audio_error": ""}
    >>> bad = {"id": "b", "sig": torch.zeros(0), "audio_error": "b: empty"}
    >>> batch = collate([good, bad])
    >>> batch.id, batch.skipped
    (['a'], [('b', 'b: empty')])
    >>> collate([bad]) is None
    True
    >>> SkipBadAudioCollate(empty_batch=True)([bad]).skipped
    [('b', 'b: empty')]
    """

    def __init__(self, empty_batch=False):
        self.empty_batch = empty_batch

    def __call__(self, examples):
        """Collates the usable examples; see the class docstring."""
        skipped = [
            (ex.get("id"), ex["audio_error"])
            for ex in examples
            if ex.get("audio_error")
        ]
        kept = [ex for ex in examples if not ex.get("audio_error")]
        if not kept:
            return EmptyBatch(skipped) if self.empty_batch else None
        batch = PaddedBatch(kept)
        batch.skipped = skipped
        return batch
