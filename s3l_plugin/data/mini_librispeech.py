"""A synthetic mini LibriSpeech: eSpeak NG speech in LibriSpeech's layout.

It lets the recipes run end to end (data preparation, pretraining,
finetuning, evaluation) on a small machine without downloading anything.
The corpus is laid out exactly like LibriSpeech::

    OUT_DIR/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt:04d>.flac
    OUT_DIR/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt

for the splits ``train-clean-100``, ``dev-clean`` and ``test-clean``, with
disjoint speakers, plus ``SPEAKERS.txt``, ``README.txt`` and a noise
collection with its AddNoise CSV under ``noise/``. Audio is 16 kHz mono
16-bit FLAC, utterances last 1 to 20 s.

The same arguments give the same corpus, transcripts and samples alike.
eSpeak NG carries state from one utterance to the next (see
:mod:`s3l_plugin.data.espeak`), so each speaker is synthesised in a fresh
process; the result then depends neither on the number of workers nor on
what ran before.

The corpus is built in ``OUT_DIR.partial`` and renamed to ``OUT_DIR`` once
complete, with the marker ``OUT_DIR/.complete`` holding the arguments:
asking again for the same corpus is a no-op, asking for another into the
same folder is an error.

Command line::

    python -m s3l_plugin.data.mini_librispeech OUT_DIR [--seed S]
        [--train-minutes M] [--dev-minutes M] [--test-minutes M]
        [--text FILE | --sentences {random,grammar}] [--no-noise]
        [--finetuning-sets [--seconds-per-hour S]]

``--finetuning-sets`` (:func:`write_finetuning_sets`) also writes
``OUT_DIR/librispeech_finetuning/``, Libri-light's limited-supervision
layout made of training utterances, scaled down (by default one real hour
is 60 s: the "10 min" fold holds about 10 s).

Sentences are random strings of common words (``random``, the default) or
drawn from a small English grammar (``grammar``, see
:mod:`s3l_plugin.data.grammar`), where a word n-gram learned from the
training transcripts predicts the held-out ones.
"""

import argparse
import dataclasses
import glob
import hashlib
import itertools
import json
import logging
import math
import os
import pickle
import random
import shutil
import subprocess
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf
from tqdm import tqdm

from s3l_plugin.data.atomic import write_text_atomic
from s3l_plugin.data.espeak import ESpeak, Voice
from s3l_plugin.data.grammar import GrammarSentenceGenerator
from s3l_plugin.data.noise import generate_noise_collection, make_noise_csv
from s3l_plugin.data.sentences import (
    SentenceGenerator,
    load_words,
    read_text_lines,
)

logger = logging.getLogger(__name__)

TRAIN, DEV, TEST = "train-clean-100", "dev-clean", "test-clean"
SPLITS = (TRAIN, DEV, TEST)
SAMPLE_RATE = 16000
MIN_SECONDS, MAX_SECONDS = 1.0, 20.0
# eSpeak NG's English accents and its male / female voice variants: every
# speaker gets a distinct (accent, variant) pair.
ACCENTS = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
MALE_VARIANTS = tuple(f"m{i}" for i in range(1, 9))
FEMALE_VARIANTS = tuple(f"f{i}" for i in range(1, 6))
MAX_SPEAKERS = 2 * len(ACCENTS) * len(FEMALE_VARIANTS)
MARKER = ".complete"
_PARTIAL_SENTINEL = ".s3l-mini-librispeech-partial"
_FORMAT_VERSION = 1
# Per-train-speaker speech kept in memory for babble noise.
_BABBLE_SECONDS_PER_TALKER = 20.0
_MAX_CONSECUTIVE_REJECTS = 100
SENTENCE_DESIGNS = ("random", "grammar")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_WORKER_COMMAND = (
    "from s3l_plugin.data.mini_librispeech import _worker_main; _worker_main()"
)


@dataclasses.dataclass(frozen=True)
class Speaker:
    """One synthetic speaker.

    Arguments
    ---------
    speaker_id : int
        LibriSpeech-style numeric id.
    sex : str
        ``"M"`` or ``"F"`` (from the eSpeak voice variant).
    subset : str
        The split the speaker belongs to.
    chapters : tuple of int
        The speaker's chapter ids.
    voice : Voice
        How the speaker sounds.

    Example
    -------
    >>> Speaker(19, "F", "dev-clean", (198,), Voice("en+f2")).subset
    'dev-clean'
    """

    speaker_id: int
    sex: str
    subset: str
    chapters: tuple
    voice: Voice


