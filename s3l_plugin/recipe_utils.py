"""What the pretraining and ASR recipes share.

- Start-up checks and defaults: configuration mistakes stop the run at
  start-up with one line saying what to change (:func:`run_cli`), instead
  of failing hours later.
- Data loaders: dynamic or fixed-size batches, own generators.
- Exact resume (:func:`prepare_resume`) and guarded optimizer steps with
  bad-audio skipping and a cost report (:class:`GuardedTrainingMixin`).
"""

import logging
import os
import sys
from contextlib import nullcontext

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.sampler import DynamicBatchSampler
from speechbrain.utils.distributed import if_main_process, run_on_main

from s3l_plugin.checkpointing import (
    CheckpointMismatchError,
    PerRankState,
    RandomState,
    check_checkpoint_compatible,
)
from s3l_plugin.cost import CostTracker
from s3l_plugin.data.audio import EmptyBatch
from s3l_plugin.data.batching import quantile_bucket_boundaries

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


# ---- Loading the YAML -------------------------------------------------------
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
        For an unreadable file, an override of an unknown key, or a value
        an object refuses.

    Example
    -------
    >>> load_yaml("/no/such.yaml", {})
    Traceback (most recent call last):
    ...
    s3l_plugin.recipe_utils.ConfigError: cannot read /no/such.yaml: ...
    """
    try:
        with open(hparams_file, encoding="utf-8") as fin:
            return load_hyperpyyaml(fin, overrides)
    except OSError as error:
        raise ConfigError(f"cannot read {hparams_file}: {error}") from error
    except KeyError as error:
        message = str(error.args[0]) if error.args else str(error)
        if message.startswith("Override '"):
            key = message.split("'")[1]
            message = (
                f"--{key} is neither a run option nor a key of "
                f"{hparams_file}: check its spelling"
            )
        raise ConfigError(message) from error
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{hparams_file}: {error}") from error


# ---- Command line -----------------------------------------------------------
class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


def run_cli(run, argv):
    """Runs a recipe; known mistakes end with one line, not a trace.

    ``ConfigError`` exits with status 2 and ``NonFiniteError`` with status
    1, after printing ``s3l: error: <message>`` (also logged once logging
    is set up).

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


def _exit(error, status):
    message = "s3l: error: " + " ".join(str(error).split())
    if logging.getLogger().handlers:
        logger.error(message)  # into log.txt, once logging is set up
    print(message, file=sys.stderr, flush=True)
    sys.exit(status)


# ---- Data loaders -----------------------------------------------------------
def make_train_sampler(hparams, dataset):
    """The training batch sampler, or None for fixed-size batches.

    ``dynamic_batching`` (default True) groups utterances of similar
    duration into batches of at most ``dynamic_batch_sampler``'s
    ``max_batch_length`` seconds of padded audio. With ``quantile_buckets``
    (default True) its ``num_buckets`` bucket boundaries sit at quantiles
    of the training durations (``s3l_plugin.data.batching``) instead of
    SpeechBrain's log-normal spread up to ``max_batch_length``. False
    gives shuffled batches of ``batch_size`` utterances (see
    :func:`train_loader_kwargs`).

    Arguments
    ---------
    hparams : dict
        Loaded YAML.
    dataset : DynamicItemDataset
        The training set (with a ``duration`` column).

    Returns
    -------
    DynamicBatchSampler or None
    """
    if not hparams.get("dynamic_batching", True):
        logger.info(
            "dynamic_batching is False: shuffled batches of %d utterances",
            hparams["batch_size"],
        )
        return None
    config = dict(hparams["dynamic_batch_sampler"])
    if hparams.get("quantile_buckets", True) and "bucket_boundaries" not in (
        config
    ):
        durations = [
            float(dataset.data[data_id]["duration"])
            for data_id in dataset.data_ids
        ]
        config["bucket_boundaries"] = quantile_bucket_boundaries(
            durations, config.pop("num_buckets", 60)
        )
        logger.info(
            "Dynamic batches: %d duration buckets at quantiles up to %.1f s",
            len(config["bucket_boundaries"]),
            config["bucket_boundaries"][-1],
        )
    return DynamicBatchSampler(
        dataset,
        length_func=lambda example: example["duration"],
        **config,
    )


