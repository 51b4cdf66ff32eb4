"""Noise for additive-noise augmentation: synthetic noise and noise CSVs.

A noise CSV is SpeechBrain's extended CSV with the columns ``ID,duration,
wav,wav_format,wav_opts`` (``$name`` in paths is substituted), the format
of ``speechbrain.augment.time_domain.AddNoise(csv_file=...)``.
:func:`make_noise_csv` builds one from any folder of audio files (a DNS
Challenge or MUSAN noise set, or the collection
:func:`generate_noise_collection` writes) without touching the files, and
leaves out files AddNoise's own loader cannot use (one channel at one
sample rate). :class:`NoiseStream` reads such a CSV as a seeded,
checkpointed source of noise batches, given to ``AddNoise`` as its
``noise_funct``.

Command line::

    python -m s3l_plugin.data.noise NOISE_DIR CSV_PATH [--synthesize]
"""

import argparse
import contextlib
import csv
import io
import logging
import os

import numpy as np
import soundfile as sf
import torch
from speechbrain.dataio.dataio import load_data_csv

from s3l_plugin.checkpointing import PerRankState
from s3l_plugin.config import ConfigError
from s3l_plugin.data.atomic import atomic_path
from s3l_plugin.data.audio import AudioLoadError, load_audio

logger = logging.getLogger(__name__)

# Formats AddNoise's CSV loader accepts (speechbrain.dataio.legacy) that
# soundfile can also read.
NOISE_FORMATS = ("wav", "flac", "ogg", "mp3")
NOISE_CSV_HEADER = ("ID", "duration", "wav", "wav_format", "wav_opts")
_RMS = 0.1  # -20 dBFS; AddNoise rescales to the drawn SNR anyway.


def white_noise(num_samples, rng):
    """Gaussian white noise.

    Arguments
    ---------
    num_samples : int
        Length.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        float32 samples with unit variance.

    Example
    -------
    >>> noise = white_noise(16000, np.random.default_rng(0))
    >>> noise.shape, round(float(noise.std()), 1)
    ((16000,), 1.0)
    """
    return rng.standard_normal(num_samples).astype(np.float32)


def colored_noise(num_samples, exponent, rng, sample_rate=16000):
    """Noise with power spectral density proportional to ``1 / f**exponent``.

    ``exponent`` 1 gives pink noise, 2 brown (red) noise. Frequencies under
    20 Hz are flattened so the noise has no drifting DC offset.

    Arguments
    ---------
    num_samples : int
        Length.
    exponent : float
        Spectral slope.
    rng : numpy.random.Generator
        Source of randomness.
    sample_rate : int
        Sample rate in Hz.

    Returns
    -------
    numpy.ndarray
        float32 samples with unit variance.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> pink = np.abs(np.fft.rfft(colored_noise(16000, 1, rng))) ** 2
    >>> bool(pink[100:200].mean() > 10 * pink[4000:4100].mean())
    True
    """
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.fft.rfftfreq(num_samples, d=1.0 / sample_rate)
    spectrum /= np.maximum(freqs, 20.0) ** (exponent / 2.0)
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n=num_samples)
    return (noise / noise.std()).astype(np.float32)


def hum(num_samples, mains_hz, rng, sample_rate=16000, num_harmonics=8):
    """Mains hum: a fundamental and its harmonics, with a little hiss.

    Arguments
    ---------
    num_samples : int
        Length.
    mains_hz : float
        Fundamental, 50 or 60 Hz.
    rng : numpy.random.Generator
        Draws harmonic amplitudes and phases.
    sample_rate : int
        Sample rate in Hz.
    num_harmonics : int
        Harmonics including the fundamental.

    Returns
    -------
    numpy.ndarray
        float32 samples with unit variance.

    Example
    -------
    >>> noise = hum(16000, 50, np.random.default_rng(0))
    >>> int(np.argmax(np.abs(np.fft.rfft(noise))))  # 1 Hz bins: 50 Hz
    50
    """
    time = np.arange(num_samples) / sample_rate
    signal = np.zeros(num_samples)
    for harmonic in range(1, num_harmonics + 1):
        # Harmonics fall off with order; odd ones dominate (rectifiers).
        weight = (1.0 if harmonic % 2 else 0.5) / harmonic
        amplitude = weight * rng.uniform(0.5, 1.0)
        phase = rng.uniform(0, 2 * np.pi)
        signal += amplitude * np.sin(
            2 * np.pi * mains_hz * harmonic * time + phase
        )
    signal += 0.01 * rng.standard_normal(num_samples)
    return (signal / signal.std()).astype(np.float32)