def make_speakers(
    seed=0,
    train_speakers=24,
    dev_speakers=4,
    test_speakers=4,
    chapters_per_speaker=2,
):
    """Draws the speaker table: ids, chapters and voices, from the seed.

    Speakers alternate male and female; no two share an (accent, variant)
    pair, and each has its own rate, pitch and pitch range. Speaker and
    chapter ids are unique across splits, so the splits' speakers are
    disjoint.

    Arguments
    ---------
    seed : int
        Seed of every draw.
    train_speakers : int
        Speakers of ``train-clean-100``.
    dev_speakers : int
        Speakers of ``dev-clean``.
    test_speakers : int
        Speakers of ``test-clean``.
    chapters_per_speaker : int
        Chapters each speaker reads.

    Returns
    -------
    list of Speaker
        Train, then dev, then test speakers.

    Example
    -------
    >>> speakers = make_speakers(seed=0)
    >>> len(speakers), len({s.voice.name for s in speakers})
    (32, 32)
    """
    counts = {TRAIN: train_speakers, DEV: dev_speakers, TEST: test_speakers}
    for split, count in counts.items():
        if count < 1:
            raise ValueError(f"{split} needs at least 1 speaker, got {count}")
    total = sum(counts.values())
    if total > MAX_SPEAKERS:
        raise ValueError(
            f"{total} speakers asked for; at most {MAX_SPEAKERS} have "
            "distinct voices"
        )
    if chapters_per_speaker < 1:
        raise ValueError("chapters_per_speaker must be at least 1")
    rng = random.Random(f"speakers:{seed}")
    voices = {
        "M": list(itertools.product(ACCENTS, MALE_VARIANTS)),
        "F": list(itertools.product(ACCENTS, FEMALE_VARIANTS)),
    }
    for pairs in voices.values():
        rng.shuffle(pairs)
    speaker_ids = rng.sample(range(10, 10000), total)
    chapter_ids = rng.sample(range(10000, 300000), total * chapters_per_speaker)
    subsets = [split for split in SPLITS for _ in range(counts[split])]
    speakers = []
    for index, subset in enumerate(subsets):
        sex = "F" if index % 2 else "M"
        accent, variant = voices[sex][index // 2]
        voice = Voice(
            name=f"{accent}+{variant}",
            rate=rng.randint(140, 195),
            pitch=rng.randint(25, 75),
            pitch_range=rng.randint(25, 85),
        )
        first = index * chapters_per_speaker
        speakers.append(
            Speaker(
                speaker_id=speaker_ids[index],
                sex=sex,
                subset=subset,
                chapters=tuple(
                    chapter_ids[first : first + chapters_per_speaker]
                ),
                voice=voice,
            )
        )
    return speakers


@dataclasses.dataclass(frozen=True)
class _SpeakerJob:
    """What one worker process synthesises: one speaker's utterances."""

    speaker: Speaker
    seconds: float
    seed: int
    text_lines: tuple  # empty: built-in sentences of `sentences`' design
    sentences: str = "random"


def _synthesize_speaker(job):
    """Synthesises a speaker's utterances until ``job.seconds`` is reached.

    Runs in a fresh process (eSpeak's state must start clean). Utterances
    outside [MIN_SECONDS, MAX_SECONDS] are dropped and replaced.

    Returns
    -------
    int
        eSpeak's sample rate.
    list of (int, str, numpy.ndarray)
        ``(chapter, transcript, int16 samples)`` per utterance.
    """
    tts = ESpeak()
    generator = make_sentence_generator(job.sentences)
    speaker = job.speaker
    utterances, seconds, rejects = [], 0.0, 0
    for attempt in itertools.count():
        if seconds >= job.seconds:
            break
        rng = random.Random(f"{job.seed}:{speaker.speaker_id}:{attempt}")
        if job.text_lines:
            transcript = job.text_lines[attempt % len(job.text_lines)]
        else:
            transcript = generator.sentence(rng)
        audio = tts.synthesize(
            transcript.lower(), speaker.voice, seed=rng.getrandbits(31)
        )
        duration = _resampled_length(len(audio), tts.sample_rate) / SAMPLE_RATE
        if not MIN_SECONDS <= duration <= MAX_SECONDS:
            rejects += 1
            if rejects >= _MAX_CONSECUTIVE_REJECTS:
                raise RuntimeError(
                    f"speaker {speaker.speaker_id}: {rejects} utterances in "
                    f"a row lasted outside {MIN_SECONDS}-{MAX_SECONDS} s "
                    f"(last: {duration:.1f} s, {transcript[:60]!r}); are "
                    "the text lines too short or too long?"
                )
            continue
        rejects = 0
        chapter = speaker.chapters[len(utterances) % len(speaker.chapters)]
        utterances.append((chapter, transcript, audio))
        seconds += duration
    return tts.sample_rate, utterances


def make_sentence_generator(sentences):
    """The generator of a sentence design (see the module docstring).

    Arguments
    ---------
    sentences : str
        ``"random"`` or ``"grammar"``.

    Returns
    -------
    SentenceGenerator or GrammarSentenceGenerator
        Has ``sentence(rng) -> str``.

    Example
    -------
    >>> type(make_sentence_generator("grammar")).__name__
    'GrammarSentenceGenerator'
    """
    if sentences == "random":
        return SentenceGenerator(load_words())
    if sentences == "grammar":
        return GrammarSentenceGenerator()
    raise ValueError(
        f"sentences must be one of {SENTENCE_DESIGNS}, got {sentences!r}"
    )


def _resampled_length(num_samples, sample_rate):
    """Samples after resampling to SAMPLE_RATE (torchaudio's count)."""
    return math.ceil(num_samples * SAMPLE_RATE / sample_rate)


class _Resampler:
    """int16 audio at any rate -> int16 audio at SAMPLE_RATE.

    torchaudio is imported here, not at module level, so that synthesis
    worker processes (which import this module) start quickly.
    """

    def __init__(self):
        self._transforms = {}

    def __call__(self, audio, sample_rate):
        import torch
        import torchaudio

        if sample_rate not in self._transforms:
            self._transforms[sample_rate] = torchaudio.transforms.Resample(
                sample_rate, SAMPLE_RATE
            )
        # The 0.9 gain leaves headroom for the resampler's overshoot.
        wav = torch.from_numpy(audio.astype(np.float32) * (0.9 / 32768.0))
        # One thread: the synthesis processes hold the other cores, and
        # OpenMP threads competing with them slow this down many times.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                wav = self._transforms[sample_rate](wav).numpy()
        finally:
            torch.set_num_threads(threads)
        return np.clip(np.round(wav * 32768.0), -32768, 32767).astype(np.int16)


def _text_pools(text_file, seed, minutes):
    """Deals a text file's lines to the splits, in proportion to minutes.

    Lines are shuffled with the seed; no line is read in two splits.
    """
    lines = read_text_lines(text_file)
    if len(lines) < len(SPLITS):
        raise ValueError(
            f"{text_file}: {len(lines)} usable lines; need at least "
            f"{len(SPLITS)}, one per split"
        )
    random.Random(f"text:{seed}").shuffle(lines)
    total = sum(minutes.values())
    pools, start = {}, 0
    for index, split in enumerate(SPLITS):
        if index == len(SPLITS) - 1:
            end = len(lines)
        else:
            end = start + max(1, round(len(lines) * minutes[split] / total))
            end = min(end, len(lines) - (len(SPLITS) - 1 - index))
        pools[split] = lines[start:end]
        start = end
    return pools


def _make_jobs(speakers, minutes, seed, text_pools, sentences):
    """One job per speaker, sharing its split's minutes evenly."""
    jobs = []
    for split in SPLITS:
        split_speakers = [s for s in speakers if s.subset == split]
        for index, speaker in enumerate(split_speakers):
            lines = ()
            if text_pools is not None:
                pool = text_pools[split]
                lines = tuple(pool[index :: len(split_speakers)] or pool)
            jobs.append(
                _SpeakerJob(
                    speaker=speaker,
                    seconds=60.0 * minutes[split] / len(split_speakers),
                    seed=seed,
                    text_lines=lines,
                    sentences=sentences,
                )
            )
    return jobs


def _worker_main():
    """Entry point of a synthesis process: job pickle in, result out."""
    fields = pickle.load(sys.stdin.buffer)
    speaker = dict(fields["speaker"], voice=Voice(**fields["speaker"]["voice"]))
    job = _SpeakerJob(**dict(fields, speaker=Speaker(**speaker)))
    pickle.dump(_synthesize_speaker(job), sys.stdout.buffer)


def _run_in_fresh_process(job):
    """Runs ``_synthesize_speaker(job)`` in a new Python process.

    A plain subprocess, not multiprocessing: it works whatever the calling
    program (no ``__main__`` guard needed, notebooks, stdin scripts) and
    never inherits this process's eSpeak state.
    """
    package_root = os.path.dirname(os.path.dirname(_PACKAGE_DIR))
    python_path = os.environ.get("PYTHONPATH")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [package_root, python_path])),
    )
    completed = subprocess.run(
        [sys.executable, "-c", _WORKER_COMMAND],
        # Plain fields, not the dataclass: run as ``python -m``, this
        # module is ``__main__`` and its classes would not unpickle there.
        input=pickle.dumps(dataclasses.asdict(job)),
        capture_output=True,
        env=env,
        check=False,
    )
    if completed.returncode != 0:
        error = completed.stderr.decode(errors="replace").strip()
        raise RuntimeError(
            f"synthesis of speaker {job.speaker.speaker_id} failed:\n{error}"
        )
    return pickle.loads(completed.stdout)