def train_loader_kwargs(hparams, collate, sampler=None):
    """``Brain.fit``'s ``train_loader_kwargs``.

    With a ``sampler`` it is the batch sampler (the caller sets
    ``brain.train_sampler`` so that it is reshuffled every epoch); without,
    ``batch_size`` utterances with ``shuffle=True``, for which SpeechBrain
    builds a ``ReproducibleRandomSampler`` that it reshuffles every epoch
    and checkpoints.

    The loader has its own generator: a DataLoader otherwise draws its
    workers' base seed from the global generator each epoch, and a resumed
    run (which restores that generator first) would draw it once more.

    Arguments
    ---------
    hparams : dict
        Loaded YAML: ``seed``, ``num_workers`` and, without a sampler,
        ``batch_size``.
    collate : callable
        The collate function.
    sampler : torch.utils.data.Sampler, optional
        A batch sampler.

    Returns
    -------
    dict

    Example
    -------
    >>> kwargs = train_loader_kwargs(
    ...     {"seed": 1, "num_workers": 0, "batch_size": 4}, None
    ... )
    >>> kwargs["batch_size"], kwargs["shuffle"]
    (4, True)
    """
    kwargs = eval_loader_kwargs(hparams, collate)
    if sampler is not None:
        kwargs["batch_sampler"] = sampler
    else:
        kwargs.update(batch_size=hparams["batch_size"], shuffle=True)
    return kwargs


def eval_loader_kwargs(hparams, collate, batch_size=None):
    """Loader kwargs for evaluation (and the base of the training ones).

    Arguments
    ---------
    hparams : dict
        Loaded YAML: ``seed`` and ``num_workers``.
    collate : callable
        The collate function.
    batch_size : int, optional
        Utterances per batch.

    Returns
    -------
    dict
    """
    kwargs = {
        "collate_fn": collate,
        "num_workers": hparams["num_workers"],
        "generator": torch.Generator().manual_seed(hparams["seed"]),
    }
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    return kwargs


# ---- Resumable runs ---------------------------------------------------------
def prepare_resume(checkpointer, brain, extra_recoverables=None):
    """Registers what an exact resume needs; checks the checkpoint fits.

    Adds the per-process random generators (``random_state``), the
    ``extra_recoverables`` and the Brain's counters (both optional on load,
    so older checkpoints still load), removes incomplete checkpoints (a
    save killed midway) and checks that the latest checkpoint fits the
    modules.

    Arguments
    ---------
    checkpointer : AtomicCheckpointer
        The run's checkpointer, its module recoverables registered.
    brain : GuardedTrainingMixin
        Provides ``counters_state`` and ``load_counters_state``.
    extra_recoverables : dict, optional
        More name -> recoverable, e.g. a noise stream.

    Returns
    -------
    str or None
        The checkpoint the run resumes from, None if it starts afresh.

    Raises
    ------
    ConfigError
        If the latest checkpoint was written by another architecture.
    """
    checkpointer.add_recoverable("random_state", RandomState())
    for name, recoverable in (extra_recoverables or {}).items():
        checkpointer.add_recoverable(name, recoverable, optional_load=True)
    checkpointer.add_recoverable(
        "counters",
        PerRankState(brain.counters_state, brain.load_counters_state),
        optional_load=True,
    )
    checkpointer.remove_incomplete()
    try:
        resumed = check_checkpoint_compatible(checkpointer)
    except CheckpointMismatchError as error:
        raise ConfigError(str(error)) from error
    if resumed:
        logger.info("Resuming from %s", resumed)
    return resumed


# ---- Guarded training steps -------------------------------------------------
CRASH_ENV = "S3L_TEST_CRASH_AFTER_STEPS"
DUMP_ENV = "S3L_TEST_DUMP_DIR"
CRASH_EXIT_CODE = 86


