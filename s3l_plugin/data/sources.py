"""Where a recipe's data come from: the corpus, its CSVs and the noises.

``data_folder`` (real LibriSpeech) or, when it is not given, the generated
mini corpus; the noise collection of the corpus, the YAML's ``noise_csv``
or a generated one. Mistakes raise :class:`s3l_plugin.config.ConfigError`.
"""

import csv
import logging
import os

from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.distributed import run_on_main

from s3l_plugin.config import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_MINI_CORPUS = os.path.join("data", "mini_librispeech")


# Optional hparams keys -> generate_mini_librispeech arguments. The defaults
# of the generator (30 minutes of training speech...) apply to absent keys.
MINI_CORPUS_KEYS = {
    "mini_corpus_seed": "seed",
    "mini_corpus_train_minutes": "train_minutes",
    "mini_corpus_dev_minutes": "dev_minutes",
    "mini_corpus_test_minutes": "test_minutes",
    "mini_corpus_train_speakers": "train_speakers",
    "mini_corpus_dev_speakers": "dev_speakers",
    "mini_corpus_test_speakers": "test_speakers",
    "mini_corpus_sentences": "sentences",
}


def mini_corpus_arguments(hparams):
    """The ``generate_mini_librispeech`` arguments the hparams ask for.

    Arguments
    ---------
    hparams : dict
        Loaded YAML; the optional keys of ``MINI_CORPUS_KEYS`` are read.

    Returns
    -------
    dict
        Keyword arguments (``seed`` always; the others when set).

    Example
    -------
    >>> mini_corpus_arguments({"mini_corpus_train_minutes": 2.0})
    {'seed': 0, 'train_minutes': 2.0}
    """
    kwargs = {"seed": hparams.get("mini_corpus_seed", 0)}
    for key, argument in MINI_CORPUS_KEYS.items():
        if hparams.get(key) is not None:
            kwargs[argument] = hparams[key]
    return kwargs


def resolve_data_folder(hparams):
    """The corpus root: ``data_folder``, or the generated mini corpus.

    Arguments
    ---------
    hparams : dict
        Loaded YAML with ``data_folder`` (None for the mini corpus) and
        optionally ``mini_corpus_folder`` and the keys of
        ``MINI_CORPUS_KEYS`` (seed, minutes and speakers per split).

    Returns
    -------
    str
        An existing folder.

    Raises
    ------
    ConfigError
        If a given ``data_folder`` does not exist.

    Example
    -------
    >>> resolve_data_folder({"data_folder": "/no/such/folder"})
    Traceback (most recent call last):
    ...
    s3l_plugin.config.ConfigError: data_folder /no/such/folder ...
    """
    data_folder = hparams.get("data_folder")
    if data_folder:
        if not os.path.isdir(data_folder):
            raise ConfigError(
                f"data_folder {data_folder} does not exist: pass "
                "--data_folder=/path/to/LibriSpeech (the folder holding "
                "train-clean-100/ ...), or leave it out to use the generated "
                "mini corpus"
            )
        return data_folder
    from s3l_plugin.data.mini_librispeech import generate_mini_librispeech

    folder = hparams.get("mini_corpus_folder") or DEFAULT_MINI_CORPUS
    logger.info(
        "No --data_folder given: using the synthetic mini LibriSpeech corpus "
        "at %s (generated with eSpeak NG if absent). For real LibriSpeech "
        "pass --data_folder=/path/to/LibriSpeech.",
        folder,
    )
    kwargs = mini_corpus_arguments(hparams)
    try:
        run_on_main(generate_mini_librispeech, args=[folder], kwargs=kwargs)
    except (ValueError, FileExistsError) as error:
        # E.g. the folder holds a corpus made with other arguments.
        raise ConfigError(
            f"{error} (--mini_corpus_folder), or pass --data_folder"
        ) from error
    return folder


