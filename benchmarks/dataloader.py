#!/usr/bin/env python3
"""The pretraining input pipeline's audio seconds per second, and its parts.

Runs the pretraining recipe's own input pipeline
(``recipes/LibriSpeech/pretrain.py``: ``librispeech_prepare``,
``dataio_prepare``'s dataset, audio pipeline and ``DynamicBatchSampler``,
``SkipBadAudioCollate``, the loader settings, and the YAML's noise
augmentation on a noise collection) with ``hparams/s3l.yaml``'s settings,
on a generated LibriSpeech-shaped corpus (``corpus.py``: train-clean-100
durations, 16 kHz FLAC, one file per utterance).

Prints:

- where the time of one batch goes, in the main process: FLAC decoding
  (``soundfile``), the checks and down-mix of ``load_audio``, resampling
  (none at LibriSpeech's 16 kHz; the row gives what a 24 kHz corpus would
  add), collation, and the noise augmentation (which the recipe runs in
  the training process, on the batch);
- audio seconds delivered per second by the DataLoader with 0 workers
  (the main process alone: the per-worker figure) and with each
  ``--workers`` count, after each loader's first batch (worker start-up);
- the extrapolation to the recipe's ``num_workers`` on a machine with a
  free core per worker, against the 2,500 audio s/s that the paper's
  12,500 steps of 4 x 1080 s in 6 hours need.

Example::

    python benchmarks/dataloader.py                 # ~2 min on 2 cores
    python benchmarks/dataloader.py --workers 1 2 4 8 --batches 20
    python benchmarks/dataloader.py --tiny          # seconds, for tests

Authors
 * S3L contributors 2025
"""

import importlib
import os
import sys
import tempfile
import time

import soundfile as sf
import torch
import torchaudio
from benchutils import benchmark_parser, fmt, format_table
from corpus import write_librispeech_corpus
from hyperpyyaml import load_hyperpyyaml

from s3l_plugin.data.audio import SkipBadAudioCollate, load_audio
from s3l_plugin.data.batching import train_loader_kwargs
from s3l_plugin.data.noise import generate_noise_collection, make_noise_csv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(ROOT, "recipes", "LibriSpeech")
YAML = os.path.join(ROOT, "hparams", "s3l.yaml")
STAGE_HEADERS = ["stage", "ms_per_batch", "share", "audio_s_per_s"]
LOADER_HEADERS = ["workers", "batches", "audio_s", "wall_s", "audio_s_per_s"]
# 12,500 steps x 4 x 1080 s in 6 hours.
TARGET_AUDIO_S_PER_S = 2500


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
        __doc__, tiny="200 utterances, 60 s batches: to test the script"
    )
    parser.add_argument("--utterances", type=int, default=3000)
    parser.add_argument(
        "--batches", type=int, default=6, help="timed batches per loader"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--max-batch-length",
        type=float,
        default=None,
        help="seconds per micro-batch (default: the YAML's)",
    )
    parser.add_argument("--folder", default=None, help="default: a temp dir")
    args = parser.parse_args(argv)
    if args.tiny:
        args.utterances = 200
        args.batches = 2
        args.max_batch_length = 60.0
        args.workers = [1]
    return args


def load_recipe_hparams(args, folder):
    """``hparams/s3l.yaml`` as the recipe loads it, on this corpus."""
    overrides = {
        "output_folder": os.path.join(folder, "results"),
        "data_folder": os.path.join(folder, "LibriSpeech"),
        "train_splits": ["train-clean-100"],
        "dev_splits": ["dev-clean"],
        "seed": args.seed,
    }
    if args.max_batch_length is not None:
        overrides["dynamic_batch_sampler"] = {
            "max_batch_length": args.max_batch_length,
            "num_buckets": 10 if args.tiny else 60,
            "shuffle": True,
            "batch_ordering": "random",
            "max_batch_ex": 256,
        }
    with open(YAML, encoding="utf-8") as yaml_file:
        return load_hyperpyyaml(yaml_file, overrides)


def prepare(args, folder, hparams):
    """Writes the corpus, its CSVs and a noise CSV; returns the latter."""
    data = hparams["data_folder"]
    if not os.path.isdir(os.path.join(data, "train-clean-100")):
        write_librispeech_corpus(data, args.utterances, seed=args.seed)
        write_librispeech_corpus(data, 20, split="dev-clean", seed=1)
    sys.path.insert(0, RECIPES)
    from librispeech_prepare import prepare_librispeech

    prepare_librispeech(
        data,
        hparams["csv_folder"],
        tr_splits=hparams["train_splits"],
        dev_splits=hparams["dev_splits"],
        merge_lst=hparams["train_splits"],
        merge_name="train.csv",
    )
    noise_dir = os.path.join(folder, "noise")
    noise_csv = os.path.join(noise_dir, "noise.csv")
    if not os.path.isfile(noise_csv):
        generate_noise_collection(noise_dir, seconds=15.0)
        make_noise_csv(noise_dir, noise_csv)
    return noise_csv