class GuardedTrainingMixin:
    """What the recipes' Brains share to train reliably; mix in before Brain.

    ``fit_batch`` replaces SpeechBrain's so that an optimizer step happens
    only when it can do good: a window of micro-batches whose audio was all
    unusable (``EmptyBatch`` from ``SkipBadAudioCollate(empty_batch=True)``),
    or whose loss or gradient is not finite, leaves the model, the LR
    schedule and the step count untouched. Every parameter group of every
    optimizer in ``optimizers_dict`` is clipped (per optimizer) with
    ``max_grad_norm``. More than ``nonfinite_patience`` non-finite steps in
    a row raise :class:`NonFiniteError`.

    Skipped audio files are logged (main process) with their reason and
    counted in ``skipped_audio``; under DDP the decision to step and the
    skipped files are gathered from every rank. ``on_fit_batch_end``
    receives ``should_step=True`` only when the optimizer did step.

    With ``cost_tracker`` set (see :meth:`start_cost_tracker`) every
    training micro-batch is measured, and :meth:`write_cost` writes
    ``cost.json`` (main process).

    A subclass provides ``_placeholder_backward`` (zero gradients through
    its DDP modules, for a rank whose batch was empty) and the usual Brain
    methods; evaluation stages should compute their loss from the batches
    actually evaluated (an empty batch gives NaN, which SpeechBrain's
    running average skips but still counts).

    Test hooks (environment variables, for the test suite only):
    ``S3L_TEST_CRASH_AFTER_STEPS=N`` ends the process abruptly (as
    ``kill -9`` would) right after optimizer step N; ``S3L_TEST_DUMP_DIR``
    is read by :meth:`dump_for_tests`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped_audio = 0
        self.nonfinite_steps = 0
        self.nonfinite_in_a_row = 0
        self._pending_skips = []
        self._crash_after = int(os.environ.get(CRASH_ENV) or 0)
        self.batch_log = [] if os.environ.get(DUMP_ENV) else None
        self._epoch = None
        self.cost_tracker = None
        self._reset_window()

    # ---- One micro-batch ---------------------------------------------------
    def fit_batch(self, batch):
        """One micro-batch: forward, backward, and a guarded optimizer step.

        An ``EmptyBatch`` (all its audio was unusable) adds nothing; under
        DDP its rank still joins the gradient all-reduce, with zero
        gradients.

        Arguments
        ---------
        batch : PaddedBatch or EmptyBatch
            From :class:`SkipBadAudioCollate`.

        Returns
        -------
        torch.Tensor
            The detached loss (NaN for an empty batch, which SpeechBrain's
            running average ignores).
        """
        factor = self.grad_accumulation_factor
        should_step = self.step % factor == 0
        self._note_skipped(batch.skipped, sb.Stage.TRAIN)
        if self.batch_log is not None:
            self.batch_log.append((self._epoch, list(batch.id)))
        self.on_fit_batch_start(batch, should_step)
        loss = outputs = None
        with self.no_sync(not should_step):
            if not isinstance(batch, EmptyBatch):
                with self._measure(batch):
                    with self.training_ctx:
                        outputs = self.compute_forward(batch, sb.Stage.TRAIN)
                        loss = self.compute_objectives(
                            outputs, batch, sb.Stage.TRAIN
                        )
                    self.scaler.scale(loss / factor).backward()
                self._window_nonfinite_loss |= ~torch.isfinite(loss.detach())
                self._window_batches += 1
            elif self.distributed_launch:
                self._placeholder_backward()
        stepped = self._step_optimizer() if should_step else False
        self.on_fit_batch_end(batch, outputs, loss, stepped)
        if stepped and self._crash_after:
            self._maybe_crash()
        if loss is None:
            return torch.tensor(float("nan"))
        return loss.detach().cpu()

    def _measure(self, batch):
        """The cost tracker's context for this micro-batch (or a no-op)."""
        if self.cost_tracker is None:
            return nullcontext()
        wavs, rel_lens = batch.sig
        samples = wavs.shape[-1] / self.hparams.sample_rate
        return self.cost_tracker.micro_batch(
            audio_seconds=float(rel_lens.sum()) * samples,
            padded_seconds=wavs.shape[0] * samples,
        )

    def _maybe_crash(self):
        if self.optimizer_step >= self._crash_after:
            # Test hook: dies like a killed process (no clean-up, no save).
            logging.shutdown()
            os._exit(CRASH_EXIT_CODE)

    def _reset_window(self):
        """Forgets the state of the accumulation window."""
        self._window_batches = 0
        self._window_nonfinite_loss = torch.zeros(
            (), dtype=torch.bool, device=self.device
        )

    def _placeholder_backward(self):
        """Zero gradients through the DDP modules, for a rank with no data.

        The other ranks' backward passes wait for this rank's gradients
        (and the forward broadcasts buffers): skipping would hang them.
        """
        raise NotImplementedError

    def _step_optimizer(self):
        """Applies the window's gradients, unless it cannot do good.

        Skipped (gradients dropped, no LR or step count change): a window
        with no usable audio on any rank, or a non-finite loss or gradient
        norm on any rank. The decision is all-reduced, so every DDP rank
        takes the same one.

        Returns
        -------
        bool
            Whether the optimizer stepped.
        """
        local_batches = self._window_batches
        nonfinite_loss = self._window_nonfinite_loss
        self._reset_window()
        if local_batches == 0 and not self.distributed_launch:
            self.zero_grad(set_to_none=True)
            self._log_skipped_step("no usable audio in its batches")
            return False
        optimizers = list(self.optimizers_dict.values())
        norms = []
        for optimizer in optimizers:
            self.scaler.unscale_(optimizer)
            params = [
                param
                for group in optimizer.param_groups
                for param in group["params"]
            ]
            # Every parameter group (SpeechBrain clips group 0 only).
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
            norms.append(norm.to(self.device))
        flags = torch.stack(
            [
                nonfinite_loss.float(),
                (~torch.isfinite(torch.stack(norms))).any().float(),
                torch.tensor(float(local_batches), device=self.device),
            ]
        )
        if self.distributed_launch:
            torch.distributed.all_reduce(flags)
        bad_loss, bad_grad, batches = (float(flag) for flag in flags)
        if batches and not (bad_loss or bad_grad):
            for optimizer in optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
            self.zero_grad(set_to_none=True)
            self.optimizer_step += 1
            self.nonfinite_in_a_row = 0
            return True
        self.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.update()  # lowers the fp16 loss scale on overflow
        if not batches:
            self._log_skipped_step("no usable audio in its batches")
        elif (
            self.scaler.is_enabled()
            and not bad_loss
            and self.scaler.get_scale() >= 1.0
        ):
            # fp16 overflow: the loss scaler's business, not a failure
            # (unless the scale has already collapsed below 1).
            self._log_skipped_step(
                "fp16 gradient overflow, loss scale lowered to %g",
                self.scaler.get_scale(),
                level=logging.INFO,
            )
        else:
            self._count_nonfinite("loss" if bad_loss else "gradient")
        return False

    def _log_skipped_step(self, reason, *args, level=logging.WARNING):
        # Every rank takes the same decision: the main process says it.
        if if_main_process():
            logger.log(
                level,
                "Optimizer step %d skipped: " + reason,
                self.optimizer_step + 1,
                *args,
            )

    def _count_nonfinite(self, what):
        self.nonfinite_in_a_row += 1
        self.nonfinite_steps += 1
        patience = self.nonfinite_patience
        self._log_skipped_step(
            "non-finite %s (%d in a row, %d in all; the run stops after "
            "more than %d in a row)",
            what,
            self.nonfinite_in_a_row,
            self.nonfinite_steps,
            patience,
        )
        if self.nonfinite_in_a_row > patience:
            raise NonFiniteError(
                f"{self.nonfinite_in_a_row} optimizer steps in a row had a "
                f"non-finite {what} (after step {self.optimizer_step}, epoch "
                f"{self._epoch}); lower the learning rate, check the data, "
                "or train in --precision=fp32 (--nonfinite_patience sets how "
                f"many in a row are skipped, now {patience})"
            )

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time, steps_since_ckpt):
        # Save only on optimizer-step boundaries: a checkpoint in the middle
        # of an accumulation window would lose the gradients gathered so far
        # and a resumed run would differ from an uninterrupted one.
        boundary = self.step % self.grad_accumulation_factor == 0
        return boundary and super()._should_save_intra_epoch_ckpt(
            last_ckpt_time, steps_since_ckpt
        )

    # ---- Evaluation and skipped audio --------------------------------------
    def evaluate_batch(self, batch, stage):
        """Evaluates one batch, skipping one whose audio was all unusable."""
        self._note_skipped(batch.skipped, stage)
        if isinstance(batch, EmptyBatch):
            return torch.tensor(float("nan"))
        return super().evaluate_batch(batch, stage)

    def _note_skipped(self, skipped, stage):
        """Queues skipped files for logging in the main process."""
        if stage != sb.Stage.TRAIN and self.rank_index != 0:
            return  # every rank evaluates the same files: count them once
        self._pending_skips.extend(skipped)
        if not self.distributed_launch:
            self._flush_skipped()

    def _flush_skipped(self):
        """Logs (main process) and counts the files skipped on all ranks.

        Collective under DDP: every rank calls it at the same points.
        """
        pending, self._pending_skips = self._pending_skips, []
        gathered = [pending]
        if self.distributed_launch:
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, pending)
        for rank_skips in gathered:
            for utt_id, reason in rank_skips:
                self.skipped_audio += 1
                if if_main_process():
                    logger.warning("Skipped audio %s: %s", utt_id, reason)

    @property
    def rank_index(self):
        """This process's rank (0 when not distributed)."""
        if self.distributed_launch:
            return torch.distributed.get_rank()
        return 0

    # ---- Checkpointed counters ---------------------------------------------
    def counters_state(self):
        """The run's counters, for the checkpoint."""
        return {
            "skipped_audio": self.skipped_audio,
            "nonfinite_steps": self.nonfinite_steps,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
        }

    def load_counters_state(self, state):
        """Restores :meth:`counters_state`."""
        self.skipped_audio = state["skipped_audio"]
        self.nonfinite_steps = state["nonfinite_steps"]
        self.nonfinite_in_a_row = state["nonfinite_in_a_row"]

    # ---- Cost report -------------------------------------------------------
    def start_cost_tracker(self, projection=None):
        """Measures the training micro-batches from now on.

        Arguments
        ---------
        projection : dict, optional
            ``steps``, ``micro_batches``, ``batch_seconds`` of the run the
            cost is projected to (default: the paper's pretraining).
        """
        self.cost_tracker = CostTracker(
            self.hparams.output_folder, self.device, projection=projection
        )

    def write_cost(self):
        """Writes ``<output_folder>/cost.json`` (main process only).

        Returns
        -------
        dict or None
            The report written, None if not written here.
        """
        if self.cost_tracker is None or not if_main_process():
            return None
        return self.cost_tracker.write(
            {
                "optimizer_steps": self.optimizer_step,
                "epoch": self._epoch,
                "skipped_audio": self.skipped_audio,
                "nonfinite_steps": self.nonfinite_steps,
            }
        )

    # ---- Test hook ---------------------------------------------------------
    def dump_for_tests(self, state):
        """Test hook: writes ``state`` and this rank's batches and counters.

        Only with ``S3L_TEST_DUMP_DIR`` set, to ``<it>/rank<R>.pt``.

        Arguments
        ---------
        state : dict
            E.g. the final state dicts of the models.
        """
        folder = os.environ.get(DUMP_ENV)
        if not folder:
            return
        os.makedirs(folder, exist_ok=True)
        rank = self.rank_index
        torch.save(
            dict(
                state,
                rank=rank,
                batches=self.batch_log,
                optimizer_step=self.optimizer_step,
                skipped_audio=self.skipped_audio,
                nonfinite_steps=self.nonfinite_steps,
            ),
            os.path.join(folder, f"rank{rank}.pt"),
        )
