"""Configuration checks: a run that cannot work stops at start-up.

Each mistake ends the run with one line, ``s3l: error: <what to change>``,
and exit status 2 (:func:`run_cli`), instead of failing hours later.
SpeechBrain's run options keep SpeechBrain's meaning and precedence
(default < YAML < command line).
"""

import json
import logging
import math
import os
import re
import sys

import speechbrain as sb
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml
from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
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


def training_device(hparams, run_opts):
    """The device ``Brain`` will train on (SpeechBrain's default: cuda:0
    if a GPU is visible, else cpu).

    Example
    -------
    >>> training_device({"device": "cpu"}, {})
    'cpu'
    """
    return effective_option("device", hparams, run_opts) or (
        "cuda" if torch.cuda.is_available() else "cpu"
    )


def resolve_auto_precision(hparams, run_opts):
    """Replaces ``precision: auto`` by the precision chosen for the device.

    SpeechBrain's command line only takes fp32, fp16 or bf16, so ``auto``
    comes from the YAML; an explicit ``--precision`` wins as usual. The
    choice (``s3l_plugin.runtime.resolve_precision``) is logged and written
    into ``hparams``, where ``Brain`` reads it.

    Arguments
    ---------
    hparams : dict
        Loaded YAML; modified in place.
    run_opts : RunOptions or dict
        From ``sb.parse_arguments``.

    Example
    -------
    >>> hparams = {"precision": "auto"}
    >>> resolve_auto_precision(hparams, {"precision": "fp32"})
    >>> hparams["precision"]  # the command line's value wins
    'auto'
    >>> resolve_auto_precision(hparams, {"device": "cpu"})
    >>> hparams["precision"] in ("fp32", "bf16")
    True
    """
    from s3l_plugin.runtime import cpu_bf16_speedup, resolve_precision

    if effective_option("precision", hparams, run_opts) != "auto":
        return
    device = training_device(hparams, run_opts)
    speedup = None
    if torch.device(device).type == "cpu":
        speedup = cpu_bf16_speedup()
    precision = resolve_precision("auto", device, speedup)
    reason = f"bf16 {'' if precision == 'bf16' else 'un'}supported"
    if speedup is not None:
        reason = f"bf16 matrix products at {speedup:.2f}x the fp32 speed"
    logger.info(
        "precision: auto -> %s on %s (%s); --precision=... overrides",
        precision,
        device,
        reason,
    )
    hparams["precision"] = precision


# YAML keys the recipes read as numbers -> (what they must be, the test).
# Checked on the command line's overrides before the YAML builds anything,
# and on the loaded YAML, so that a wrong value is named, not a traceback
# deep in torch.
NUMBER_RULES = {
    "number_of_epochs": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "total_steps": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "num_workers": ("an integer >= 0", lambda v: _is_int(v, 0)),
    "freeze_encoder_steps": ("an integer >= 0", lambda v: _is_int(v, 0)),
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
    device = training_device(hparams, run_opts)
    check_device(device)
    precision = effective_option("precision", hparams, run_opts, "fp32")
    if precision not in ("fp32", "fp16", "bf16"):
        raise ConfigError(
            f"precision is {precision!r}: use auto (in the YAML), fp32, "
            "fp16 or bf16"
        )
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


# What may change when a run is resumed: the top-level YAML keys that say
# where things are, how fast or how often to save and log, and how the
# finetuned model is tested. Every other key (and the run options in
# MATHS_RUN_OPTIONS) changes what is trained (docs/ARCHITECTURE.md,
# "Resuming").
RESUME_FREE_KEYS = frozenset(
    {
        "output_folder",
        "save_folder",
        "csv_folder",
        "train_log",
        "data_folder",
        "mini_corpus_folder",
        "pretrained_path",
        "skip_prep",
        "number_of_epochs",
        "precision",
        "ckpt_interval_minutes",
        "ckpt_interval_steps",
        "checkpoints_to_keep",
        "log_interval",
        "num_workers",
        "max_skipped_audio_share",
        "valid_batch_size",
        "test_batch_size",
        "test_splits",
        "attention_backend",
        "conv_impl",
        "best_key",
        "beam_search",
        "lexicon_path",
        "lm_path",
        "lm_order",
        "beam_size",
        "lm_weight",
        "word_score",
        "tune_decoder",
        "tune_lm_weights",
        "tune_word_scores",
    }
)
# Run options that change what is trained (SpeechBrain's defaults).
MATHS_RUN_OPTIONS = {"grad_accumulation_factor": 1, "max_grad_norm": 5.0}
# The one option a resume may change, by growing it.
EXTENSIBLE_KEY = "total_steps"


class _TaggedLoader(yaml.SafeLoader):
    """Reads HyperPyYAML as plain data: ``!new:f {..}`` is ``{"!new:f":..}``.

    References stay unresolved (``{"!ref": "<lr>"}``), so that a changed
    ``lr`` is one difference, not one per place that uses it.
    """


def _tagged(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"!" + suffix: value}


_TaggedLoader.add_multi_constructor("!", _tagged)
# Floats as YAML 1.2 (and HyperPyYAML) read them: 1e-3 is a number.
_TaggedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
        r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$"
    ),
    list("-+0123456789."),
)


