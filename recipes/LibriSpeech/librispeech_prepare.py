"""LibriSpeech data preparation: one SpeechBrain CSV per split.

Works for real LibriSpeech and for the synthetic mini corpus of
``s3l_plugin.data.mini_librispeech`` alike: both hold
``<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` files and
``<speaker>-<chapter>.trans.txt`` transcripts. A split may also be a
folder path relative to the corpus root (or absolute) with that layout
inside, such as the sub-folders of Libri-light's limited-supervision sets
(``librilight_splits``); its CSV is named after the path, ``/`` -> ``_``.

Each ``<save_folder>/<split>.csv`` has the columns ``ID,duration,wav,spk_id,
wrd``: duration in seconds, ``wav`` an absolute path, ``spk_id``
``<speaker>-<chapter>``, ``wrd`` the upper-case transcript. Audio that is
unreadable, empty or without a transcript (and transcripts without audio)
is reported, left out and listed in ``<save_folder>/<split>_skipped.txt``;
it never stops the preparation. Every file is written atomically, and the
options file is written last, so an interrupted run is redone, never
mistaken for a finished one.
"""

import csv
import glob
import io
import json
import logging
import os

import soundfile as sf
from tqdm import tqdm

from s3l_plugin.data.atomic import write_text_atomic

logger = logging.getLogger(__name__)

OPTIONS_FILE = "opt_librispeech_prepare.json"
CSV_HEADER = ("ID", "duration", "wav", "spk_id", "wrd")
# Frames decoded at each end of a file: enough to catch a corrupt or
# truncated file without decoding all of it.
_PROBE_FRAMES = 1024


def prepare_librispeech(
    data_folder,
    save_folder,
    tr_splits=[],
    dev_splits=[],
    te_splits=[],
    select_n_sentences=None,
    merge_lst=[],
    merge_name=None,
    skip_prep=False,
):
    """Writes ``<save_folder>/<split>.csv`` for every split asked for.

    Nothing is done when the CSVs exist and were made with the same
    arguments (recorded in ``<save_folder>/opt_librispeech_prepare.json``).

    Arguments
    ---------
    data_folder : str
        LibriSpeech root, holding the split folders (``train-clean-100``,
        ``dev-clean``, ...).
    save_folder : str
        Where the CSVs go (created if needed).
    tr_splits : list of str
        Training splits.
    dev_splits : list of str
        Validation splits.
    te_splits : list of str
        Test splits.
    select_n_sentences : int or list of int, optional
        Keep only the first n utterances (in ID order) of each split; a
        list gives one n per split, in the order tr, dev, te.
    merge_lst : list of str
        Splits whose CSVs are concatenated into ``merge_name``.
    merge_name : str, optional
        File name of the merged CSV (``.csv`` is added if missing).
    skip_prep : bool
        Do nothing at all.

    Returns
    -------
    dict
        Split name (and ``merge_name``) -> CSV path; empty if skipped.

    Raises
    ------
    FileNotFoundError
        If ``data_folder`` or a split folder does not exist.
    ValueError
        On inconsistent arguments.

    Example
    -------
    >>> import tempfile, numpy
    >>> root = tempfile.mkdtemp()
    >>> chapter = os.path.join(root, "dev-clean", "19", "198")
    >>> os.makedirs(chapter)
    >>> sf.write(os.path.join(chapter, "19-198-0000.flac"),
    ...          numpy.zeros(16000), 16000)
    >>> with open(os.path.join(chapter, "19-198.trans.txt"), "w") as f:
    ...     _ = f.write("19-198-0000 HELLO WORLD\\n")
    >>> paths = prepare_librispeech(root, os.path.join(root, "csv"),
    ...                             dev_splits=["dev-clean"])
    >>> open(paths["dev-clean"]).read().splitlines()[1].split(",")[-2:]
    ['19-198', 'HELLO WORLD']
    """
    if skip_prep:
        logger.info("skip_prep: LibriSpeech preparation skipped")
        return {}
    splits = list(tr_splits) + list(dev_splits) + list(te_splits)
    if not splits:
        raise ValueError("prepare_librispeech: no split given")
    if len(set(splits)) != len(splits):
        raise ValueError(f"a split is listed twice: {splits}")
    n_sentences = _n_sentences_per_split(splits, select_n_sentences)
    if merge_lst and not merge_name:
        raise ValueError("merge_lst given without merge_name")
    unknown = [split for split in merge_lst if split not in splits]
    if unknown:
        raise ValueError(
            f"merge_lst names splits that are not prepared: {unknown}"
        )
    data_folder = os.path.abspath(data_folder)
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(
            f"LibriSpeech data_folder {data_folder} does not exist"
        )
    for split in splits:
        split_folder = os.path.join(data_folder, split)
        if not os.path.isdir(split_folder):
            raise FileNotFoundError(
                f"LibriSpeech split '{split}' not found: {split_folder} "
                "does not exist"
            )

    os.makedirs(save_folder, exist_ok=True)
    outputs = {
        split: os.path.join(save_folder, f"{split_file_name(split)}.csv")
        for split in splits
    }
    if merge_lst:
        if not merge_name.endswith(".csv"):
            merge_name += ".csv"
        outputs[merge_name] = os.path.join(save_folder, merge_name)
    options = {
        "data_folder": data_folder,
        "splits": splits,
        "select_n_sentences": n_sentences,
        "merge_lst": list(merge_lst),
        "merge_name": merge_name,
    }
    options_path = os.path.join(save_folder, OPTIONS_FILE)
    if _already_done(options_path, options, outputs.values()):
        logger.info(
            "LibriSpeech CSVs in %s are up to date; preparation skipped",
            save_folder,
        )
        return outputs

    # The options file goes last: present means every CSV is complete.
    if os.path.exists(options_path):
        os.remove(options_path)
    for split in splits:
        _prepare_split(
            os.path.join(data_folder, split),
            split,
            outputs[split],
            os.path.join(save_folder, f"{split_file_name(split)}_skipped.txt"),
            n_sentences[split],
        )
    if merge_lst:
        _merge_csvs(
            [outputs[split] for split in merge_lst], outputs[merge_name]
        )
    write_text_atomic(options_path, json.dumps(options, indent=2) + "\n")
    return outputs