def _map_in_fresh_processes(jobs, num_workers):
    """Yields each job's synthesis, in order, each in a fresh process."""
    with ThreadPoolExecutor(num_workers) as executor:
        yield from executor.map(_run_in_fresh_process, jobs)


def _options(seed, minutes, num_speakers, text_file, with_noise, sentences):
    """The arguments that determine the corpus, as stored in the marker.

    The sentence design is recorded only when it is not the default, so
    that corpora generated before the option existed still match.
    """
    text_hash = None
    if text_file is not None:
        text_file = os.path.abspath(text_file)
        with open(text_file, "rb") as text:
            text_hash = hashlib.sha256(text.read()).hexdigest()
    return {
        "format_version": _FORMAT_VERSION,
        "seed": int(seed),
        "minutes": {split: float(minutes[split]) for split in SPLITS},
        "speakers": {split: int(num_speakers[split]) for split in SPLITS},
        "text_file": text_file,
        "text_sha256": text_hash,
        "with_noise": bool(with_noise),
        **({} if sentences == "random" else {"sentences": sentences}),
    }


def _check_existing(out_dir, options):
    """Returns the stored summary if ``out_dir`` holds this very corpus."""
    marker = os.path.join(out_dir, MARKER)
    if not os.path.exists(marker):
        if os.path.isdir(out_dir) and os.listdir(out_dir):
            raise FileExistsError(
                f"{out_dir} exists and holds no complete mini LibriSpeech "
                f"(no {MARKER} marker); remove it or choose another folder"
            )
        return None
    with open(marker, encoding="utf-8") as marker_file:
        stored = json.load(marker_file)
    if stored["options"] != options:
        differences = ", ".join(
            f"{key}: {stored['options'].get(key)!r} there, "
            f"{options.get(key)!r} asked"
            for key in sorted(set(options) | set(stored["options"]))
            if stored["options"].get(key) != options.get(key)
        )
        raise ValueError(
            f"{out_dir} holds a mini LibriSpeech generated with other "
            f"arguments ({differences}); remove it or choose another folder"
        )
    return stored["summary"]