def babble(talkers, num_samples, rng, min_talkers=3, max_talkers=6):
    """Babble: several talkers' speech summed.

    Arguments
    ---------
    talkers : list of list of numpy.ndarray
        For each talker, some of their utterances (float waveforms).
    num_samples : int
        Length.
    rng : numpy.random.Generator
        Draws the number of talkers, which talkers, utterance order and
        offsets.
    min_talkers : int
        Fewest talkers mixed (fewer if fewer are given).
    max_talkers : int
        Most talkers mixed.

    Returns
    -------
    numpy.ndarray
        float32 samples with unit variance.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> talkers = [[rng.standard_normal(800)] for _ in range(4)]
    >>> babble(talkers, 2000, rng).shape
    (2000,)
    """
    talkers = [utts for utts in talkers if any(len(u) for u in utts)]
    if not talkers:
        raise ValueError("babble needs at least one talker with speech")
    num_talkers = min(
        int(rng.integers(min_talkers, max_talkers + 1)), len(talkers)
    )
    chosen = rng.choice(len(talkers), size=num_talkers, replace=False)
    mix = np.zeros(num_samples)
    for talker in chosen:
        utterances = [u for u in talkers[talker] if len(u)]
        # Each talker speaks continuously: their utterances back to back,
        # in random order, entered at a random point.
        stream, length = [], 0
        while length < 2 * num_samples:
            for index in rng.permutation(len(utterances)):
                stream.append(utterances[index])
                length += len(utterances[index])
        stream = np.concatenate(stream)
        start = int(rng.integers(0, len(stream) - num_samples + 1))
        segment = stream[start : start + num_samples].astype(np.float64)
        mix += segment / max(segment.std(), 1e-8)
    return (mix / max(mix.std(), 1e-8)).astype(np.float32)


def _write_noise(path, noise, sample_rate):
    """Writes unit-variance noise at -20 dBFS RMS as 16-bit FLAC."""
    samples = np.clip(noise * _RMS, -1.0, 32767 / 32768)
    with atomic_path(path) as tmp_path:
        sf.write(tmp_path, samples, sample_rate, "PCM_16", format="FLAC")


def generate_noise_collection(
    noise_dir,
    seed=0,
    babble_talkers=None,
    sample_rate=16000,
    seconds=15.0,
    files_per_kind=4,
    babble_files=8,
):
    """Writes a synthetic noise collection as 16 kHz FLAC files.

    Kinds: ``white``, ``pink``, ``brown``, ``hum`` (alternately 50 and
    60 Hz mains with harmonics) and, given ``babble_talkers``, ``babble``
    (3 to 6 talkers). Files are named ``<kind>_<index:02d>.flac``. The
    same arguments give the same files.

    Arguments
    ---------
    noise_dir : str
        Output folder (created if needed).
    seed : int
        Seed of every random draw.
    babble_talkers : list of list of numpy.ndarray, optional
        Speech for babble, per talker (see :func:`babble`); no babble
        files without it.
    sample_rate : int
        Sample rate in Hz.
    seconds : float
        Length of each file.
    files_per_kind : int
        Files of each non-babble kind.
    babble_files : int
        Babble files.

    Returns
    -------
    list of str
        The files written.

    Example
    -------
    >>> import tempfile
    >>> paths = generate_noise_collection(
    ...     tempfile.mkdtemp(), seconds=0.1, files_per_kind=1
    ... )
    >>> [os.path.basename(p) for p in paths]
    ['white_00.flac', 'pink_00.flac', 'brown_00.flac', 'hum_00.flac']
    """
    os.makedirs(noise_dir, exist_ok=True)
    num_samples = int(round(seconds * sample_rate))
    makers = {
        "white": lambda rng, i: white_noise(num_samples, rng),
        "pink": lambda rng, i: colored_noise(num_samples, 1, rng, sample_rate),
        "brown": lambda rng, i: colored_noise(num_samples, 2, rng, sample_rate),
        "hum": lambda rng, i: hum(
            num_samples, (50, 60)[i % 2], rng, sample_rate
        ),
    }
    counts = dict.fromkeys(makers, files_per_kind)
    if babble_talkers:
        makers["babble"] = lambda rng, i: babble(
            babble_talkers, num_samples, rng
        )
        counts["babble"] = babble_files
    paths = []
    for kind_index, (kind, make) in enumerate(makers.items()):
        for index in range(counts[kind]):
            rng = np.random.default_rng([seed, kind_index, index])
            path = os.path.join(noise_dir, f"{kind}_{index:02d}.flac")
            _write_noise(path, make(rng, index), sample_rate)
            paths.append(path)
    return paths