def split_file_name(split):
    """The file name (without extension) of a split's CSV.

    Arguments
    ---------
    split : str
        A split name or a folder path (Libri-light's sub-folders).

    Returns
    -------
    str

    Example
    -------
    >>> split_file_name("dev-clean")
    'dev-clean'
    >>> split_file_name("librispeech_finetuning/1h/0/clean")
    'librispeech_finetuning_1h_0_clean'
    """
    return split.strip("/").replace("/", "_").replace(os.sep, "_")


def _n_sentences_per_split(splits, select_n_sentences):
    """Normalises ``select_n_sentences`` to a split -> n (or None) dict."""
    if select_n_sentences is None or isinstance(select_n_sentences, int):
        return dict.fromkeys(splits, select_n_sentences)
    if len(select_n_sentences) != len(splits):
        raise ValueError(
            f"select_n_sentences has {len(select_n_sentences)} entries for "
            f"{len(splits)} splits ({splits})"
        )
    return dict(zip(splits, select_n_sentences))


def _already_done(options_path, options, outputs):
    """True if the options file matches and every output exists."""
    if not os.path.isfile(options_path):
        return False
    try:
        with open(options_path, encoding="utf-8") as options_file:
            stored = json.load(options_file)
    except (OSError, ValueError):
        return False
    return stored == options and all(os.path.isfile(p) for p in outputs)


def read_transcripts(split_folder):
    """Reads every ``*.trans.txt`` of a split.

    Arguments
    ---------
    split_folder : str
        A split folder (``<speaker>/<chapter>/*.trans.txt`` inside).

    Returns
    -------
    dict
        Utterance id -> ``(transcript, trans.txt path)``.

    Example
    -------
    >>> import tempfile
    >>> split = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(split, "19", "198"))
    >>> path = os.path.join(split, "19", "198", "19-198.trans.txt")
    >>> _ = open(path, "w").write("19-198-0000 HELLO\\n19-198-0001 A B\\n")
    >>> read_transcripts(split)["19-198-0001"][0]
    'A B'
    """
    transcripts = {}
    pattern = os.path.join(split_folder, "*", "*", "*.trans.txt")
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as trans_file:
            for line in trans_file:
                utt_id, _, words = line.strip().partition(" ")
                if utt_id:
                    transcripts[utt_id] = (words.strip().upper(), path)
    return transcripts