def _fresh_work_dir(out_dir):
    """Creates ``OUT_DIR.partial``, clearing an interrupted run's one."""
    work_dir = out_dir + ".partial"
    if os.path.exists(work_dir):
        if not os.path.exists(os.path.join(work_dir, _PARTIAL_SENTINEL)):
            raise FileExistsError(
                f"{work_dir} exists and was not made by this generator; "
                "remove it"
            )
        logger.warning("Removing an interrupted run's %s", work_dir)
        shutil.rmtree(work_dir)
    os.makedirs(work_dir)
    open(os.path.join(work_dir, _PARTIAL_SENTINEL), "w").close()
    return work_dir


def _write_speaker_table(path, speakers, seconds_by_speaker):
    """Writes SPEAKERS.txt, LibriSpeech's SPEAKERS.TXT plus voice columns."""
    lines = [
        "; Synthetic speakers of this mini LibriSpeech (eSpeak NG voices).",
        "; ID | SEX | SUBSET | MINUTES | VOICE | RATE | PITCH | RANGE",
    ]
    for s in speakers:
        minutes = seconds_by_speaker[s.speaker_id] / 60
        lines.append(
            f"{s.speaker_id:<5} | {s.sex} | {s.subset:<15} | {minutes:5.2f} "
            f"| {s.voice.name:<18} | {s.voice.rate} | {s.voice.pitch} | "
            f"{s.voice.pitch_range}"
        )
    write_text_atomic(path, "\n".join(lines) + "\n")


