"""Duration buckets for SpeechBrain's ``DynamicBatchSampler``.

Given only ``num_buckets``, ``DynamicBatchSampler`` places its bucket
boundaries on log-normal quantiles scaled so that the last one equals
``max_batch_length``. With the recipe's 1080 s batches that puts every
LibriSpeech utterance (1-35 s) into the first few buckets, so a batch mixes
2 s and 15 s utterances: 23 % of a train-clean-100-shaped epoch is padding
(``benchmarks/batching.py``). Boundaries at quantiles of the corpus's own
durations give every bucket the same number of utterances of similar
length: 1.5 % padding, and 1.3x the audio per second in the same benchmark.

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
