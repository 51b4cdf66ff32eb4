#!/usr/bin/env python3
"""Padding and training throughput: dynamic batching vs fixed-size batches.

The utterance durations are synthetic, drawn to look like LibriSpeech
train-clean-100: 28,539 utterances, 100.6 h, mean ~12.7 s, most between
10 and 17 s, shortest ~1.3 s, longest ~24.5 s, skewed to the left (a long
tail of short utterances, few long ones). These figures are the published
corpus statistics (Panayotov et al., ICASSP 2015, and the corpus' own
file lists); the real per-utterance durations are not used. The
distribution fitted to them is a simple two-part mixture, clipped to
[1.3, 24.5] s: 80 % N(14.2 s, 2.6 s) (the bulk of segments, cut at
most ~24.5 s) and 20 % uniform on [1.3, 12] s (the short tail). The
script prints the sample's statistics beside the targets.

Batches:

- ``dynamic``: SpeechBrain's ``DynamicBatchSampler`` with the recipe's
  settings (``hparams/s3l.yaml``: at most 1080 s of padded audio per
  batch, 60 buckets, shuffled, random batch order, at most 256
  utterances) but SpeechBrain's own bucket placement
  (``quantile_buckets: False``): from ``num_buckets`` alone it places its
  boundaries on lognormal quantiles up to ``max_batch_length``, the first
  at ~15 s for 1080 s, so a 1-25 s corpus falls into about three buckets;
- ``dynamic-quantiles``: what the recipes do (``quantile_buckets: True``,
  ``s3l_plugin.data.batching``): ``bucket_boundaries`` at 60 quantiles of
  the durations;
- ``fixed``: shuffled batches of a fixed number of utterances, by default
  the dynamic batches' mean number (same utterances per batch on average).

For each, the fraction of padded samples over every batch of one epoch,
then the training throughput: audio seconds (padding excluded) per second
of the real S3L step (``s3l_forward`` + ``ContrastiveLoss`` + backward, no
optimizer step: a micro-batch of gradient accumulation) on the first
``--throughput-batches`` batches of each sampler, run interleaved, with
random waveforms of the drawn lengths.

Example::

    python benchmarks/batching.py                     # toy model on CPU
    python benchmarks/batching.py --model paper --device cuda
    python benchmarks/batching.py --tiny              # seconds, for tests

Authors
 * S3L contributors 2025
"""

import functools
import sys

import numpy as np
import torch
from benchutils import (
    S3LParts,
    benchmark_parser,
    describe_device,
    fmt,
    format_table,
    parse_benchmark_args,
    time_call,
)
from speechbrain.dataio.sampler import DynamicBatchSampler

from s3l_plugin.data.batching import quantile_bucket_boundaries

HEADERS = [
    "batching",
    "batches",
    "utts_per_batch",
    "padded_s_per_batch",
    "padded_fraction",
    "step_batches",
    "step_audio_s",
    "audio_s_per_s",
]
STATS_HEADERS = ["statistic", "synthetic", "train-clean-100"]
SAMPLE_RATE = 16000

# Published statistics of LibriSpeech train-clean-100.
TRAIN_CLEAN_100 = {
    "utterances": 28539,
    "hours": 100.6,
    "mean_s": 12.7,
    "min_s": 1.3,
    "max_s": 24.5,
}


def parse_args(argv=None):
    """Command-line options.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
    """
    parser = benchmark_parser(
        __doc__,
        precision="device",
        model="device",
        tiny="small corpus, 60 s batches, 1 step each: to test the script",
    )
    parser.add_argument(
        "--utterances", type=int, default=TRAIN_CLEAN_100["utterances"]
    )
    parser.add_argument(
        "--max-batch-length",
        type=float,
        default=1080.0,
        help="seconds of padded audio per dynamic batch",
    )
    parser.add_argument("--num-buckets", type=int, default=60)
    parser.add_argument("--max-batch-ex", type=int, default=256)
    parser.add_argument(
        "--fixed-batch-size",
        type=int,
        default=None,
        help="default: the dynamic batches' mean utterance count",
    )
    parser.add_argument("--throughput-batches", type=int, default=3)
    args = parse_benchmark_args(parser, argv)
    args.precision = args.precision[0]
    if args.tiny:
        args.utterances = 400
        args.max_batch_length = 60.0
        args.num_buckets = 10
        args.throughput_batches = min(args.throughput_batches, 1)
    return args