def _merge(tree, overrides):
    """Applies ``overrides`` to ``tree`` as HyperPyYAML does.

    A mapping given for a tagged one (``--encoder={d_ffn: 64}``) goes into
    its arguments.
    """
    for key, value in overrides.items():
        target = tree.get(key)
        if _is_tagged(target) and not _is_tagged(value):
            target = next(iter(target.values()))
        if isinstance(value, dict) and isinstance(target, dict):
            _merge(target, value)
        else:
            tree[key] = value


def _is_tagged(value):
    return (
        isinstance(value, dict)
        and len(value) == 1
        and str(next(iter(value))).startswith("!")
    )


def training_options(hparams_file, overrides, hparams, run_opts):
    """What a resumed run must share with its checkpoint, as plain data.

    The YAML with the command line's overrides, its references left
    unresolved, less :data:`RESUME_FREE_KEYS`; plus the run options of
    :data:`MATHS_RUN_OPTIONS` as ``Brain`` will use them.

    Arguments
    ---------
    hparams_file : str
        The YAML file.
    overrides : str or dict
        Command-line overrides (YAML text or a dict).
    hparams : dict
        The loaded YAML.
    run_opts : RunOptions or dict
        From ``sb.parse_arguments``.

    Returns
    -------
    dict or None
        JSON-serialisable; None (with a warning) if the YAML is not plain
        YAML.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "hp.yaml")
    >>> with open(path, "w") as f:
    ...     _ = f.write("lr: 0.1\\nopt: !name:torch.optim.SGD {lr: !ref <lr>}")
    >>> training_options(path, "lr: 0.2", {}, {})["opt"]
    {'!name:torch.optim.SGD': {'lr': {'!ref': '<lr>'}}}
    """
    try:
        with open(hparams_file, encoding="utf-8") as fin:
            tree = yaml.load(fin, Loader=_TaggedLoader) or {}
        if isinstance(overrides, str):
            overrides = yaml.load(overrides, Loader=_TaggedLoader)
    except yaml.YAMLError as error:
        # YAML that HyperPyYAML reads but plain YAML does not (e.g. a
        # !!python tag): the run goes on, its options are not recorded.
        logger.warning(
            "%s cannot be read as plain YAML (%s): the options of this run "
            "are not stored with its checkpoints nor compared on resume",
            hparams_file,
            str(error).splitlines()[0],
        )
        return None
    _merge(tree, overrides or {})
    for name, default in MATHS_RUN_OPTIONS.items():
        tree[name] = effective_option(name, hparams, run_opts, default)
    tree = {k: v for k, v in tree.items() if k not in RESUME_FREE_KEYS}
    return json.loads(json.dumps(tree, sort_keys=True, default=str))


def _flatten(tree, prefix=""):
    """``{"a.b": leaf}``; a tagged node's tag is its own leaf."""
    if _is_tagged(tree):
        ((tag, value),) = tree.items()
        if not isinstance(value, dict):
            return {prefix: f"{tag} {json.dumps(value)}"}
        return {prefix: tag, **_flatten(value, prefix)}
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return flat