def probe_audio(path):
    """Reads an audio file's duration, checking that it decodes.

    The header gives the length; the first and last frames are decoded, so
    a corrupt or truncated file is caught without decoding all of it.

    Arguments
    ---------
    path : str
        Audio file.

    Returns
    -------
    float
        Duration in seconds.

    Raises
    ------
    ValueError
        If the file is empty or unreadable (a FLAC header announcing 0
        samples is reported as unreadable: libsndfile refuses it); the
        message says why.

    Example
    -------
    >>> import tempfile, numpy
    >>> path = os.path.join(tempfile.mkdtemp(), "a.flac")
    >>> sf.write(path, numpy.zeros(8000), 16000)
    >>> probe_audio(path)
    0.5
    """
    if os.path.getsize(path) == 0:
        raise ValueError("empty file (0 bytes)")
    head = tail = ()
    try:
        with sf.SoundFile(path) as audio:
            frames, sample_rate = audio.frames, audio.samplerate
            if frames > 0:
                head = audio.read(min(frames, _PROBE_FRAMES))
                audio.seek(max(0, frames - _PROBE_FRAMES))
                tail = audio.read(_PROBE_FRAMES)
    except Exception as error:  # soundfile raises several error types
        raise ValueError(f"unreadable audio ({error})") from error
    if frames <= 0:
        raise ValueError("empty audio (0 samples)")
    if len(head) == 0 or len(tail) == 0:
        raise ValueError("unreadable audio (no samples could be decoded)")
    return frames / sample_rate


def _prepare_split(split_folder, split, csv_path, skipped_path, n_sentences):
    """Writes one split's CSV and its list of skipped files."""
    transcripts = read_transcripts(split_folder)
    audio_paths = sorted(
        glob.glob(os.path.join(split_folder, "*", "*", "*.flac"))
    )
    if n_sentences is not None:
        audio_paths = audio_paths[:n_sentences]
    rows, skipped, seen = [], [], set()
    for path in tqdm(audio_paths, desc=f"Preparing {split}", unit="file"):
        utt_id = os.path.basename(path)[: -len(".flac")]
        seen.add(utt_id)
        if utt_id not in transcripts:
            skipped.append((path, "no transcript in its chapter's trans.txt"))
            continue
        try:
            duration = probe_audio(path)
        except ValueError as error:
            skipped.append((path, str(error)))
            continue
        speaker, chapter = utt_id.split("-")[:2]
        rows.append(
            (
                utt_id,
                repr(duration),
                path,
                f"{speaker}-{chapter}",
                transcripts[utt_id][0],
            )
        )
    if n_sentences is None:
        for utt_id, (_, trans_path) in sorted(transcripts.items()):
            if utt_id not in seen:
                skipped.append((trans_path, f"{utt_id}: no audio file"))
    for path, reason in skipped:
        logger.warning("%s: left out: %s: %s", split, path, reason)

    write_text_atomic(csv_path, _csv_text(CSV_HEADER, rows))
    write_text_atomic(
        skipped_path,
        "".join(f"{path}\t{reason}\n" for path, reason in skipped),
    )
    hours = sum(float(row[1]) for row in rows) / 3600
    message = "%s: %d utterances (%.2f h) in %s; %d skipped"
    args = [split, len(rows), hours, csv_path, len(skipped)]
    if skipped:
        message += ", listed in %s"
        args.append(skipped_path)
    logger.info(message, *args)


def _merge_csvs(csv_paths, merged_path):
    """Concatenates CSVs with the same header into ``merged_path``."""
    rows = []
    for path in csv_paths:
        with open(path, encoding="utf-8", newline="") as csv_file:
            reader = csv.reader(csv_file)
            header = next(reader)
            if tuple(header) != CSV_HEADER:
                raise ValueError(f"{path}: unexpected header {header}")
            rows.extend(reader)
    write_text_atomic(merged_path, _csv_text(CSV_HEADER, rows))
    logger.info(
        "%s: %d utterances merged from %s", merged_path, len(rows), csv_paths
    )