def librispeech_100_durations(num, seed=0):
    """Synthetic utterance durations shaped like train-clean-100.

    80 % N(14.2, 2.6) and 20 % U(1.3, 12), clipped to [1.3, 24.5] s (see
    the module docstring).

    Arguments
    ---------
    num : int
        Number of utterances.
    seed : int
        Seed of the draw.

    Returns
    -------
    numpy.ndarray
        (num,) durations in seconds.

    Example
    -------
    >>> durations = librispeech_100_durations(28539)
    >>> bool(12.2 < durations.mean() < 13.2), bool(durations.min() >= 1.3)
    (True, True)
    """
    rng = np.random.default_rng(seed)
    bulk = rng.normal(14.2, 2.6, num)
    tail = rng.uniform(1.3, 12.0, num)
    durations = np.where(rng.random(num) < 0.8, bulk, tail)
    return np.clip(
        durations, TRAIN_CLEAN_100["min_s"], TRAIN_CLEAN_100["max_s"]
    )


def duration_stats(durations):
    """Rows comparing the synthetic sample with the corpus' statistics.

    Arguments
    ---------
    durations : numpy.ndarray
        Seconds.

    Returns
    -------
    list of list
    """
    centred = durations - durations.mean()
    skew = (centred**3).mean() / (centred**2).mean() ** 1.5
    inside = ((durations >= 10) & (durations <= 17)).mean()
    return [
        ["utterances", len(durations), TRAIN_CLEAN_100["utterances"]],
        ["hours", fmt(durations.sum() / 3600, 1), TRAIN_CLEAN_100["hours"]],
        ["mean_s", fmt(durations.mean()), TRAIN_CLEAN_100["mean_s"]],
        ["min_s", fmt(durations.min()), TRAIN_CLEAN_100["min_s"]],
        ["max_s", fmt(durations.max()), TRAIN_CLEAN_100["max_s"]],
        ["share_10_to_17_s", fmt(inside), "most"],
        ["skewness", fmt(skew), "< 0 (left)"],
    ]


def dynamic_batches(durations, args, quantile_buckets=False):
    """One epoch of SpeechBrain's ``DynamicBatchSampler`` batches.

    Arguments
    ---------
    durations : numpy.ndarray
        Seconds per utterance.
    args : argparse.Namespace
        Options.
    quantile_buckets : bool
        If False, ``num_buckets`` as the recipe gives it: SpeechBrain then
        spreads the bucket boundaries over lognormal quantiles scaled so
        that the last one is ``max_batch_length`` (1080 s), which puts
        every utterance of a corpus of 1-25 s into its first few buckets.
        If True, ``bucket_boundaries`` at ``num_buckets`` quantiles of the
        durations instead.

    Returns
    -------
    list of list of int
        Utterance indices per batch.
    """
    lengths = durations.tolist()
    buckets = {"num_buckets": args.num_buckets}
    if quantile_buckets:
        buckets = {
            "bucket_boundaries": quantile_bucket_boundaries(
                durations, args.num_buckets
            )
        }
    sampler = DynamicBatchSampler(
        lengths,  # only its length is used with lengths_list
        max_batch_length=args.max_batch_length,
        lengths_list=lengths,
        shuffle=True,
        batch_ordering="random",
        max_batch_ex=args.max_batch_ex,
        seed=args.seed,
        **buckets,
    )
    return [list(batch) for batch in sampler]