def _noise_file_problem(path, sample_rate):
    """Says why AddNoise cannot use ``path`` (None if it can)."""
    if "$" in path:
        return "'$' in the path (AddNoise reads it as a variable)"
    try:
        info = sf.info(path)
    except Exception as error:  # soundfile raises several error types
        return f"unreadable ({error})"
    if info.frames == 0:
        return "empty (0 samples)"
    if info.channels != 1:
        return f"{info.channels} channels (AddNoise needs mono; down-mix it)"
    if info.samplerate != sample_rate:
        return (
            f"sample rate {info.samplerate} Hz, not {sample_rate} Hz "
            "(AddNoise takes one noise sample rate; resample it)"
        )
    return None


def make_noise_csv(noise_dir, csv_path, sample_rate=16000, path_prefix=None):
    """Writes an AddNoise CSV listing the audio files under ``noise_dir``.

    Every ``.wav``, ``.flac``, ``.ogg`` or ``.mp3`` file found (recursively)
    becomes a row: ``ID`` its path relative to ``noise_dir``, ``duration``
    in seconds, ``wav`` its absolute path. Files AddNoise cannot use
    (unreadable, empty, several channels, another sample rate, a ``$`` in
    the path) are left out with a warning that names them; the files
    themselves are never changed. The CSV is written atomically.

    Arguments
    ---------
    noise_dir : str
        Folder of noise files.
    csv_path : str
        CSV to write.
    sample_rate : int
        The sample rate files must have (AddNoise's ``noise_sample_rate``).
    path_prefix : str, optional
        Write paths as if ``noise_dir`` were this folder: for a folder
        about to be moved there.

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    ValueError
        If no usable audio file is found.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = generate_noise_collection(folder, seconds=0.1, files_per_kind=1)
    >>> make_noise_csv(folder, os.path.join(folder, "noise.csv"))
    4
    """
    noise_dir = os.path.abspath(noise_dir)
    if not os.path.isdir(noise_dir):
        raise FileNotFoundError(f"noise folder {noise_dir} does not exist")
    root = os.path.abspath(path_prefix) if path_prefix else noise_dir
    rows, skipped, seconds = [], 0, 0.0
    for folder, subfolders, files in os.walk(noise_dir):
        subfolders.sort()
        for name in sorted(files):
            extension = os.path.splitext(name)[1][1:].lower()
            if extension not in NOISE_FORMATS or name.startswith("."):
                continue
            path = os.path.join(folder, name)
            problem = _noise_file_problem(path, sample_rate)
            if problem:
                logger.warning("Noise file left out: %s: %s", path, problem)
                skipped += 1
                continue
            info = sf.info(path)
            relative = os.path.relpath(path, noise_dir)
            duration = info.frames / info.samplerate
            seconds += duration
            rows.append(
                (
                    relative.replace(os.sep, "/"),
                    f"{duration:.4f}",
                    os.path.join(root, relative),
                    extension,
                    "",
                )
            )
    if not rows:
        raise ValueError(
            f"{noise_dir}: no usable noise file (mono {sample_rate} Hz "
            f"{', '.join(NOISE_FORMATS)}); {skipped} left out"
        )
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(NOISE_CSV_HEADER)
    writer.writerows(rows)
    with atomic_path(csv_path) as tmp_path:
        with open(tmp_path, "w", encoding="utf-8", newline="") as out:
            out.write(text.getvalue())
    logger.info(
        "Noise CSV %s: %d files, %.1f min; %d left out",
        csv_path,
        len(rows),
        seconds / 60,
        skipped,
    )
    return len(rows)