def resolve_noise_csv(hparams, data_folder):
    """The noise CSV for the additive-noise augmentation.

    ``noise_csv`` from the YAML if given; else the noise collection that
    ships with the corpus (``<data_folder>/noise/noise.csv``, which the mini
    corpus has); else a synthetic collection (white, pink, brown, hum) is
    generated into ``<output_folder>/noise``.

    Arguments
    ---------
    hparams : dict
        Loaded YAML with ``noise_csv`` and ``output_folder``.
    data_folder : str
        Corpus root.

    Returns
    -------
    str
        Path of an existing CSV.

    Raises
    ------
    ConfigError
        If a given ``noise_csv`` does not exist.
    """
    noise_csv = hparams.get("noise_csv")
    if noise_csv:
        if not os.path.isfile(noise_csv):
            raise ConfigError(
                f"noise_csv {noise_csv} does not exist: give a CSV made by "
                "`python -m s3l_plugin.data.noise NOISE_DIR CSV`, or leave "
                "noise_csv empty to use a generated noise collection"
            )
        return noise_csv
    bundled = os.path.join(data_folder, "noise", "noise.csv")
    if os.path.isfile(bundled):
        return bundled
    noise_dir = os.path.join(hparams["output_folder"], "noise")
    noise_csv = os.path.join(noise_dir, "noise.csv")
    if not os.path.isfile(noise_csv):
        logger.info(
            "No noise_csv given: generating a synthetic noise collection "
            "(white, pink, brown, hum) in %s",
            noise_dir,
        )
        run_on_main(_generate_noise_csv, args=[noise_dir, noise_csv])
    return noise_csv


def _generate_noise_csv(noise_dir, noise_csv):
    from s3l_plugin.data.noise import generate_noise_collection, make_noise_csv

    generate_noise_collection(noise_dir)
    make_noise_csv(noise_dir, noise_csv)


def prepare_csvs(prepare, data_folder, splits, **kwargs):
    """Runs the corpus preparation on the main process.

    Arguments
    ---------
    prepare : callable
        E.g. ``prepare_librispeech``; called with ``data_folder=`` and
        ``kwargs``.
    data_folder : str
        Corpus root.
    splits : list of str
        Every split asked for, for the error message.
    **kwargs
        Passed to ``prepare``.

    Raises
    ------
    ConfigError
        If a split is missing from ``data_folder``.
    """
    try:
        run_on_main(prepare, kwargs=dict(kwargs, data_folder=data_folder))
    except FileNotFoundError as error:
        raise ConfigError(
            f"{error}: --data_folder must hold the splits {splits}"
        ) from error


def present_splits(hparams, data_folder, splits):
    """The splits the corpus has; the mini corpus lacks some test sets.

    Arguments
    ---------
    hparams : dict
        Loaded YAML (``data_folder`` None means the mini corpus).
    data_folder : str
        Resolved corpus root.
    splits : list of str
        Wanted splits.

    Returns
    -------
    list of str
        All of ``splits`` for a given ``data_folder`` (a missing one is a
        :func:`prepare_csvs` error); those present in the mini corpus.

    Example
    -------
    >>> present_splits({"data_folder": "/x"}, "/x", ["test-other"])
    ['test-other']
    """
    if hparams.get("data_folder"):
        return list(splits)
    present = [s for s in splits if os.path.isdir(os.path.join(data_folder, s))]
    if present != list(splits):
        logger.warning(
            "The mini corpus has no %s: not tested",
            sorted(set(splits) - set(present)),
        )
    return present