def bucket_boundaries(args):
    """The boundaries SpeechBrain derives from ``num_buckets`` (seconds).

    Arguments
    ---------
    args : argparse.Namespace
        Options.

    Returns
    -------
    numpy.ndarray
    """
    sampler = DynamicBatchSampler(
        [1.0],
        max_batch_length=args.max_batch_length,
        num_buckets=args.num_buckets,
        lengths_list=[1.0],
    )
    return sampler._bucket_boundaries


def fixed_batches(num, batch_size, seed=0):
    """One epoch of shuffled batches of ``batch_size`` utterances.

    Arguments
    ---------
    num : int
        Utterances.
    batch_size : int
        Utterances per batch (the last batch may be smaller).
    seed : int
        Shuffling seed.

    Returns
    -------
    list of list of int

    Example
    -------
    >>> [len(b) for b in fixed_batches(10, 4)]
    [4, 4, 2]
    """
    order = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    order = order.tolist()
    return [order[i : i + batch_size] for i in range(0, num, batch_size)]


def padding_stats(batches, durations):
    """Padded fraction and sizes of a list of batches.

    Arguments
    ---------
    batches : list of list of int
        Utterance indices.
    durations : numpy.ndarray
        Seconds per utterance.

    Returns
    -------
    dict
        ``batches``, ``utts_per_batch``, ``padded_s_per_batch`` (mean) and
        ``padded_fraction`` (padded samples / all samples).

    Example
    -------
    >>> stats = padding_stats([[0, 1]], np.array([1.0, 3.0]))
    >>> stats["padded_fraction"]
    0.3333333333333333
    """
    samples = np.round(durations * SAMPLE_RATE).astype(np.int64)
    total = padded = 0
    for batch in batches:
        lengths = samples[batch]
        total += lengths.max() * len(batch)
        padded += lengths.max() * len(batch) - lengths.sum()
    return {
        "batches": len(batches),
        "utts_per_batch": float(np.mean([len(b) for b in batches])),
        "padded_s_per_batch": total / SAMPLE_RATE / len(batches),
        "padded_fraction": float(padded / total),
    }


class S3LMicroBatch(S3LParts):
    """Forward, loss and backward of the S3L step on one padded batch.

    Arguments
    ---------
    args : argparse.Namespace
        Options.
    """

    def __init__(self, args):
        super().__init__(args.model, args.device, args.seed)
        self.precision = args.precision

    def __call__(self, wavs, wav_lens):
        """One micro-batch (gradients accumulate, as between steps)."""
        self.loss(wavs, wav_lens, self.precision).backward()
        self.student.zero_grad(set_to_none=True)


def make_waveforms(batch, durations, device, generator):
    """Random padded waveforms of a batch's durations.

    Arguments
    ---------
    batch : list of int
        Utterance indices.
    durations : numpy.ndarray
        Seconds per utterance.
    device : str
        Device.
    generator : torch.Generator
        CPU generator.

    Returns
    -------
    wavs : torch.Tensor
        (B, S) padded with zeros.
    wav_lens : torch.Tensor
        (B,) relative lengths.
    audio_seconds : float
        Valid audio in the batch.
    """
    samples = np.round(durations[batch] * SAMPLE_RATE).astype(np.int64)
    longest = int(samples.max())
    wavs = torch.zeros(len(batch), longest)
    for row, count in enumerate(samples):
        wavs[row, :count] = 0.1 * torch.randn(int(count), generator=generator)
    wav_lens = torch.from_numpy(samples / longest).float()
    return wavs.to(device), wav_lens.to(device), samples.sum() / SAMPLE_RATE