def check_resumed_options(saved, current, checkpoint):
    """Compares the run's options with those its checkpoint was trained with.

    Arguments
    ---------
    saved : dict
        :func:`training_options` stored with the checkpoint.
    current : dict
        This run's.
    checkpoint : str
        The checkpoint folder, for the messages.

    Returns
    -------
    int or None
        The checkpoint's ``total_steps`` if this run extends it (the
        schedules must then be rebuilt), else None.

    Raises
    ------
    ConfigError
        Naming the first changed option, its old and new values; a
        ``total_steps`` may only grow.

    Example
    -------
    >>> check_resumed_options({"total_steps": 9}, {"total_steps": 12}, "c")
    9
    >>> check_resumed_options({"lr": 0.1}, {"lr": 0.2}, "c")
    Traceback (most recent call last):
    ...
    s3l_plugin.config.ConfigError: lr was 0.1 in the checkpoint c, now 0.2: ...
    """
    old, new = _flatten(saved), _flatten(current)
    unmatched = sorted(set(old) ^ set(new))
    if unmatched:
        logger.warning(
            "Options not compared with the checkpoint %s (in only one of "
            "the two): %s",
            checkpoint,
            ", ".join(unmatched),
        )
    changed = [k for k in sorted(set(old) & set(new)) if old[k] != new[k]]
    extended = None
    if EXTENSIBLE_KEY in changed:
        try:
            grows = int(new[EXTENSIBLE_KEY]) > int(old[EXTENSIBLE_KEY])
        except (TypeError, ValueError):
            grows = False
        if grows:
            changed.remove(EXTENSIBLE_KEY)
            extended = int(old[EXTENSIBLE_KEY])
    if not changed:
        return extended
    key = changed[0]
    more = ""
    if len(changed) > 1:
        more = f" (and {len(changed) - 1} more: {', '.join(changed[1:4])})"
    hint = "it can only grow on resume" if key == EXTENSIBLE_KEY else ""
    raise ConfigError(
        f"{key} was {_show(old[key])} in the checkpoint {checkpoint}, now "
        f"{_show(new[key])}{more}: a resumed run keeps the options it was "
        f"trained with{' (' + hint + ')' if hint else ''}; resume with the "
        "old value, or pass --restart to move the checkpoints aside and "
        "start afresh, or use another --output_folder"
    )


def _show(value):
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def parse_arguments(argv):
    """SpeechBrain's ``parse_arguments``, plus ``--restart``.

    Arguments
    ---------
    argv : list of str
        Command-line arguments (YAML file, then options).

    Returns
    -------
    hparams_file, run_opts, overrides
        As ``sb.parse_arguments``.
    restart : bool
        Whether ``--restart`` was given (see ``start_experiment``).

    Example
    -------
    >>> parse_arguments(["hp.yaml", "--restart", "--lr=0.1"])[2:]
    ('lr: 0.1', True)
    """
    restart = "--restart" in argv
    argv = [arg for arg in argv if arg != "--restart"]
    return (*sb.parse_arguments(argv), restart)


def _plain_overrides(overrides):
    """The overrides as a dict; {} if they hold YAML tags (``!ref``...).

    Read as HyperPyYAML reads them (ruamel, YAML 1.2: ``1e-3`` is a
    number, which PyYAML would read as a string).

    Raises
    ------
    ConfigError
        If a key is given twice.

    Example
    -------
    >>> _plain_overrides("lr: 1e-3\\ntotal_steps: abc")
    {'lr': 0.001, 'total_steps': 'abc'}
    >>> _plain_overrides("lr: 0.1\\nlr: 0.2")
    Traceback (most recent call last):
    ...
    s3l_plugin.config.ConfigError: --lr is given twice (0.1 and 0.2): ...
    """
    if isinstance(overrides, dict):
        return overrides
    try:
        values = YAML(typ="safe").load(overrides or "{}")
    except DuplicateKeyError as error:
        # A YAML key given twice on the command line (HyperPyYAML would
        # stop with a traceback; the run options, such as --device, are
        # argparse's, where the last one wins).
        found = re.search(
            r'key "([^"]*)" with value "([^"]*)" \(original value: "([^"]*)"',
            str(error.problem),
        )
        key, new, old = found.groups() if found else ("?", "?", "?")
        raise ConfigError(
            f"--{key} is given twice ({old} and {new}): give it once"
        ) from error
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
