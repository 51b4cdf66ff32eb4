#!/usr/bin/env python3
"""Preparation and start-up at LibriSpeech's size: time and peak memory.

Generates a LibriSpeech-shaped split of ``--files`` utterances (default
281,241, LibriSpeech 960 h's count; ``corpus.py``: hard links to a few
FLACs, train-clean-100 durations) and times, one after the other:

- ``write``: generating the corpus (not part of a run);
- ``prepare``: ``librispeech_prepare`` (every header read, both ends of
  every file decoded, CSV written);
- ``sampler``: the pretraining recipe's ``dataio_prepare`` (CSV read,
  filtered and sorted) and its ``DynamicBatchSampler`` with
  ``hparams/s3l.yaml``'s settings (quantile buckets, equal data per step);
- ``resume``: a mid-epoch resume of SpeechBrain's ``SaveableDataLoader``
  (state saved halfway through the epoch, loaded into a new loader, time to
  its first batch), with a dataset that yields ids only, so that no audio
  is read;
- ``prepare (again)``: the second call, which finds the CSVs up to date.

Peak memory is the process's maximum resident set size
(``resource.getrusage``) after each phase: it only grows.

Example::

    python benchmarks/prepare_scale.py                 # full size
    python benchmarks/prepare_scale.py --files 20000   # smaller
    python benchmarks/prepare_scale.py --tiny          # seconds, for tests

Authors
 * S3L contributors 2025
"""

import argparse
import importlib
import os
import resource
import sys
import tempfile
import time

from benchutils import fmt, format_table
from corpus import write_librispeech_corpus
from speechbrain.dataio.dataloader import SaveableDataLoader

from s3l_plugin.data.audio import SkipBadAudioCollate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes", "LibriSpeech"))
HEADERS = ["phase", "files", "seconds", "files_per_s", "peak_rss_mib"]
LIBRISPEECH_FILES = 281241


def parse_args(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=LIBRISPEECH_FILES)
    parser.add_argument("--folder", default=None, help="default: a temp dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="300 files")
    args = parser.parse_args(argv)
    if args.tiny:
        args.files = 300
    return args


def _peak_mib():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _row(name, files, seconds):
    return [
        name,
        files,
        fmt(seconds),
        fmt(files / seconds, 0) if seconds else "inf",
        fmt(_peak_mib(), 0),
    ]


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def resume_seconds(train_set, sampler, folder):
    """Seconds from a fresh loader loading a mid-epoch state to a batch."""
    train_set.set_output_keys(["id"])  # no audio: only the skipping
    collate = SkipBadAudioCollate(empty_batch=True)
    loader = SaveableDataLoader(
        train_set, batch_sampler=sampler, collate_fn=collate
    )
    iterator = iter(loader)
    for _ in range(len(sampler) // 2):
        next(iterator)
    state = os.path.join(folder, "dataloader.ckpt")
    loader._speechbrain_save(state)  # what the checkpointer calls
    resumed = SaveableDataLoader(
        train_set, batch_sampler=sampler, collate_fn=collate
    )
    start = time.perf_counter()
    resumed._speechbrain_load(state, end_of_epoch=False)
    next(iter(resumed))
    return time.perf_counter() - start


def run(args, folder):
    """Runs every phase; prints and returns the rows."""
    data = os.path.join(folder, "LibriSpeech")
    csv_folder = os.path.join(folder, "csv")
    rows = []
    _, seconds = _timed(
        write_librispeech_corpus, data, args.files, seed=args.seed
    )
    rows.append(_row("write", args.files, seconds))
    write_librispeech_corpus(data, 20, split="dev-clean", seed=1)
    prepare_librispeech = importlib.import_module(
        "librispeech_prepare"
    ).prepare_librispeech
    options = {
        "tr_splits": ["train-clean-100"],
        "dev_splits": ["dev-clean"],
        "merge_lst": ["train-clean-100"],
        "merge_name": "train.csv",
    }
    _, seconds = _timed(prepare_librispeech, data, csv_folder, **options)
    rows.append(_row("prepare", args.files, seconds))
    pretrain = importlib.import_module("pretrain")
    hparams = {
        "sample_rate": 16000,
        "min_duration": 1.0,
        "max_duration": 35.0,
        "csv_folder": csv_folder,
        "dev_splits": ["dev-clean"],
        "dynamic_batching": True,
        "quantile_buckets": True,
        "equal_data_per_step": True,
        "dynamic_batch_sampler": {
            "max_batch_length": 1080,
            "num_buckets": 60,
            "shuffle": True,
            "batch_ordering": "random",
            "max_batch_ex": 256,
        },
    }
    (train_set, _, sampler), seconds = _timed(pretrain.dataio_prepare, hparams)
    rows.append(_row("sampler", len(train_set), seconds))
    seconds = resume_seconds(train_set, sampler, folder)
    rows.append(_row("resume", len(train_set), seconds))
    _, seconds = _timed(prepare_librispeech, data, csv_folder, **options)
    rows.append(_row("prepare (again)", args.files, seconds))
    print(format_table(HEADERS, rows))
    return rows


def main(argv=None):
    """Command line; returns the rows."""
    args = parse_args(argv)
    if args.folder:
        os.makedirs(args.folder, exist_ok=True)
        return run(args, args.folder)
    with tempfile.TemporaryDirectory() as folder:
        return run(args, folder)


if __name__ == "__main__":
    main()