def throughput(step, batch_lists, durations, args):
    """Audio seconds per second of each sampler's first batches.

    The batches of the samplers are run interleaved (dynamic 1, fixed 1,
    dynamic 2, ...) after one untimed warm-up micro-batch per sampler.

    Arguments
    ---------
    step : S3LMicroBatch
        The step.
    batch_lists : dict
        Name -> list of batches.
    durations : numpy.ndarray
        Seconds per utterance.
    args : argparse.Namespace
        Options.

    Returns
    -------
    dict
        Name -> (batches run, audio seconds, audio seconds per second).
    """
    generator = torch.Generator().manual_seed(args.seed)
    inputs = {
        name: [
            make_waveforms(batch, durations, args.device, generator)
            for batch in batches[: args.throughput_batches]
        ]
        for name, batches in batch_lists.items()
    }
    for name in inputs:  # warm-up
        wavs, wav_lens, _ = inputs[name][0]
        step(wavs, wav_lens)
    spent = dict.fromkeys(inputs, 0.0)
    audio = dict.fromkeys(inputs, 0.0)
    for index in range(args.throughput_batches):
        for name, batches in inputs.items():
            if index >= len(batches):
                continue
            wavs, wav_lens, seconds = batches[index]
            call = functools.partial(step, wavs, wav_lens)
            spent[name] += time_call(call, args.device)
            audio[name] += seconds
    return {
        name: (
            min(args.throughput_batches, len(inputs[name])),
            audio[name],
            audio[name] / spent[name],
        )
        for name in inputs
    }


def main(argv=None):
    """Entry point: parses ``argv``, runs, prints the tables.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    list of list
        The main table's rows.
    """
    args = parse_args(argv)
    durations = librispeech_100_durations(args.utterances, args.seed)
    print(
        "# Synthetic durations shaped like LibriSpeech train-clean-100 "
        "(80% N(14.2, 2.6) + 20% U(1.3, 12) s, clipped to [1.3, 24.5] s)"
    )
    print(format_table(STATS_HEADERS, duration_stats(durations)))
    batch_lists = {
        "dynamic": dynamic_batches(durations, args),
        "dynamic-quantiles": dynamic_batches(durations, args, True),
    }
    batch_size = args.fixed_batch_size or max(
        1,
        round(
            padding_stats(batch_lists["dynamic"], durations)["utts_per_batch"]
        ),
    )
    batch_lists["fixed"] = fixed_batches(len(durations), batch_size, args.seed)
    stats = {
        name: padding_stats(batches, durations)
        for name, batches in batch_lists.items()
    }
    boundaries = bucket_boundaries(args)
    print(
        f"\n# dynamic: DynamicBatchSampler(max_batch_length="
        f"{args.max_batch_length:g} s, num_buckets={args.num_buckets}, "
        f"max_batch_ex={args.max_batch_ex}, shuffle, random order), as the "
        "recipe; its first bucket boundaries (s): "
        + ", ".join(f"{b:.1f}" for b in boundaries[:4])
    )
    print(
        f"# dynamic-quantiles: the same with bucket_boundaries at "
        f"{args.num_buckets} quantiles of the durations; fixed: shuffled "
        f"batches of {batch_size} utterances"
    )
    print(
        f"# throughput: {args.model} S3L, s3l_forward + loss + backward, "
        f"{args.precision}, first {args.throughput_batches} batches of each, "
        f"interleaved; device: {describe_device(args.device)}"
    )
    if args.throughput_batches > 0:
        step = S3LMicroBatch(args)
        speeds = throughput(step, batch_lists, durations, args)
    else:  # padding statistics only
        speeds = dict.fromkeys(batch_lists, (0, 0.0, None))
    rows = []
    for name in batch_lists:
        stat = stats[name]
        ran, audio, speed = speeds[name]
        rows.append(
            [
                name,
                stat["batches"],
                fmt(stat["utts_per_batch"], 1),
                fmt(stat["padded_s_per_batch"], 1),
                fmt(stat["padded_fraction"], 3),
                ran,
                fmt(audio, 1),
                fmt(speed),
            ]
        )
    print(format_table(HEADERS, rows))
    sys.stdout.flush()
    return rows


if __name__ == "__main__":
    main()
