"""Duration buckets for SpeechBrain's ``DynamicBatchSampler``.

Given only ``num_buckets``, ``DynamicBatchSampler`` places its bucket
boundaries on log-normal quantiles scaled so that the last one equals
``max_batch_length``. With the recipe's 1080 s batches that puts every
LibriSpeech utterance (1-35 s) into the first few buckets, so a batch mixes
2 s and 15 s utterances: 23 % of a train-clean-100-shaped epoch is padding
(``benchmarks/batching.py``). Boundaries at quantiles of the corpus's own
durations give every bucket the same number of utterances of similar
length: 1.5 % padding, and 1.3x the audio per second in the same benchmark.

Quantile buckets pad less, so a micro-batch of ``max_batch_length`` padded
seconds holds more real speech than with SpeechBrain's buckets, the
batching the paper's figures were obtained with (about 65 against 54
minutes per 4 x 1080 s optimizer step on a train-clean-100-shaped corpus):
12,500 steps would then be 19 % more data than the paper's.
:func:`equal_data_batch_length` lowers the micro-batch limit until the
quantile buckets make as many batches per epoch as SpeechBrain's buckets
with the configured limit, i.e. the same real speech per micro-batch on
average (``equal_data_per_step``, the default of ``hparams/s3l.yaml``).

Also the recipes' data-loader settings: the training batch sampler and the
loader keyword arguments (each loader with its own generator).

Authors
 * S3L contributors 2025
"""

import logging

import numpy as np
import torch
from speechbrain.dataio.sampler import DynamicBatchSampler

logger = logging.getLogger(__name__)


def quantile_bucket_boundaries(durations, num_buckets):
    """Bucket upper bounds at ``num_buckets`` quantiles of ``durations``.

    Arguments
    ---------
    durations : sequence of float
        Length of every training example (seconds).
    num_buckets : int
        Buckets wanted; fewer come back when quantiles coincide.

    Returns
    -------
    list of float
        Increasing boundaries; the last is the longest duration, so every
        example falls into a bucket.

    Example
    -------
    >>> quantile_bucket_boundaries([1.0, 2.0, 3.0, 4.0], 2)
    [2.5, 4.0]
    >>> quantile_bucket_boundaries([5.0, 5.0, 5.0], 3)
    [5.0]
    """
    durations = np.asarray(durations, dtype=float)
    if durations.size == 0:
        raise ValueError("no durations to place buckets on")
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    levels = np.arange(1, num_buckets + 1) / num_buckets
    return np.unique(np.quantile(durations, levels)).tolist()


def count_batches(durations, bucket_boundaries, max_batch_length, max_ex):
    """Batches per epoch of ``DynamicBatchSampler`` with these buckets.

    The sampler fills each bucket up to ``int(max_batch_length /
    boundary)`` utterances (between 1 and ``max_batch_length``), and keeps
    the last partial batch of every bucket; longer utterances than the last
    boundary go one per batch. The count depends on the bucket sizes only,
    not on the shuffle, so it is computed without building the sampler
    (a Python loop over every utterance).

    Arguments
    ---------
    durations : numpy.ndarray
        Seconds per utterance.
    bucket_boundaries : sequence of float
        Increasing upper bounds.
    max_batch_length : float
        Padded seconds per batch.
    max_ex : int or None
        Most utterances per batch.

    Returns
    -------
    int

    Example
    -------
    >>> count_batches(np.array([1.0, 1.0, 2.0, 3.0]), [1.0, 3.0], 6.0, None)
    2
    """
    boundaries = np.asarray(bucket_boundaries, dtype=float)
    sizes = np.maximum(1, (max_batch_length / boundaries).astype(int))
    if max_ex is not None:
        sizes = np.minimum(sizes, max_ex)
    sizes = np.append(sizes, 1)
    buckets = np.searchsorted(boundaries, durations)
    counts = np.bincount(buckets, minlength=len(sizes))
    return int(np.ceil(counts / sizes).sum())


def equal_data_batch_length(durations, config, quantile_boundaries):
    """The micro-batch limit giving quantile buckets SpeechBrain's data.

    Finds the largest ``max_batch_length`` with which the quantile buckets
    make at least as many batches per epoch as SpeechBrain's own buckets
    (``num_buckets`` log-normal boundaries) make with the configured
    limit, so that each micro-batch holds the same real speech on average.

    Arguments
    ---------
    durations : sequence of float
        Seconds per training utterance.
    config : dict
        ``dynamic_batch_sampler`` settings: ``max_batch_length``,
        ``num_buckets`` and optionally ``max_batch_ex``.
    quantile_boundaries : list of float
        The quantile buckets' boundaries.

    Returns
    -------
    float
        The limit (seconds), at most ``config["max_batch_length"]``.

    Example
    -------
    >>> durations = np.random.default_rng(0).uniform(2, 16, 2000)
    >>> config = {"max_batch_length": 200.0, "num_buckets": 20}
    >>> bounds = quantile_bucket_boundaries(durations, 20)
    >>> 150 < equal_data_batch_length(durations, config, bounds) < 200
    True
    """
    durations = np.asarray(durations, dtype=float)
    limit = float(config["max_batch_length"])
    max_ex = config.get("max_batch_ex")
    # SpeechBrain's own batches, counted by SpeechBrain (one pass over the
    # corpus, so that a change in its bucket placement follows).
    lengths = durations.tolist()
    wanted = len(
        DynamicBatchSampler(
            lengths,
            max_batch_length=limit,
            num_buckets=config["num_buckets"],
            max_batch_ex=max_ex,
            lengths_list=lengths,
        )
    )
    low, high = 0.0, limit
    if count_batches(durations, quantile_boundaries, high, max_ex) >= wanted:
        return high
    for _ in range(40):  # bisection to a millisecond-scale interval
        middle = (low + high) / 2
        if count_batches(durations, quantile_boundaries, middle, max_ex) >= (
            wanted
        ):
            low = middle
        else:
            high = middle
    return round(low, 3)


def make_train_sampler(hparams, dataset):
    """The training batch sampler, or None for fixed-size batches.

    ``dynamic_batching`` (default True) groups utterances of similar
    duration into batches of at most ``dynamic_batch_sampler``'s
    ``max_batch_length`` seconds of padded audio. With ``quantile_buckets``
    (default True) its ``num_buckets`` bucket boundaries sit at quantiles
    of the training durations (``s3l_plugin.data.batching``) instead of
    SpeechBrain's log-normal spread up to ``max_batch_length``; with
    ``equal_data_per_step`` too (default False; True in ``s3l.yaml``) the
    limit is lowered by :func:`equal_data_batch_length` so that a
    micro-batch holds as much real speech as with SpeechBrain's buckets.
    False gives shuffled batches of ``batch_size`` utterances (see
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
            durations, config.get("num_buckets", 60)
        )
        if hparams.get("equal_data_per_step", False):
            configured = config["max_batch_length"]
            config["max_batch_length"] = equal_data_batch_length(
                durations, config, config["bucket_boundaries"]
            )
            logger.info(
                "equal_data_per_step: micro-batches of at most %.1f s of "
                "padded audio (not %.1f s), as much real speech per "
                "micro-batch as SpeechBrain's buckets give",
                config["max_batch_length"],
                configured,
            )
        config.pop("num_buckets", None)
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