def _csv_text(header, rows):
    """CSV text (quoting only where needed)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue()


# ---- Libri-light limited supervision ---------------------------------------
# Libri-light's ``librispeech_finetuning`` (Kahn et al. 2020): six disjoint
# 10-minute folds ``1h/0`` ... ``1h/5`` making up 1 h, and ``9h``, each with
# ``clean/`` and ``other/`` sub-folders in LibriSpeech's split layout. The 10
# min set is the first fold, 1 h all six, 10 h the 1 h set plus ``9h``.
LIBRILIGHT_FOLDER = "librispeech_finetuning"
LIBRILIGHT_SETS = {
    "10min": ("1h/0",),
    "1h": tuple(f"1h/{fold}" for fold in range(6)),
    "10h": tuple(f"1h/{fold}" for fold in range(6)) + ("9h",),
}
LIBRILIGHT_SUBSETS = ("clean", "other")


def librilight_splits(labelled_set, librilight_folder=LIBRILIGHT_FOLDER):
    """The split folders of a Libri-light labelled set.

    Arguments
    ---------
    labelled_set : str
        ``"10min"``, ``"1h"`` or ``"10h"``.
    librilight_folder : str
        The ``librispeech_finetuning`` folder, relative to the LibriSpeech
        root given to :func:`prepare_librispeech` (or absolute).

    Returns
    -------
    list of str
        Folders in LibriSpeech's split layout, for ``tr_splits``.

    Raises
    ------
    ValueError
        For an unknown set.

    Example
    -------
    >>> librilight_splits("10min")
    ['librispeech_finetuning/1h/0/clean', 'librispeech_finetuning/1h/0/other']
    >>> len(librilight_splits("1h")), librilight_splits("10h")[-1]
    (12, 'librispeech_finetuning/9h/other')
    """
    if labelled_set not in LIBRILIGHT_SETS:
        raise ValueError(
            f"unknown Libri-light labelled set {labelled_set!r}; choose one "
            f"of {list(LIBRILIGHT_SETS)}"
        )
    return [
        os.path.join(librilight_folder, part, subset)
        for part in LIBRILIGHT_SETS[labelled_set]
        for subset in LIBRILIGHT_SUBSETS
    ]


def prepare_librilight(
    data_folder,
    save_folder,
    labelled_set,
    librilight_folder=LIBRILIGHT_FOLDER,
    skip_prep=False,
):
    """Writes ``<save_folder>/<labelled_set>.csv`` for a Libri-light set.

    :func:`prepare_librispeech` on the set's folders (one CSV each, same
    columns and checks), merged. The finetuning recipe instead gives the
    folders as training splits, with its validation and test splits.

    Arguments
    ---------
    data_folder : str
        LibriSpeech root (``librilight_folder`` is relative to it).
    save_folder : str
        Where the CSVs go.
    labelled_set : str
        ``"10min"``, ``"1h"`` or ``"10h"``.
    librilight_folder : str
        The ``librispeech_finetuning`` folder (relative or absolute).
    skip_prep : bool
        Do nothing at all.

    Returns
    -------
    str or None
        Path of the merged CSV; None if skipped.

    Example
    -------
    >>> import tempfile, numpy
    >>> root = tempfile.mkdtemp()
    >>> for split in librilight_splits("10min"):
    ...     chapter = os.path.join(root, split, "19", "198")
    ...     os.makedirs(chapter)
    ...     name = "0000" if split.endswith("clean") else "0001"
    ...     sf.write(os.path.join(chapter, f"19-198-{name}.flac"),
    ...              numpy.zeros(16000), 16000)
    ...     with open(os.path.join(chapter, "19-198.trans.txt"), "w") as f:
    ...         _ = f.write(f"19-198-{name} HELLO\\n")
    >>> path = prepare_librilight(root, os.path.join(root, "csv"), "10min")
    >>> [line.split(",")[0] for line in open(path).read().splitlines()]
    ['ID', '19-198-0000', '19-198-0001']
    """
    splits = librilight_splits(labelled_set, librilight_folder)
    outputs = prepare_librispeech(
        data_folder,
        save_folder,
        tr_splits=splits,
        merge_lst=splits,
        merge_name=f"{labelled_set}.csv",
        skip_prep=skip_prep,
    )
    return outputs.get(f"{labelled_set}.csv")