def _readme(options):
    """The corpus README: what it is and how it was made."""
    return (
        "Synthetic mini LibriSpeech\n"
        "==========================\n\n"
        "SYNTHETIC speech, not LibriSpeech: every utterance was synthesised "
        "with eSpeak NG\n(espeakng-loader) from generated or given text by "
        "s3l_plugin.data.mini_librispeech.\nIt mimics LibriSpeech's layout "
        "(16 kHz mono 16-bit FLAC, <speaker>-<chapter>-<utt>\nids, "
        "*.trans.txt transcripts) for quick end-to-end runs; word error "
        "rates on it say\nnothing about real speech. noise/ holds synthetic "
        "noise and babble for augmentation,\nlisted in noise/noise.csv "
        "(absolute paths: rebuild it with\n`python -m s3l_plugin.data.noise "
        "NOISE_DIR CSV_PATH` after moving the corpus).\n\n"
        f"Generation arguments:\n{json.dumps(options, indent=2)}\n"
    )


def generate_mini_librispeech(
    out_dir,
    seed=0,
    train_minutes=30.0,
    dev_minutes=3.0,
    test_minutes=3.0,
    text_file=None,
    with_noise=True,
    progress=True,
    train_speakers=24,
    dev_speakers=4,
    test_speakers=4,
    num_workers=2,
    sentences="random",
):
    """Generates the synthetic mini LibriSpeech (see the module docstring).

    Arguments
    ---------
    out_dir : str
        Corpus folder; must not exist, be empty, or hold this same corpus
        (then nothing is done).
    seed : int
        Seed of speakers, text, synthesis and noise.
    train_minutes : float
        Audio in ``train-clean-100``, shared evenly by its speakers (each
        speaker slightly overshoots its share by up to one utterance).
    dev_minutes : float
        Audio in ``dev-clean``.
    test_minutes : float
        Audio in ``test-clean``.
    text_file : str, optional
        Text to read, one utterance a line (normalised to LibriSpeech
        transcripts; lines are dealt to the splits without overlap).
        Default: sentences of the ``sentences`` design.
    with_noise : bool
        Also write the noise collection and ``noise/noise.csv``.
    progress : bool
        Show a progress bar.
    train_speakers : int
        Speakers in ``train-clean-100``.
    dev_speakers : int
        Speakers in ``dev-clean``.
    test_speakers : int
        Speakers in ``test-clean``.
    num_workers : int
        Synthesis processes (the output does not depend on it).
    sentences : str
        Design of the generated sentences, without ``text_file``:
        ``"random"``, 5 to 30 common English words drawn at random, or
        ``"grammar"``, 4 to 14 words from a small English grammar of about
        300 words (:mod:`s3l_plugin.data.grammar`), which a word n-gram
        learned from the training transcripts can predict.

    Returns
    -------
    dict
        ``out_dir``; ``splits``: per split ``speakers``, ``utterances``,
        ``minutes``; ``noise_files``; ``noise_csv`` (None without noise);
        ``already_complete``: True if the corpus was there already.

    Example
    -------
    >>> import tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "mini")
    >>> summary = generate_mini_librispeech(
    ...     out, train_minutes=0.02, dev_minutes=0.02, test_minutes=0.02,
    ...     train_speakers=1, dev_speakers=1, test_speakers=1,
    ...     with_noise=False, progress=False,
    ... )
    >>> summary["splits"]["dev-clean"]["utterances"]
    1
    """
    out_dir = os.path.abspath(out_dir)
    minutes = {TRAIN: train_minutes, DEV: dev_minutes, TEST: test_minutes}
    for split, value in minutes.items():
        if not value > 0:
            raise ValueError(f"{split} minutes must be positive, got {value}")
    num_speakers = {
        TRAIN: train_speakers,
        DEV: dev_speakers,
        TEST: test_speakers,
    }
    if sentences not in SENTENCE_DESIGNS:
        raise ValueError(
            f"sentences must be one of {SENTENCE_DESIGNS}, got {sentences!r}"
        )
    if text_file is not None and sentences != "random":
        raise ValueError(
            f"sentences={sentences!r} generates the text; it cannot be "
            "combined with a text file"
        )
    options = _options(
        seed, minutes, num_speakers, text_file, with_noise, sentences
    )
    summary = _check_existing(out_dir, options)
    if summary is not None:
        logger.info("%s already holds this mini LibriSpeech; skipping", out_dir)
        return dict(summary, already_complete=True)

    speakers = make_speakers(seed, train_speakers, dev_speakers, test_speakers)
    text_pools = None
    if text_file is not None:
        text_pools = _text_pools(text_file, seed, minutes)
    jobs = _make_jobs(speakers, minutes, seed, text_pools, sentences)
    work_dir = _fresh_work_dir(out_dir)

    transcripts = defaultdict(list)  # chapter folder -> lines
    seconds_by_speaker = {}
    babble_talkers = []
    resample = _Resampler()
    # One fresh process per speaker: its audio then depends neither on
    # what a worker synthesised before nor on the number of workers.
    results = _map_in_fresh_processes(jobs, max(1, num_workers))
    with tqdm(
        total=len(jobs),
        unit="speaker",
        desc="Synthesising speech",
        disable=not progress,
    ) as bar:
        for job, (rate, utterances) in zip(jobs, results):
            speaker = job.speaker
            talker, talker_samples, samples = [], 0, 0
            per_chapter = defaultdict(int)
            for chapter, transcript, audio in utterances:
                wav = resample(audio, rate)
                utt_id = (
                    f"{speaker.speaker_id}-{chapter}-{per_chapter[chapter]:04d}"
                )
                per_chapter[chapter] += 1
                folder = os.path.join(
                    work_dir,
                    speaker.subset,
                    str(speaker.speaker_id),
                    str(chapter),
                )
                os.makedirs(folder, exist_ok=True)
                sf.write(
                    os.path.join(folder, f"{utt_id}.flac"),
                    wav,
                    SAMPLE_RATE,
                    "PCM_16",
                    format="FLAC",
                )
                transcripts[folder].append(f"{utt_id} {transcript}")
                samples += len(wav)
                if speaker.subset == TRAIN and (
                    talker_samples < _BABBLE_SECONDS_PER_TALKER * SAMPLE_RATE
                ):
                    talker.append(wav.astype(np.float32) / 32768.0)
                    talker_samples += len(wav)
            seconds_by_speaker[speaker.speaker_id] = samples / SAMPLE_RATE
            if talker:
                babble_talkers.append(talker)
            bar.update(1)

    for folder, lines in transcripts.items():
        chapter_id = os.path.basename(folder)
        speaker_id = os.path.basename(os.path.dirname(folder))
        write_text_atomic(
            os.path.join(folder, f"{speaker_id}-{chapter_id}.trans.txt"),
            "\n".join(sorted(lines)) + "\n",
        )
    _write_speaker_table(
        os.path.join(work_dir, "SPEAKERS.txt"), speakers, seconds_by_speaker
    )
    write_text_atomic(os.path.join(work_dir, "README.txt"), _readme(options))

    summary = {"out_dir": out_dir, "splits": {}}
    for split in SPLITS:
        split_speakers = [s for s in speakers if s.subset == split]
        summary["splits"][split] = {
            "speakers": len(split_speakers),
            "utterances": sum(
                len(lines)
                for folder, lines in transcripts.items()
                if os.path.relpath(folder, work_dir).split(os.sep)[0] == split
            ),
            "minutes": round(
                sum(seconds_by_speaker[s.speaker_id] for s in split_speakers)
                / 60,
                3,
            ),
        }
    summary["noise_files"], summary["noise_csv"] = 0, None
    if with_noise:
        # Babble from train speakers' speech is fine: it only augments the
        # training input, it is never a target or an evaluation signal.
        logger.info("Writing the noise collection")
        noise_dir = os.path.join(work_dir, "noise")
        paths = generate_noise_collection(noise_dir, seed, babble_talkers)
        summary["noise_csv"] = os.path.join(out_dir, "noise", "noise.csv")
        make_noise_csv(
            noise_dir,
            os.path.join(noise_dir, "noise.csv"),
            path_prefix=os.path.join(out_dir, "noise"),
        )
        summary["noise_files"] = len(paths)

    os.remove(os.path.join(work_dir, _PARTIAL_SENTINEL))
    # The marker goes last: its presence means the corpus is complete.
    write_text_atomic(
        os.path.join(work_dir, MARKER),
        json.dumps({"options": options, "summary": summary}, indent=2),
    )
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)  # empty: checked by _check_existing
    os.rename(work_dir, out_dir)
    logger.info("Mini LibriSpeech written to %s", out_dir)
    return dict(summary, already_complete=False)


