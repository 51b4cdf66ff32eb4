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
``<speaker>-<chapter>``, ``wrd`` the upper-case transcript. Each bad file
or transcript line is reported, left out and listed with its reason in
``<save_folder>/<split>_skipped.txt``: audio that is unreadable (a broken
link included), empty or without a transcript; a transcript line that is
not UTF-8, has no words, or holds a ``$`` (SpeechBrain's CSV reader would
take it for a variable), or whose audio is missing. What no CSV can hold
stops the preparation with a :class:`~s3l_plugin.config.ConfigError`: a
utterance ID given twice, a split without any usable utterance, a
``data_folder`` path with a ``$`` or that is not UTF-8. Every file is
written atomically, and the options file is written last, so an
interrupted run is redone, never mistaken for a finished one.
"""

import csv
import glob
import io
import json
import logging
import os

import soundfile as sf
from tqdm import tqdm

from s3l_plugin.config import ConfigError
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
    ConfigError
        For a corpus no CSV can be made of: a ``data_folder`` path with
        a ``$`` or not UTF-8, a utterance ID given twice (in a split or
        across merged splits), a split without any usable utterance.

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
    problem = csv_path_problem(data_folder)
    if problem:
        raise ConfigError(
            f"data_folder {data_folder!r} {problem}: every wav path of the "
            "CSVs would hold it; pass a path to the corpus without it (e.g. "
            "a symbolic link)"
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
    """Reads every ``*.trans.txt`` of a split; bad lines are set aside.

    A line is ``<utterance ID> <words>``; blank lines are ignored. A line
    that is not UTF-8, has no words or holds a ``$`` is bad.

    Arguments
    ---------
    split_folder : str
        A split folder (``<speaker>/<chapter>/*.trans.txt`` inside).

    Returns
    -------
    transcripts : dict
        Utterance ID -> ``(upper-case words, "<trans.txt>:<line>")``.
    bad_lines : dict
        Utterance ID (as far as it can be read) -> ``("<trans.txt>:<line>",
        reason)``.

    Raises
    ------
    ConfigError
        If a utterance ID is on two lines, naming both.

    Example
    -------
    >>> import tempfile
    >>> split = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(split, "19", "198"))
    >>> path = os.path.join(split, "19", "198", "19-198.trans.txt")
    >>> _ = open(path, "w").write("19-198-0000 HELLO\\n19-198-0001 A $B\\n")
    >>> transcripts, bad_lines = read_transcripts(split)
    >>> transcripts["19-198-0000"][0], bad_lines["19-198-0001"][1]
    ('HELLO', "holds '$', which SpeechBrain's CSV reader takes for a variable")
    """
    transcripts, bad_lines, seen = {}, {}, {}
    pattern = os.path.join(split_folder, "*", "*", "*.trans.txt")
    for path in sorted(glob.glob(pattern)):
        with open(path, "rb") as trans_file:
            lines = trans_file.read().splitlines()
        for number, raw in enumerate(lines, start=1):
            where = f"{path}:{number}"
            try:
                line, problem = raw.decode("utf-8"), None
            except UnicodeDecodeError as error:
                line = raw.decode("utf-8", errors="replace")
                problem = (
                    f"not UTF-8 (byte 0x{raw[error.start]:02x} at column "
                    f"{error.start + 1})"
                )
            utt_id, _, words = line.strip().partition(" ")
            if not utt_id:
                continue  # a blank line
            if utt_id in seen:
                raise ConfigError(
                    f"utterance ID {utt_id} is on two transcript lines, "
                    f"{seen[utt_id]} and {where}: keep one"
                )
            seen[utt_id] = where
            words = words.strip()
            if problem is None and not words:
                problem = "empty transcript (an ID without words)"
            if problem is None and "$" in line:
                problem = (
                    "holds '$', which SpeechBrain's CSV reader takes for a "
                    "variable"
                )
            if problem:
                bad_lines[utt_id] = (where, problem)
            else:
                transcripts[utt_id] = (words.upper(), where)
    return transcripts, bad_lines


def csv_path_problem(path):
    """Why ``path`` cannot be written into a SpeechBrain CSV, or None.

    Arguments
    ---------
    path : str

    Returns
    -------
    str or None

    Example
    -------
    >>> csv_path_problem("/data/$USER/a.flac")
    "holds '$', which SpeechBrain's CSV reader takes for a variable"
    >>> csv_path_problem("/data/a.flac") is None
    True
    """
    if "$" in path:
        return "holds '$', which SpeechBrain's CSV reader takes for a variable"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


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
        If the file is missing (a broken link), empty or unreadable (a
        FLAC header announcing 0 samples is reported as unreadable:
        libsndfile refuses it); the message says why.

    Example
    -------
    >>> import tempfile, numpy
    >>> path = os.path.join(tempfile.mkdtemp(), "a.flac")
    >>> sf.write(path, numpy.zeros(8000), 16000)
    >>> probe_audio(path)
    0.5
    """
    try:
        size = os.path.getsize(path)
    except OSError as error:
        reason = "broken link" if os.path.islink(path) else "cannot open"
        raise ValueError(f"{reason} ({error.strerror})") from error
    if size == 0:
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
    """Writes one split's CSV and its list of skipped files and lines."""
    transcripts, bad_lines = read_transcripts(split_folder)
    audio_paths = _audio_files(split_folder)
    if n_sentences is not None:
        audio_paths = audio_paths[:n_sentences]
    rows, skipped, seen = [], [], set()
    for path in tqdm(audio_paths, desc=f"Preparing {split}", unit="file"):
        utt_id = os.path.basename(path)[: -len(".flac")]
        seen.add(utt_id)
        try:
            duration = _check_audio(path, utt_id, transcripts, bad_lines)
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
    skipped.extend(sorted(bad_lines.values()))
    if n_sentences is None:
        for utt_id, (_, where) in sorted(transcripts.items()):
            if utt_id not in seen:
                skipped.append((where, f"{utt_id}: no audio file"))
    for path, reason in skipped:
        logger.warning("%s: left out: %s: %s", split, path, reason)

    write_text_atomic(
        skipped_path,
        "".join(f"{path}\t{reason}\n" for path, reason in skipped),
    )
    if not rows:
        raise ConfigError(
            f"LibriSpeech split {split} has no usable utterance: "
            f"{len(audio_paths)} .flac files in {split_folder}, "
            f"{len(skipped)} files or transcript lines left out (listed "
            f"with their reasons in {skipped_path})"
        )
    write_text_atomic(csv_path, _csv_text(CSV_HEADER, rows))
    hours = sum(float(row[1]) for row in rows) / 3600
    message = "%s: %d utterances (%.2f h) in %s; %d skipped"
    args = [split, len(rows), hours, csv_path, len(skipped)]
    if skipped:
        message += ", listed in %s"
        args.append(skipped_path)
    logger.info(message, *args)


def _audio_files(split_folder):
    """The split's ``.flac`` files, sorted; a utterance ID twice stops."""
    paths = sorted(glob.glob(os.path.join(split_folder, "*", "*", "*.flac")))
    first = {}
    for path in paths:
        utt_id = os.path.basename(path)
        if utt_id in first:
            raise ConfigError(
                f"utterance ID {utt_id[: -len('.flac')]} has two audio "
                f"files, {first[utt_id]} and {path}: keep one"
            )
        first[utt_id] = path
    return paths


def _check_audio(path, utt_id, transcripts, bad_lines):
    """The duration of a usable utterance; ValueError says why not."""
    problem = csv_path_problem(path)
    if problem:
        raise ValueError(f"the path {problem}")
    if utt_id.count("-") != 2:
        raise ValueError("not named <speaker>-<chapter>-<utterance>.flac")
    if utt_id in bad_lines:
        where, reason = bad_lines[utt_id]
        raise ValueError(f"its transcript line {where} is left out ({reason})")
    if utt_id not in transcripts:
        raise ValueError("no transcript in its chapter's trans.txt")
    return probe_audio(path)


def _merge_csvs(csv_paths, merged_path):
    """Concatenates CSVs with the same header into ``merged_path``.

    A utterance ID in two of them stops (ConfigError).
    """
    rows, first = [], {}
    for path in csv_paths:
        with open(path, encoding="utf-8", newline="") as csv_file:
            reader = csv.reader(csv_file)
            header = next(reader)
            if tuple(header) != CSV_HEADER:
                raise ValueError(f"{path}: unexpected header {header}")
            for row in reader:
                if row[0] in first:
                    raise ConfigError(
                        f"utterance ID {row[0]} is in {first[row[0]]} and "
                        f"{path}, which are merged into {merged_path}: "
                        "remove it from one split"
                    )
                first[row[0]] = path
                rows.append(row)
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