def stage_times(train_set, sampler, noise_augment, args):
    """Milliseconds per batch of each stage, over ``args.batches`` batches."""
    rate = 16000
    totals = dict.fromkeys(
        ("decode", "checks", "resample_24k", "collate", "noise"), 0.0
    )
    collate = SkipBadAudioCollate(empty_batch=True)
    audio = 0.0
    batches = list(sampler)[: args.batches]
    # The noise stream decodes each noise file on first use and keeps it
    # (NoiseStream's cache): fill it before timing the steady state.
    for _ in range(len(noise_augment.noise_stream.paths)):
        noise_augment(torch.ones(1, rate), torch.ones(1))
    for batch in batches:
        examples = []
        for index in batch:
            row = train_set.data[train_set.data_ids[int(index)]]
            start = time.perf_counter()
            data, _ = sf.read(row["wav"], dtype="float32", always_2d=True)
            decoded = time.perf_counter()
            wav = load_audio(row["wav"], rate)
            loaded = time.perf_counter()
            # load_audio decodes again: its own cost minus decoding.
            totals["decode"] += decoded - start
            totals["checks"] += max(0.0, (loaded - decoded) - (decoded - start))
            longer = torch.from_numpy(data[:, 0]).repeat(2)[: len(wav) * 3 // 2]
            start = time.perf_counter()
            torchaudio.functional.resample(longer, 24000, rate)
            totals["resample_24k"] += time.perf_counter() - start
            examples.append({"id": row["wav"], "sig": wav, "audio_error": ""})
            audio += len(wav) / rate
        start = time.perf_counter()
        padded = collate(examples)
        totals["collate"] += time.perf_counter() - start
        start = time.perf_counter()
        noise_augment(*padded.sig)
        totals["noise"] += time.perf_counter() - start
    return totals, audio, len(batches)


def loader_throughput(train_set, sampler, hparams, workers, args):
    """Audio seconds per second of the recipe's DataLoader."""
    kwargs = train_loader_kwargs(
        {**hparams, "num_workers": workers},
        SkipBadAudioCollate(empty_batch=True),
        sampler,
    )
    loader = torch.utils.data.DataLoader(train_set, **kwargs)
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch: not timed
    audio, count = 0.0, 0
    start = time.perf_counter()
    for batch in iterator:
        wavs, lens = batch.sig
        audio += float(lens.sum()) * wavs.shape[1] / 16000
        count += 1
        if count == args.batches:
            break
    wall = time.perf_counter() - start
    del iterator
    return [workers, count, fmt(audio, 0), fmt(wall), fmt(audio / wall, 0)]


def run(args, folder):
    """Prepares, measures and prints; returns the two tables' rows."""
    torch.manual_seed(args.seed)
    hparams = load_recipe_hparams(args, folder)
    noise_csv = prepare(args, folder, hparams)
    pretrain = importlib.import_module("pretrain")
    train_set, _, sampler = pretrain.dataio_prepare(hparams)
    noise_augment = hparams["noise_augment"](csv_file=noise_csv, seed=0)
    noise_augment.train()
    totals, audio, batches = stage_times(
        train_set, sampler, noise_augment, args
    )
    pipeline = sum(v for k, v in totals.items() if k != "resample_24k")
    stage_rows = [
        [
            name,
            fmt(1000 * seconds / batches),
            fmt(seconds / pipeline) if name != "resample_24k" else "n/a",
            fmt(audio / seconds, 0) if seconds else "inf",
        ]
        for name, seconds in totals.items()
    ]
    stage_rows.append(
        [
            "all (16 kHz)",
            fmt(1000 * pipeline / batches),
            "1.00",
            fmt(audio / pipeline, 0),
        ]
    )
    print(
        f"# {len(train_set)} utterances, {batches} batches of the "
        f"recipe's sampler, {audio / batches:.0f} audio s per batch"
    )
    print(format_table(STAGE_HEADERS, stage_rows))
    loader_rows = [
        loader_throughput(train_set, sampler, hparams, workers, args)
        for workers in [0] + list(args.workers)
    ]
    print()
    print(format_table(LOADER_HEADERS, loader_rows))
    per_worker = float(loader_rows[0][-1])
    default_workers = hparams["num_workers"]
    print(
        f"\n# per worker (0 workers: the main process alone): {per_worker:.0f}"
        f" audio s/s; the recipe's num_workers={default_workers} with a "
        f"free core each: ~{per_worker * default_workers:.0f} audio s/s "
        f"(target {TARGET_AUDIO_S_PER_S}: "
        f"{TARGET_AUDIO_S_PER_S / max(per_worker, 1e-9):.1f} workers needed)"
        f"; this machine has {os.cpu_count()} CPU(s)"
    )
    return stage_rows, loader_rows


def main(argv=None):
    """Command line; returns the stage and loader rows."""
    args = parse_args(argv)
    if args.folder:
        os.makedirs(args.folder, exist_ok=True)
        return run(args, args.folder)
    with tempfile.TemporaryDirectory() as folder:
        return run(args, folder)


if __name__ == "__main__":
    main()