FINETUNING_FOLDER = "librispeech_finetuning"
FINETUNING_FOLDS = 6  # 1h/0 ... 1h/5, 10 minutes each


def write_finetuning_sets(corpus_dir, seconds_per_hour=60.0, seed=0):
    """Writes Libri-light's ``librispeech_finetuning`` layout, scaled down.

    Libri-light's folders (``1h/{0..5}/{clean,other}/`` and
    ``9h/{clean,other}/``, each in LibriSpeech's split layout with
    ``trans.txt`` files listing only the utterances it holds) are filled
    with copies of ``train-clean-100`` utterances, none used twice. A real
    hour is ``seconds_per_hour`` seconds here: each fold holds
    ``seconds_per_hour / 6`` seconds of audio (half in ``clean``, half in
    ``other``), ``9h`` nine times ``seconds_per_hour``; a folder is filled
    until it reaches its share. The mini corpus has only clean speech:
    ``other`` holds the utterances of every second training speaker (in id
    order), ``clean`` those of the others.

    Built in ``librispeech_finetuning.partial`` and renamed once complete,
    with a ``.complete`` marker holding the arguments: asking again for the
    same sets is a no-op, asking for others is an error.

    Arguments
    ---------
    corpus_dir : str
        A complete mini LibriSpeech (``generate_mini_librispeech``).
    seconds_per_hour : float
        Seconds of audio standing for one hour of Libri-light's.
    seed : int
        Seed of the utterance draw.

    Returns
    -------
    str
        The ``librispeech_finetuning`` folder.

    Raises
    ------
    ValueError
        If the corpus has too little training speech, or the folder holds
        sets made with other arguments.

    Example
    -------
    A corpus of two speakers with twelve 1-s utterances each:

    >>> import tempfile
    >>> corpus = tempfile.mkdtemp()
    >>> for speaker in ("11", "12"):
    ...     chapter = os.path.join(corpus, TRAIN, speaker, "100")
    ...     os.makedirs(chapter)
    ...     ids = [f"{speaker}-100-{utt:04d}" for utt in range(12)]
    ...     for utt_id in ids:
    ...         sf.write(os.path.join(chapter, f"{utt_id}.flac"),
    ...                  np.zeros(SAMPLE_RATE), SAMPLE_RATE)
    ...     write_text_atomic(os.path.join(chapter, f"{speaker}-100.trans.txt"),
    ...                       "".join(f"{i} HELLO\\n" for i in ids))
    >>> write_text_atomic(os.path.join(corpus, MARKER), "{}")
    >>> folder = write_finetuning_sets(corpus, seconds_per_hour=1.0)
    >>> sorted(os.listdir(os.path.join(folder, "1h")))
    ['0', '1', '2', '3', '4', '5']
    >>> sorted(os.listdir(os.path.join(folder, "9h")))
    ['clean', 'other']
    """
    corpus_dir = os.path.abspath(corpus_dir)
    if not os.path.isfile(os.path.join(corpus_dir, MARKER)):
        raise ValueError(
            f"{corpus_dir} holds no complete mini LibriSpeech (no {MARKER})"
        )
    out_dir = os.path.join(corpus_dir, FINETUNING_FOLDER)
    options = {"seconds_per_hour": float(seconds_per_hour), "seed": int(seed)}
    marker = os.path.join(out_dir, MARKER)
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as marker_file:
            stored = json.load(marker_file)
        if stored != options:
            raise ValueError(
                f"{out_dir} holds Libri-light sets made with {stored}, not "
                f"{options}; remove it to make them again"
            )
        return out_dir
    if os.path.exists(out_dir):
        raise FileExistsError(
            f"{out_dir} exists but was not completed by this generator (no "
            f"{MARKER}); remove it"
        )
    if not seconds_per_hour > 0:
        raise ValueError(
            f"seconds_per_hour must be positive, got {seconds_per_hour}"
        )
    pools = _finetuning_pools(os.path.join(corpus_dir, TRAIN), seed)
    fold_share = seconds_per_hour / FINETUNING_FOLDS / 2
    targets = [(f"1h/{fold}", fold_share) for fold in range(FINETUNING_FOLDS)]
    targets.append(("9h", 9 * seconds_per_hour / 2))
    work_dir = _fresh_work_dir(out_dir)
    for subset, pool in pools.items():
        for part, share in targets:
            chosen, seconds = [], 0.0
            while seconds < share:
                if not pool:
                    shutil.rmtree(work_dir)
                    raise ValueError(
                        f"{corpus_dir}: too little training speech for "
                        f"Libri-light sets at {seconds_per_hour} s per hour "
                        f"(ran out in {part}/{subset}); lower "
                        "seconds_per_hour or generate more train minutes"
                    )
                utterance = pool.pop()
                chosen.append(utterance)
                seconds += utterance[1]
            _copy_utterances(chosen, os.path.join(work_dir, part, subset))
    os.remove(os.path.join(work_dir, _PARTIAL_SENTINEL))
    write_text_atomic(
        os.path.join(work_dir, MARKER), json.dumps(options, indent=2)
    )
    os.rename(work_dir, out_dir)
    logger.info("Libri-light limited-supervision sets written to %s", out_dir)
    return out_dir


