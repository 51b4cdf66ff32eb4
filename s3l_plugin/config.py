"""Configuration checks: a run that cannot work stops at start-up.

Each mistake ends the run with one line, ``s3l: error: <what to change>``,
and exit status 2 (:func:`run_cli`), instead of failing hours later.
SpeechBrain's run options keep SpeechBrain's meaning and precedence
(default < YAML < command line).
"""

import logging
import math
import os
import sys

import torch
from hyperpyyaml import load_hyperpyyaml
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration that cannot work; the message says what to change."""


class NonFiniteError(RuntimeError):
    """More non-finite losses in an epoch than ``--nonfinite_patience``."""


class RunInterrupted(RuntimeError):
    """A signal stopped the run, once a checkpoint was saved.

    Arguments
    ---------
    message : str
        What happened and how to resume.
    signum : int
        The signal (``signal.SIGTERM``, ``signal.SIGINT``).
    """

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = int(signum)


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


# YAML keys the recipes read as numbers -> (what they must be, the test).
# Checked on the command line's overrides before the YAML builds anything,
# and on the loaded YAML, so that a wrong value is named, not a traceback
# deep in torch.
NUMBER_RULES = {
    "number_of_epochs": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "total_steps": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "num_workers": ("an integer >= 0", lambda v: _is_int(v, 0)),
    "lr": ("a number > 0", lambda v: _is_number(v) and v > 0),
    "lr_encoder": ("a number > 0", lambda v: _is_number(v) and v > 0),
    "lr_head": ("a number > 0", lambda v: _is_number(v) and v > 0),
    "max_skipped_audio_share": (
        "a number from 0 to 1 (the share of an epoch's training audio "
        "files that may be unusable; 1 never stops the run)",
        lambda v: _is_number(v) and 0 <= v <= 1,
    ),
}


def _is_number(value):
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _is_int(value, lowest):
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (value >= lowest)
    )


def check_numbers(values):
    """Checks the numeric keys of :data:`NUMBER_RULES` found in ``values``.

    Arguments
    ---------
    values : dict
        Loaded YAML, or the command line's overrides.

    Raises
    ------
    ConfigError
        Naming the first key whose value is wrong.

    Example
    -------
    >>> check_numbers({"total_steps": "abc"})
    Traceback (most recent call last):
    ...
    s3l_plugin.config.ConfigError: total_steps is 'abc': it must be an ...
    """
    for key, (requirement, valid) in NUMBER_RULES.items():
        if key in values and not valid(values[key]):
            raise ConfigError(
                f"{key} is {values[key]!r}: it must be {requirement}"
            )


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
        gradient), a gradient accumulation factor below 1, a CUDA device
        this machine does not have, fp16 on a machine without CUDA, bf16
        on a GPU without it, a negative ``nonfinite_patience`` or
        checkpoint interval, or a key of :data:`NUMBER_RULES` out of range.

    Example
    -------
    >>> check_run_options({"max_grad_norm": -1}, {})
    Traceback (most recent call last):
    ...
    s3l_plugin.config.ConfigError: max_grad_norm is -1: ...
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
    check_device(device)
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
            f"nonfinite_patience is {patience}: it must be >= 0 (as in "
            "SpeechBrain, the number of batches per epoch whose loss may be "
            "non-finite before the run stops)"
        )
    for name in ("ckpt_interval_minutes", "ckpt_interval_steps"):
        interval = effective_option(name, hparams, run_opts, 0)
        if interval is None or interval < 0:
            raise ConfigError(
                f"{name} is {interval}: it must be >= 0 (0 turns "
                "intra-epoch checkpoints off)"
            )
    check_numbers(hparams)


def check_device(device):
    """Refuses a CUDA device this machine does not have.

    Arguments
    ---------
    device : str
        E.g. ``cpu``, ``cuda``, ``cuda:1``.

    Raises
    ------
    ConfigError
        Saying which devices there are.

    Example
    -------
    >>> check_device("cpu")
    """
    device = str(device)
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {device}: no CUDA GPU is usable here (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}): use "
            "--device=cpu"
        )
    index = device.partition(":")[2]
    count = torch.cuda.device_count()
    if index and (not index.isdigit() or int(index) >= count):
        raise ConfigError(
            f"device {device}: this machine has {count} CUDA GPU(s), "
            f"cuda:0 to cuda:{count - 1}"
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


def load_yaml(hparams_file, overrides):
    """Loads the YAML; a mistake in it or in an override is a ConfigError.

    Building the YAML's objects (encoder, losses...) is where unknown
    options and impossible values show up.

    Arguments
    ---------
    hparams_file : str
        The YAML file.
    overrides : str or dict
        Command-line overrides.

    Returns
    -------
    dict
        The loaded hyperparameters.

    Raises
    ------
    ConfigError
        For an unreadable file, an override of an unknown key or out of
        the range of :data:`NUMBER_RULES`, or a value (or a file) an
        object refuses.

    Example
    -------
    >>> load_yaml("/no/such.yaml", {})
    Traceback (most recent call last):
    ...
    s3l_plugin.config.ConfigError: cannot read /no/such.yaml: ...
    """
    try:
        with open(hparams_file, encoding="utf-8") as fin:
            text = fin.read()
    except OSError as error:
        raise ConfigError(f"cannot read {hparams_file}: {error}") from error
    check_numbers(_plain_overrides(overrides))
    try:
        return load_hyperpyyaml(text, overrides)
    except KeyError as error:
        message = str(error.args[0]) if error.args else str(error)
        if message.startswith("Override '"):
            key = message.split("'")[1]
            message = (
                f"--{key} is neither a run option nor a key of "
                f"{hparams_file}: check its spelling"
            )
        raise ConfigError(message) from error
    except (ValueError, TypeError, OSError) as error:
        # E.g. a pretrained_path without encoder_config.json.
        raise ConfigError(f"{hparams_file}: {error}") from error


def _plain_overrides(overrides):
    """The overrides as a dict; {} if they hold YAML tags (``!ref``...).

    Read as HyperPyYAML reads them (ruamel, YAML 1.2: ``1e-3`` is a
    number, which PyYAML would read as a string).

    Example
    -------
    >>> _plain_overrides("lr: 1e-3\\ntotal_steps: abc")
    {'lr': 0.001, 'total_steps': 'abc'}
    """
    if isinstance(overrides, dict):
        return overrides
    try:
        values = YAML(typ="safe").load(overrides or "{}")
    except YAMLError:
        return {}  # load_hyperpyyaml reads them and names any mistake
    return dict(values) if isinstance(values, dict) else {}


def run_cli(run, argv):
    """Runs a recipe; known mistakes end with one line, not a trace.

    ``ConfigError`` exits with status 2, ``NonFiniteError`` with status 1
    and ``RunInterrupted`` with 128 + the signal's number (what a shell
    reports for a process the signal ended), after printing ``s3l: error:
    <message>`` (also logged once logging is set up).

    Arguments
    ---------
    run : callable
        The recipe, called with ``argv``.
    argv : list of str
        Command-line arguments.

    Returns
    -------
    object
        What ``run`` returns.

    Example
    -------
    >>> def run(argv):
    ...     raise ConfigError("bad\\n value")
    >>> run_cli(run, [])
    Traceback (most recent call last):
    ...
    SystemExit: 2
    """
    try:
        return run(argv)
    except ConfigError as error:
        _exit(error, 2)
    except NonFiniteError as error:
        _exit(error, 1)
    except RunInterrupted as error:
        _exit(error, 128 + error.signum)


def _exit(error, status):
    message = "s3l: error: " + " ".join(str(error).split())
    if logging.getLogger().handlers:
        logger.error(message)  # into log.txt, once logging is set up
    print(message, file=sys.stderr, flush=True)
    sys.exit(status)


def check_ctc_config(hparams, vocab_size):
    """Start-up checks of a CTC finetuning configuration.

    Arguments
    ---------
    hparams : dict
        Loaded YAML: ``best_key``, ``head``, ``vocab``, ``beam_search``,
        ``lexicon_path`` and ``lm_path``.
    vocab_size : int
        Tokens of the output vocabulary (the blank included).

    Raises
    ------
    ConfigError
        A ``best_key`` other than WER or CER, a head whose output size is
        not the vocabulary's, or a missing lexicon or LM file.

    Example
    -------
    >>> check_ctc_config({"best_key": "loss"}, 29)
    Traceback (most recent call last):
    ...
    s3l_plugin.config.ConfigError: best_key is loss: it must be WER or CER
    """
    if hparams["best_key"] not in ("WER", "CER"):
        raise ConfigError(
            f"best_key is {hparams['best_key']}: it must be WER or CER"
        )
    if hparams["head"].vocab_size != vocab_size:
        raise ConfigError(
            f"output_neurons is {hparams['head'].vocab_size} but the "
            f"{hparams['vocab']} vocabulary has {vocab_size} tokens: set "
            f"--output_neurons={vocab_size}"
        )
    if hparams["beam_search"]:
        for key in ("lexicon_path", "lm_path"):
            path = hparams[key]
            if path and not os.path.isfile(path):
                raise ConfigError(f"{key} {path} does not exist")
        if bool(hparams["lexicon_path"]) != bool(hparams["lm_path"]):
            raise ConfigError(
                "give both lexicon_path and lm_path (or neither, to build "
                "them from the training transcripts)"
            )
