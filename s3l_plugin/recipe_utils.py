"""Start-up checks and defaults shared by the pretraining and ASR recipes.

Configuration mistakes stop the run at start-up with one line saying what to
change, instead of failing hours later.
"""

import logging
import os

import torch
from speechbrain.utils.distributed import run_on_main

logger = logging.getLogger(__name__)

DEFAULT_MINI_CORPUS = os.path.join("data", "mini_librispeech")


class ConfigError(ValueError):
    """A configuration that cannot work; the message says what to change."""


def effective_option(name, hparams, run_opts, default=None):
    """The value ``Brain`` will use for a run option.

    SpeechBrain's precedence: command line > YAML > default.

    Arguments
    ---------
    name : str
        Run option name, e.g. ``max_grad_norm``.
    hparams : dict
        Loaded YAML.
    run_opts : RunOptions or dict
        From ``sb.parse_arguments``.
    default : object
        Used when neither sets it.

    Returns
    -------
    object

    Example
    -------
    >>> effective_option("max_grad_norm", {"max_grad_norm": 10.0}, {})
    10.0
    """
    overridden = getattr(run_opts, "overridden_args", None)
    if overridden is None and isinstance(run_opts, dict):
        overridden = run_opts.keys()
    if overridden and name in overridden:
        return run_opts[name]
    return hparams.get(name, default)


def check_run_options(hparams, run_opts):
    """Rejects run options that would silently train wrongly.

    Arguments
    ---------
    hparams : dict
        Loaded YAML.
    run_opts : RunOptions or dict
        From ``sb.parse_arguments``.

    Raises
    ------
    ConfigError
        ``max_grad_norm <= 0`` (SpeechBrain would flip or zero every
        gradient), a gradient accumulation factor below 1, fp16 on a
        machine without CUDA, bf16 on a GPU without it, or a negative
        ``nonfinite_patience``.

    Example
    -------
    >>> check_run_options({"max_grad_norm": -1}, {})
    Traceback (most recent call last):
    ...
    s3l_plugin.recipe_utils.ConfigError: max_grad_norm is -1: ...
    """
    norm = effective_option("max_grad_norm", hparams, run_opts, 5.0)
    if norm is None or norm <= 0:
        raise ConfigError(
            f"max_grad_norm is {norm}: it must be > 0 (SpeechBrain flips or "
            "zeroes gradients otherwise); set e.g. --max_grad_norm=1e9 to "
            "make clipping a no-op"
        )
    factor = effective_option("grad_accumulation_factor", hparams, run_opts, 1)
    if int(factor) < 1:
        raise ConfigError(
            f"grad_accumulation_factor is {factor}: it must be >= 1"
        )
    device = effective_option("device", hparams, run_opts) or (
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    precision = effective_option("precision", hparams, run_opts, "fp32")
    if precision == "fp16" and not str(device).startswith("cuda"):
        raise ConfigError(
            f"precision fp16 is not supported on {device}: use "
            "--precision=bf16 or --precision=fp32"
        )
    if (
        precision == "bf16"
        and str(device).startswith("cuda")
        and torch.cuda.is_available()
        and not torch.cuda.is_bf16_supported()
    ):
        raise ConfigError(
            f"precision bf16 is not supported by this GPU ({device}): use "
            "--precision=fp16 or --precision=fp32"
        )
    patience = effective_option("nonfinite_patience", hparams, run_opts, 3)
    if patience is None or int(patience) < 0:
        raise ConfigError(
            f"nonfinite_patience is {patience}: it must be >= 0 (the number "
            "of optimizer steps in a row with a non-finite loss or gradient "
            "that are skipped before the run stops)"
        )


def resolve_checkpoint_interval(hparams, run_opts):
    """Lets an interval given on the command line replace the YAML's.

    SpeechBrain refuses ``ckpt_interval_minutes`` and
    ``ckpt_interval_steps`` both above 0. When the YAML sets one and the
    command line the other, the command line's wins and the YAML's is set
    to 0 in ``hparams`` (which ``Brain`` reads).

    Arguments
    ---------
    hparams : dict
        Loaded YAML; modified in place.
    run_opts : RunOptions or dict
        From ``sb.parse_arguments``.

    Raises
    ------
    ConfigError
        If both are given above 0 on the command line, or in the YAML.

    Example
    -------
    >>> hparams = {"ckpt_interval_minutes": 2}
    >>> run_opts = {"ckpt_interval_steps": 10}
    >>> resolve_checkpoint_interval(hparams, run_opts)
    >>> hparams["ckpt_interval_minutes"]
    0
    """
    names = ("ckpt_interval_minutes", "ckpt_interval_steps")
    values = {
        name: effective_option(name, hparams, run_opts, 0) or 0
        for name in names
    }
    if not all(value > 0 for value in values.values()):
        return
    overridden = getattr(run_opts, "overridden_args", None)
    if overridden is None and isinstance(run_opts, dict):
        overridden = set(run_opts.keys())
    on_cli = [name for name in names if name in (overridden or ())]
    if len(on_cli) != 1:
        raise ConfigError(
            "ckpt_interval_minutes and ckpt_interval_steps are both set "
            f"({values[names[0]]} and {values[names[1]]}): keep one, e.g. "
            "add --ckpt_interval_minutes=0"
        )
    (other,) = set(names) - set(on_cli)
    logger.info(
        "--%s given: the YAML's %s (%s) is turned off",
        on_cli[0],
        other,
        values[other],
    )
    hparams[other] = 0


def seed_rank(seed, rank):
    """Gives each DDP rank its own random streams, after model building.

    SpeechBrain seeds every rank alike, so that the models they build are
    identical; the ranks would then also draw the same augmentations and
    dropout masks. Call this once the modules exist. Rank 0 keeps its
    stream, so a one-process run is unchanged.

    Arguments
    ---------
    seed : int
        The run's seed.
    rank : int
        This process's rank.

    Example
    -------
    >>> seed_rank(1986, 1)
    >>> a = torch.rand(1)
    >>> seed_rank(1986, 1)
    >>> torch.equal(a, torch.rand(1))
    True
    """
    if rank == 0:
        return
    import random

    import numpy

    derived = (int(seed) + 1000003 * int(rank)) % (2**32)
    random.seed(derived)
    numpy.random.seed(derived)
    torch.manual_seed(derived)


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
    s3l_plugin.recipe_utils.ConfigError: data_folder /no/such/folder ...
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