def _finetuning_pools(train_dir, seed):
    """``{"clean": [...], "other": [...]}`` of (path, seconds, line).

    Each pool is shuffled with the seed; ``pop()`` draws from it.
    """
    pools = {"clean": [], "other": []}
    speakers = sorted(os.listdir(train_dir), key=int)
    for index, speaker in enumerate(speakers):
        subset = "other" if index % 2 else "clean"
        for trans_path in sorted(
            glob.glob(os.path.join(train_dir, speaker, "*", "*.trans.txt"))
        ):
            folder = os.path.dirname(trans_path)
            with open(trans_path, encoding="utf-8") as trans_file:
                for line in trans_file:
                    utt_id = line.split(" ", 1)[0]
                    path = os.path.join(folder, f"{utt_id}.flac")
                    seconds = sf.info(path).duration
                    pools[subset].append((path, seconds, line.rstrip("\n")))
    for subset, pool in pools.items():
        random.Random(f"finetuning:{seed}:{subset}").shuffle(pool)
    return pools


def _copy_utterances(utterances, split_dir):
    """Copies utterances into a split folder, with their trans.txt files."""
    lines = defaultdict(list)  # chapter folder -> transcript lines
    os.makedirs(split_dir, exist_ok=True)  # "other" may stay empty
    for path, _, line in utterances:
        chapter_dir = os.path.dirname(path)
        speaker, chapter = chapter_dir.split(os.sep)[-2:]
        folder = os.path.join(split_dir, speaker, chapter)
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(path, os.path.join(folder, os.path.basename(path)))
        lines[(folder, f"{speaker}-{chapter}")].append(line)
    for (folder, name), chapter_lines in lines.items():
        write_text_atomic(
            os.path.join(folder, f"{name}.trans.txt"),
            "\n".join(sorted(chapter_lines)) + "\n",
        )