def load_csv_dataset(csv_path, data_folder=None):
    """A recipe CSV as a ``DynamicItemDataset``, its ``wav`` paths checked.

    SpeechBrain's CSV reader replaces ``$name`` in every field; here
    ``$data_root`` is the data folder, so ``$data_root/<path>`` is resolved
    against it. Any other ``$`` is a mistake, and so is a relative ``wav``
    path (it would be read relative to wherever the run is started).

    Arguments
    ---------
    csv_path : str
        CSV with at least the columns ``ID``, ``duration`` and ``wav``.
    data_folder : str, optional
        What ``$data_root`` stands for.

    Returns
    -------
    DynamicItemDataset

    Raises
    ------
    ConfigError
        Naming the CSV: unreadable, a missing column, a duplicate ID, a
        ``$`` other than ``$data_root``, or relative ``wav`` paths.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.csv")
    >>> _ = open(path, "w").write("ID,duration,wav\\nu1,1.0,x/u1.flac\\n")
    >>> load_csv_dataset(path, "/data")
    Traceback (most recent call last):
    ...
    s3l_plugin.config.ConfigError: ...: 1 wav path(s) relative, e.g. u1: ...
    """
    replacements = {"data_root": data_folder} if data_folder else {}
    try:
        dataset = DynamicItemDataset.from_csv(csv_path, replacements)
    except OSError as error:
        raise ConfigError(f"cannot read {csv_path}: {error}") from error
    except KeyError as error:
        message = str(error.args[0]) if error.args else str(error)
        if "requires replacements" in message:
            message += (
                " (SpeechBrain reads '$name' in a CSV as a variable; only "
                "$data_root, the data folder, is defined)"
            )
        raise ConfigError(f"{csv_path}: {message}") from error
    except (ValueError, csv.Error) as error:
        # A duplicate ID, a duration that is not a number, bad UTF-8.
        raise ConfigError(f"{csv_path}: {error}") from error
    rows = dataset.data
    if rows and not all("wav" in row for row in rows.values()):
        raise ConfigError(f"{csv_path}: no 'wav' column")
    relative = [
        (utt_id, row["wav"])
        for utt_id, row in rows.items()
        if not os.path.isabs(row["wav"])
    ]
    if relative:
        utt_id, wav = relative[0]
        raise ConfigError(
            f"{csv_path}: {len(relative)} wav path(s) relative, e.g. "
            f"{utt_id}: {wav}: write absolute paths, or start them with "
            "$data_root/ to resolve them against --data_folder"
        )
    return dataset


def resolve_librilight_folder(hparams, data_folder):
    """The Libri-light ``librispeech_finetuning`` folder, made if needed.

    ``librilight_folder`` (relative to the corpus root, or absolute); on
    the generated mini corpus (no ``data_folder``) a scaled-down copy of
    the layout is written first (``write_finetuning_sets``, one real hour
    being ``mini_corpus_seconds_per_hour`` seconds, 60 by default).

    Arguments
    ---------
    hparams : dict
        Loaded YAML: ``librilight_folder``, ``data_folder``.
    data_folder : str
        Resolved corpus root.

    Returns
    -------
    str
        ``librilight_folder`` as given (it exists under ``data_folder``).

    Raises
    ------
    ConfigError
        If the folder is missing from a given ``data_folder``.

    Example
    -------
    >>> resolve_librilight_folder(
    ...     {"data_folder": "/x", "librilight_folder": "librispeech_finetuning"},
    ...     "/x",
    ... )
    Traceback (most recent call last):
    ...
    s3l_plugin.config.ConfigError: Libri-light folder /x/librispeech_finetuning ...
    """
    folder = hparams.get("librilight_folder") or "librispeech_finetuning"
    path = os.path.join(data_folder, folder)
    if not hparams.get("data_folder"):
        from s3l_plugin.data.mini_librispeech import write_finetuning_sets

        if os.path.normpath(path) != os.path.join(
            os.path.normpath(data_folder), "librispeech_finetuning"
        ):
            raise ConfigError(
                "librilight_folder cannot be set without --data_folder: the "
                "mini corpus makes its own librispeech_finetuning/"
            )
        seconds = hparams.get("mini_corpus_seconds_per_hour") or 60.0
        try:
            run_on_main(
                write_finetuning_sets,
                args=[data_folder],
                kwargs={"seconds_per_hour": seconds},
            )
        except (ValueError, FileExistsError) as error:
            raise ConfigError(str(error)) from error
    elif not os.path.isdir(path):
        raise ConfigError(
            f"Libri-light folder {path} does not exist: unpack Libri-light's "
            "librispeech_finetuning.tgz into the LibriSpeech folder, or pass "
            "--librilight_folder=/path/to/librispeech_finetuning"
        )
    return folder
