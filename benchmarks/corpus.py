"""LibriSpeech-shaped corpora for the data benchmarks, written in seconds.

``write_librispeech_corpus`` lays out ``<split>/<speaker>/<chapter>/
<speaker>-<chapter>-<utt>.flac`` with one ``<speaker>-<chapter>.trans.txt``
per chapter, as LibriSpeech does, for any number of utterances with
durations drawn like train-clean-100 (``batching.librispeech_100_durations``).
Only one FLAC per distinct duration (rounded to ``resolution`` seconds) is
encoded; every utterance is a hard link to the one of its duration (a copy
where the file system refuses links), so 281,241 utterances take a minute
and ~100 FLACs of disk, yet every path is a separate file that preparation
and loading open and decode as they would a real corpus.

The audio is pink noise at -20 dBFS: FLAC compresses it about as poorly as
speech, so decoding costs what it would on LibriSpeech.

Authors
 * S3L contributors 2025
"""

import os

import numpy as np
import soundfile as sf
from batching import librispeech_100_durations

from s3l_plugin.data.noise import colored_noise

UTTERANCES_PER_CHAPTER = 100
CHAPTERS_PER_SPEAKER = 2


def _template(folder, seconds, sample_rate, cache):
    """The FLAC of ``seconds`` of audio, encoded on first use."""
    if seconds not in cache:
        path = os.path.join(folder, f"template_{seconds:.2f}.flac")
        rng = np.random.default_rng(int(seconds * 1000))
        samples = int(round(seconds * sample_rate))
        audio = 0.1 * colored_noise(samples, 1, rng, sample_rate)
        sf.write(path, np.clip(audio, -1, 1), sample_rate, "PCM_16")
        cache[seconds] = path
    return cache[seconds]


def _link(source, target):
    try:
        os.link(source, target)
    except OSError:  # no hard links here (another file system)
        with open(source, "rb") as src, open(target, "wb") as dst:
            dst.write(src.read())


def write_librispeech_corpus(
    root,
    num_utterances,
    split="train-clean-100",
    seed=0,
    sample_rate=16000,
    resolution=0.25,
):
    """Writes a LibriSpeech-shaped split under ``root``.

    Arguments
    ---------
    root : str
        Corpus root (``<root>/<split>/...`` is written).
    num_utterances : int
        Utterances in the split.
    split : str
        Split folder name.
    seed : int
        Seed of the durations.
    sample_rate : int
        Sample rate of the FLACs.
    resolution : float
        Durations are rounded to this many seconds (one FLAC each).

    Returns
    -------
    numpy.ndarray
        The utterances' durations (seconds), in ID order.

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> durations = write_librispeech_corpus(root, 5)
    >>> sorted(os.listdir(os.path.join(root, "train-clean-100", "1000")))
    ['1000']
    >>> len(os.listdir(os.path.join(root, "train-clean-100", "1000", "1000")))
    6
    """
    durations = librispeech_100_durations(num_utterances, seed)
    durations = np.maximum(
        resolution, np.round(durations / resolution) * resolution
    )
    templates = os.path.join(root, "templates")
    os.makedirs(templates, exist_ok=True)
    cache = {}
    per_speaker = UTTERANCES_PER_CHAPTER * CHAPTERS_PER_SPEAKER
    for start in range(0, num_utterances, UTTERANCES_PER_CHAPTER):
        speaker = 1000 + start // per_speaker
        chapter = 1000 + start // UTTERANCES_PER_CHAPTER
        folder = os.path.join(root, split, str(speaker), str(chapter))
        os.makedirs(folder, exist_ok=True)
        lines = []
        stop = min(start + UTTERANCES_PER_CHAPTER, num_utterances)
        for index in range(start, stop):
            utt_id = f"{speaker}-{chapter}-{index - start:04d}"
            source = _template(
                templates, float(durations[index]), sample_rate, cache
            )
            _link(source, os.path.join(folder, utt_id + ".flac"))
            lines.append(f"{utt_id} HELLO WORLD\n")
        trans = os.path.join(folder, f"{speaker}-{chapter}.trans.txt")
        with open(trans, "w", encoding="utf-8") as trans_file:
            trans_file.writelines(lines)
    return durations
