#!/usr/bin/env python3
"""End-to-end pretraining throughput with dynamic batching on and off.

Runs the real recipe (``recipes/LibriSpeech/pretrain.py``, default
``hparams/s3l_tiny.yaml`` on the generated mini corpus) three times in one
invocation, same seed and steps:

- ``dynamic``: SpeechBrain's ``DynamicBatchSampler`` as the recipe uses
  it (the YAML's ``max_batch_length`` seconds of padded audio per batch,
  bucket boundaries at quantiles of the durations);
- ``dynamic-lognormal``: the same with SpeechBrain's own bucket placement
  (``--quantile_buckets=False``);
- ``fixed``: shuffled batches of ``--batch-size`` utterances
  (``--dynamic_batching=False``). By default the largest fixed batch that
  stays within the same padded-audio budget in the worst case:
  ``floor(max_batch_length / longest training utterance)``, which is what
  a fixed batch must respect to fit the memory the dynamic one uses.

Reads the recipe's ``train step`` log lines (every ``--log-interval``
optimizer steps) and prints the median audio seconds per second and the
mean padded fraction over the logged intervals, the first left out
(warm-up), plus the wall time of each run. Evaluation is off the timed
intervals (the recipe times training batches only).

Example::

    python benchmarks/pretrain_throughput.py              # ~5 min on 2 cores
    python benchmarks/pretrain_throughput.py --steps 400 --batch-size 12

Authors
 * S3L contributors 2025
"""

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchutils import fmt, format_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "LibriSpeech", "pretrain.py")
HEADERS = [
    "batching",
    "batch",
    "steps",
    "audio_s_per_s",
    "padded_fraction",
    "wall_s",
]


def parse_args(argv=None):
    """Command-line options.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
        With ``overrides``: the arguments left for the recipe.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--hparams", default=os.path.join(ROOT, "hparams", "s3l_tiny.yaml")
    )
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument(
        "--max-batch-length",
        type=float,
        default=60.0,
        help="the YAML's dynamic max_batch_length (s3l_tiny.yaml: 60)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="fixed batch size (default: same worst-case padded audio)",
    )
    parser.add_argument("--output", default=None, help="default: a temp dir")
    # Anything else is passed on to the recipe, e.g. --data_folder=DIR.
    args, overrides = parser.parse_known_args(argv)
    args.overrides = overrides
    return args


def run_recipe(args, output_folder, *extra):
    """Runs the recipe; returns its wall seconds. Raises on failure."""
    command = [
        sys.executable,
        RECIPE,
        args.hparams,
        f"--output_folder={output_folder}",
        f"--total_steps={args.steps}",
        f"--log_interval={args.log_interval}",
        "--noprogressbar",
        *args.overrides,
        *extra,
    ]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed:\n{result.stderr[-3000:]}"
        )
    return time.perf_counter() - start


def logged_intervals(output_folder):
    """The ``train step`` summaries of the recipe's ``log.txt``."""
    summaries = []
    with open(os.path.join(output_folder, "log.txt"), encoding="utf-8") as f:
        for line in f:
            if "train step {" in line:
                summaries.append(json.loads(line.split("train step ", 1)[1]))
    return summaries


def longest_training_utterance(output_folder):
    """Seconds of the longest utterance in the run's ``csv/train.csv``."""
    with open(os.path.join(output_folder, "csv", "train.csv")) as f:
        return max(float(row["duration"]) for row in csv.DictReader(f))


def summarise(name, batch, output_folder, wall):
    """One table row from a finished run."""
    intervals = logged_intervals(output_folder)
    timed = intervals[1:] or intervals
    if not timed:
        raise RuntimeError(f"no 'train step' lines in {output_folder}/log.txt")
    return [
        name,
        batch,
        intervals[-1]["step"],
        fmt(statistics.median(i["audio_s_per_s"] for i in timed)),
        fmt(statistics.mean(i["padded_fraction"] for i in timed), 3),
        fmt(wall, 1),
    ]


def main(argv=None):
    """Runs the three settings and prints the table.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    list of list
        The table rows.
    """
    args = parse_args(argv)
    dynamic_batch = f"<={args.max_batch_length:g}s"
    with tempfile.TemporaryDirectory() as scratch:
        base = args.output or scratch

        def measure(name, batch, *extra):
            output_folder = os.path.join(base, name)
            wall = run_recipe(args, output_folder, *extra)
            return summarise(name, batch, output_folder, wall)

        rows = [
            measure("dynamic", dynamic_batch),
            measure(
                "dynamic-lognormal", dynamic_batch, "--quantile_buckets=False"
            ),
        ]
        longest = longest_training_utterance(os.path.join(base, "dynamic"))
        batch_size = args.batch_size or max(
            1, math.floor(args.max_batch_length / longest)
        )
        rows.append(
            measure(
                "fixed",
                f"{batch_size}utt",
                "--dynamic_batching=False",
                f"--batch_size={batch_size}",
            )
        )
    print(
        f"# {os.path.relpath(args.hparams, ROOT)}, {args.steps} optimizer "
        "steps each; medians over the logged intervals after the first"
    )
    print(format_table(HEADERS, rows))
    for other in rows[1:]:
        ratio = float(rows[0][3]) / float(other[3])
        print(
            f"speedup dynamic vs {other[0]}: {ratio:.2f}x audio seconds "
            "per second"
        )
    return rows


if __name__ == "__main__":
    main()