class NoiseStream(PerRankState):
    """The files of a noise CSV as a resumable source of noise batches.

    Given to SpeechBrain's ``AddNoise`` through its public ``noise_funct``
    argument (with ``csv_file=None``): ``AddNoise`` calls it with the batch
    and only rescales what it returns to the SNR it draws. Each row of the
    batch gets the next file of the collection, in an order shuffled by
    ``seed`` and reshuffled at every pass, cropped to the batch's length at
    an offset drawn from the stream's own generator (looped from that
    offset when shorter). Nothing is drawn from the global generators, and
    the position and the generator's state are checkpointed (it is a
    :class:`~s3l_plugin.checkpointing.PerRankState`), so a resumed run adds
    the same noises as an uninterrupted one (docs/METHOD.md, 8.7).

    Files go through :func:`~s3l_plugin.data.audio.load_audio`: other
    sample rates and several channels are fixed; a file that cannot be used
    (unreadable, empty, silent, non-finite) is skipped with one warning
    naming it and counted in ``skipped_files``. A collection without any
    usable file raises :class:`~s3l_plugin.config.ConfigError` (the
    recipes end with one ``s3l: error:`` line).

    Decoded noises are kept in memory up to ``cache_mb`` megabytes (float32
    samples; the first files read fill it); the others are read again at
    each use, so memory stays bounded whatever the collection's size.

    Arguments
    ---------
    csv_file : str
        Noise CSV (``ID,duration,wav,...``; see :func:`make_noise_csv`).
    seed : int
        Seed of the order and offsets (give each DDP rank its own).
    sample_rate : int
        Sample rate of the speech.
    replacements : dict
        ``$key`` substitutions in the CSV's paths.
    cache_mb : float
        Most megabytes of decoded noise kept in memory.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.augment.time_domain import AddNoise
    >>> folder = tempfile.mkdtemp()
    >>> csv_path = os.path.join(folder, "noise.csv")
    >>> _ = generate_noise_collection(folder, seconds=0.1, files_per_kind=1)
    >>> _ = make_noise_csv(folder, csv_path)
    >>> stream = NoiseStream(csv_path, seed=0)
    >>> add_noise = AddNoise(noise_funct=stream, snr_low=5, snr_high=5)
    >>> noisy = add_noise(torch.randn(3, 2400), torch.ones(3))
    >>> stream(torch.zeros(3, 2400)).shape  # looped: the files are shorter
    torch.Size([3, 2400])
    >>> stream.get_state()["passes"], stream.get_state()["position"]
    (1, 2)
    """

    def __init__(
        self, csv_file, seed=0, sample_rate=16000, replacements={}, cache_mb=256
    ):
        super().__init__()
        rows = load_data_csv(csv_file, replacements).values()
        self.paths = [row["wav"] for row in rows]
        if not self.paths:
            raise ConfigError(f"{csv_file}: no noise file listed")
        self.csv_file = csv_file
        self.seed = seed
        self.sample_rate = sample_rate
        self.cache_bytes = int(cache_mb * 2**20)
        self.offsets = torch.Generator().manual_seed(seed)
        self.passes = 0
        self.position = 0
        self.order = self._order(0)
        self.cache = {}
        self.cached_bytes = 0
        self.unusable = set()  # indices of the files that cannot be used
        self.lengths = None  # set by utterance_lengths

    @property
    def skipped_files(self):
        """How many files of the collection were skipped as unusable."""
        return len(self.unusable)

    def __call__(self, waveforms):
        """A noise batch shaped like ``waveforms``.

        Arguments
        ---------
        waveforms : torch.Tensor
            (B, S) or (B, S, C) speech; only its shape, dtype and device
            are used.

        Returns
        -------
        torch.Tensor
            Noise of the same shape (the same noise on every channel), zero
            beyond each utterance's length (see :meth:`utterance_lengths`).
        """
        batch, num_samples = waveforms.shape[:2]
        lengths = self.lengths or [num_samples] * batch
        # Rows written in place into one zeroed tensor: padding each row
        # and stacking copied every sample twice (benchmarks/dataloader.py).
        noise = torch.zeros(batch, num_samples)
        for row, length in zip(noise, lengths):
            self._crop_into(self._next_noise(), row[: int(length)])
        noise = noise.to(device=waveforms.device, dtype=waveforms.dtype)
        if waveforms.dim() == 3:
            noise = noise.unsqueeze(2).expand_as(waveforms).contiguous()
        return noise

    @contextlib.contextmanager
    def utterance_lengths(self, lengths):
        """Within this context, noises are cut to the utterances' lengths.

        ``AddNoise`` gives ``noise_funct`` the padded batch only, and then
        measures the noise's RMS as its energy over the whole row divided by
        the utterance's length: noise in the padding would lower the SNR of
        every padded utterance.

        Arguments
        ---------
        lengths : list of int
            Samples of each utterance of the next batch.

        Yields
        ------
        None
        """
        self.lengths = list(lengths)
        try:
            yield
        finally:
            self.lengths = None

    def _order(self, passes):
        # Drawn from (seed, pass) alone: a resumed stream needs only the
        # pass number to find its order again.
        rng = np.random.default_rng([self.seed, passes])
        return rng.permutation(len(self.paths)).tolist()

    def _next_noise(self):
        while True:
            if len(self.unusable) == len(self.paths):
                raise ConfigError(
                    f"{self.csv_file}: none of its {len(self.paths)} noise "
                    "files can be used (see the warnings above)"
                )
            if self.position == len(self.order):
                self.passes += 1
                self.position = 0
                self.order = self._order(self.passes)
            index = self.order[self.position]
            self.position += 1
            noise = self._load(index)
            if noise is not None:
                return noise

    def _load(self, index):
        """The decoded noise ``index``, None if the file cannot be used."""
        if index in self.unusable:
            return None
        if index in self.cache:
            return self.cache[index]
        try:
            noise = load_audio(self.paths[index], self.sample_rate)
        except AudioLoadError as error:
            self.unusable.add(index)
            logger.warning("Skipping the noise file %s", error)
            return None
        size = noise.numel() * noise.element_size()
        if self.cached_bytes + size <= self.cache_bytes:
            self.cache[index] = noise
            self.cached_bytes += size
        return noise

    def _crop_into(self, noise, out):
        """Fills ``out`` from ``noise`` at a random offset, looped."""
        length, num_samples = noise.shape[0], out.shape[0]
        # A long noise is cropped inside itself; a short one is looped from
        # any of its samples.
        high = length - num_samples + 1 if length >= num_samples else length
        start = int(torch.randint(high, (1,), generator=self.offsets))
        written = 0
        while written < num_samples:
            piece = noise[start : start + num_samples - written]
            out[written : written + piece.shape[0]] = piece
            written += piece.shape[0]
            start = 0

    def get_state(self):
        """Pass, position in the pass and the offsets' generator."""
        return {
            "passes": self.passes,
            "position": self.position,
            "offsets": self.offsets.get_state(),
        }

    def set_state(self, state):
        """Continues the stream where ``state`` left it."""
        self.passes = state["passes"]
        self.position = state["position"]
        self.order = self._order(self.passes)
        self.offsets.set_state(state["offsets"])


def main(argv=None):
    """Command line: builds a noise CSV, optionally synthesising noise."""
    parser = argparse.ArgumentParser(
        description="Write a SpeechBrain AddNoise CSV for a folder of noise "
        "files (e.g. DNS Challenge or MUSAN noise)."
    )
    parser.add_argument("noise_dir", help="folder of audio files")
    parser.add_argument("csv_path", help="CSV to write")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument(
        "--synthesize",
        action="store_true",
        help="first write synthetic white, pink, brown and hum noise "
        "into NOISE_DIR",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.synthesize:
        paths = generate_noise_collection(
            args.noise_dir, seed=args.seed, sample_rate=args.sample_rate
        )
        logger.info("Wrote %d noise files to %s", len(paths), args.noise_dir)
    make_noise_csv(args.noise_dir, args.csv_path, args.sample_rate)


if __name__ == "__main__":
    main()