def main(argv=None):
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(
        description="Generate a synthetic mini LibriSpeech with eSpeak NG."
    )
    parser.add_argument("out_dir", help="corpus folder to create")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-minutes", type=float, default=30.0)
    parser.add_argument("--dev-minutes", type=float, default=3.0)
    parser.add_argument("--test-minutes", type=float, default=3.0)
    parser.add_argument("--train-speakers", type=int, default=24)
    parser.add_argument("--dev-speakers", type=int, default=4)
    parser.add_argument("--test-speakers", type=int, default=4)
    text = parser.add_mutually_exclusive_group()
    text.add_argument(
        "--text", help="text file, one utterance a line (default: generated)"
    )
    text.add_argument(
        "--sentences",
        choices=SENTENCE_DESIGNS,
        default="random",
        help="design of the generated sentences (default: random)",
    )
    parser.add_argument(
        "--no-noise", action="store_true", help="skip the noise collection"
    )
    parser.add_argument(
        "--finetuning-sets",
        action="store_true",
        help="also write librispeech_finetuning/ (Libri-light's layout)",
    )
    parser.add_argument(
        "--seconds-per-hour",
        type=float,
        default=60.0,
        help="audio seconds standing for a Libri-light hour (default 60)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = generate_mini_librispeech(
        args.out_dir,
        seed=args.seed,
        train_minutes=args.train_minutes,
        dev_minutes=args.dev_minutes,
        test_minutes=args.test_minutes,
        text_file=args.text,
        with_noise=not args.no_noise,
        progress=not args.quiet,
        train_speakers=args.train_speakers,
        dev_speakers=args.dev_speakers,
        test_speakers=args.test_speakers,
        num_workers=args.workers,
        sentences=args.sentences,
    )
    if args.finetuning_sets:
        write_finetuning_sets(
            args.out_dir, args.seconds_per_hour, seed=args.seed
        )
    for split, stats in summary["splits"].items():
        logger.info(
            "%-16s %3d speakers %5d utterances %7.2f min",
            split,
            stats["speakers"],
            stats["utterances"],
            stats["minutes"],
        )


if __name__ == "__main__":
    main()
