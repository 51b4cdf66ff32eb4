#!/usr/bin/env python3
"""Does S3L pretraining help? Pretrain, finetune, compare with scratch.

One command (see ``--help``)::

    python experiments/ssl_vs_scratch/run.py --jobs 2 --threads 1

Estimated on 2 free CPU cores: corpus 3-5 min, pretraining 13 min, then
18 finetuning runs of 2000 steps (12 S3L-architecture runs of about 2 min,
6 CRDNN runs of about 5 min: its LSTM is about 2.5x slower per step):
about 75 minutes one run at a time, about 50 with two at a time on one
thread each (measured on a busy machine, the CRDNN's LSTM ran 4x slower on
two threads than on one).
``--pretrain-per-seed`` adds 13 minutes per extra seed.

1. Generates a larger synthetic mini LibriSpeech (``--unlabelled-minutes``
   of training speech from 24 eSpeak NG speakers; dev and test speakers are
   held out).
2. Pretrains the tiny S3L model (``hparams/s3l_tiny.yaml``) on all of its
   training audio, without transcripts: once (with the first seed), or once
   per seed with ``--pretrain-per-seed``. ``--pretrained DIR`` or
   ``--skip-pretrain`` reuse an existing pretraining output instead.
3. Finetunes for character CTC ASR on a small labelled subset and on a
   larger one (``--splits``), with three initialisations (``--inits``):

   - ``s3l``: the pretrained tiny S3L model (``finetune_ctc_tiny.yaml``);
   - ``scratch``: the same architecture and recipe from random weights;
   - ``crdnn``: SpeechBrain's from-scratch CTC model, a CRDNN of about the
     same size (``finetune_crdnn_tiny.yaml``, ``s3l_plugin.baselines``).

   Every run uses the same labelled data and at least the same steps
   (``--scratch-long-factor`` gives the scratch runs more), once per
   finetuning seed (``--seeds``). A run whose folder holds the result of
   the same command is read back, not run again: an interrupted or partial
   experiment (``--seeds``, ``--inits``, ``--splits``) is completed by
   running it again with the full options.
4. Writes ``results.md`` / ``results.json`` (per split and init: mean and
   spread over the seeds of the test CER and WER on held-out speakers,
   greedy and, when the recipe decodes with its beam search, beam search;
   and S3L's relative WER improvement over the best scratch baseline) and
   learning-curve plots (PNG) into ``--output``.

The synthetic speech makes this a check of the machinery (does pretraining
transfer at all?), not a LibriSpeech result.
"""

import argparse
import csv
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
ROOT = os.path.abspath(ROOT)
RECIPES = os.path.join(ROOT, "recipes", "LibriSpeech")
LOGMEL_PATH = os.path.join(ROOT, "experiments", "real_speech")
sys.path.insert(0, RECIPES)

# Finetuning configuration of each initialisation.
INITS = {
    "s3l": "hparams/finetune_ctc_tiny.yaml",
    "scratch": "hparams/finetune_ctc_tiny.yaml",
    "crdnn": "hparams/finetune_crdnn_tiny.yaml",
    "s3l-frozen": "hparams/finetune_ctc_tiny.yaml",
    "random-frozen": "hparams/finetune_ctc_tiny.yaml",
    "logmel-frozen": "hparams/finetune_ctc_tiny.yaml",
}
INIT_NAMES = {
    "s3l": "S3L pretrained",
    "scratch": "S3L from scratch",
    "crdnn": "CRDNN from scratch",
    "s3l-frozen": "probe: S3L pretrained, frozen",
    "random-frozen": "probe: S3L random init, frozen",
    "logmel-frozen": "probe: log-mel features (no encoder)",
}
# The frozen probes: the encoder takes no gradient, only the head learns.
FROZEN = {"s3l-frozen", "random-frozen", "logmel-frozen"}
# The log-mel floor: the probe's head on stacked log-mels in place of the
# encoder (experiments/real_speech/logmel_floor.py, on PYTHONPATH).
LOGMEL_OPTIONS = [
    "--num_summed_layers=1",
    "--encoder=!new:logmel_floor.LogMelFrames",
]

PRETRAINED_INITS = {"s3l", "s3l-frozen"}
SCRATCH = {"scratch", "crdnn"}  # the baselines S3L pretrained is judged by
# Inits of the experiment unless --inits says otherwise.
DEFAULT_INITS = ["s3l", "scratch", "crdnn"]
SPLITS = ("small", "full")
# --librispeech: the labelled split of each size (experiments/real_speech).
REAL_SPLITS = {"small": "train-10min", "full": "train-1h"}
TARGET_IMPROVEMENT = 30.0  # % relative WER, issue 12 item 4


def parse_args(argv):
    """Command-line options; defaults are the full configuration."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output", default=os.path.join(ROOT, "results", "ssl_vs_scratch")
    )
    parser.add_argument("--corpus", default=None, help="corpus folder")
    parser.add_argument("--unlabelled-minutes", type=float, default=120.0)
    parser.add_argument("--eval-minutes", type=float, default=4.0)
    parser.add_argument("--small-minutes", type=float, default=5.0)
    parser.add_argument("--full-minutes", type=float, default=30.0)
    parser.add_argument("--pretrain-steps", type=int, default=3000)
    parser.add_argument("--finetune-steps", type=int, default=2000)
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[1986, 1987, 1988],
        help="finetuning seeds (the first one also pretrains)",
    )
    parser.add_argument(
        "--data-seed",
        type=int,
        default=1986,
        help="seed choosing the labelled subsets (the same for every run)",
    )
    parser.add_argument(
        "--inits", nargs="+", choices=list(INITS), default=DEFAULT_INITS
    )
    parser.add_argument(
        "--librispeech",
        default=None,
        metavar="TRAIN_CLEAN_5",
        help="real speech: build the speaker split of experiments/"
        "real_speech/split.py from this LibriSpeech-layout folder (Mini "
        "LibriSpeech train-clean-5) into --corpus, pretrain on its 22 "
        "training speakers, finetune on train-10min (small) and train-1h "
        "(full) and test on the 4 held-out speakers",
    )
    parser.add_argument(
        "--test-speakers",
        nargs="+",
        default=None,
        help="--librispeech: the held-out test speakers (default: the "
        "split's 1970 4680 2136 3664)",
    )
    parser.add_argument(
        "--dev-speakers",
        nargs="+",
        default=None,
        help="--librispeech: the held-out dev speakers (default: 5789 6848)",
    )
    parser.add_argument(
        "--pretrain-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the pretraining run (e.g. time_mask_ratio=0.05); "
        "repeatable",
    )
    parser.add_argument(
        "--splits", nargs="+", choices=SPLITS, default=list(SPLITS)
    )
    parser.add_argument(
        "--pretrain-per-seed",
        action="store_true",
        help="pretrain once per finetuning seed (default: once)",
    )
    pretrained = parser.add_mutually_exclusive_group()
    pretrained.add_argument(
        "--pretrained",
        default=None,
        help="existing pretraining output folder to finetune (no "
        "pretraining; the same one for every seed)",
    )
    pretrained.add_argument(
        "--skip-pretrain",
        action="store_true",
        help="reuse this experiment's own pretraining folder(s) under "
        "--output, which must exist",
    )
    parser.add_argument(
        "--scratch-long-factor",
        type=int,
        default=1,
        help="the from-scratch runs (scratch, crdnn) get this many times "
        "the finetuning steps",
    )
    parser.add_argument(
        "--finetune-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of every finetuning run, as --KEY=VALUE on its "
        "command line (e.g. freq_masks=2); repeatable",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="finetuning runs at a time (2 CPU cores: --jobs 2 --threads 1)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS of every recipe run (default: inherited)",
    )
    parser.add_argument(
        "--plots-to",
        default=None,
        help="also copy the PNG plots and results.md here (e.g. docs/figures)",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="smoke-test sizes (minutes)"
    )
    args = parser.parse_args(argv)
    if args.tiny:
        args.unlabelled_minutes, args.eval_minutes = 1.5, 0.4
        args.small_minutes, args.full_minutes = 0.5, 1.0
        args.pretrain_steps, args.finetune_steps = 3, 3
    if args.corpus is None:
        args.corpus = os.path.join(args.output, "corpus")
    for flag in ("finetune_option", "pretrain_option"):
        for option in getattr(args, flag):
            if "=" not in option or option.startswith("-"):
                parser.error(
                    f"--{flag.replace('_', '-')} {option!r}: give KEY=VALUE"
                )
    if args.scratch_long_factor < 1:
        parser.error("--scratch-long-factor must be >= 1")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    return args


def run(command, log_path, threads=None):
    """Runs a recipe, its output into ``log_path``; fails loudly.

    ``threads`` (if given) is the recipe's OMP_NUM_THREADS.
    """
    print("$ " + " ".join(command), flush=True)
    start = time.time()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [LOGMEL_PATH, env.get("PYTHONPATH")])
    )
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.run(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    if process.returncode != 0:
        with open(log_path, encoding="utf-8") as log:
            tail = log.read()[-3000:]
        raise RuntimeError(f"{command[1]} failed; end of {log_path}:\n{tail}")
    return time.time() - start


def labelled_subset(rows, minutes, seed):
    """A random subset of utterances totalling about ``minutes``."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    chosen, total = [], 0.0
    for row in rows:
        if total >= minutes * 60:
            break
        chosen.append(row)
        total += float(row["duration"])
    return chosen, total / 60


def write_csv(path, rows, fieldnames):
    """Writes SpeechBrain CSV rows."""
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def prepare_subsets(args):
    """CSV folders holding each labelled subset plus the shared dev/test."""
    from librispeech_prepare import prepare_librispeech

    full_csv = os.path.join(args.output, "csv_all")
    labelled = list(REAL_SPLITS.values()) if args.librispeech else []
    prepare_librispeech(
        args.corpus,
        full_csv,
        tr_splits=["train-clean-100", *labelled],
        dev_splits=["dev-clean"],
        te_splits=["test-clean"],
    )

    def read_split(split):
        path = os.path.join(full_csv, f"{split}.csv")
        with open(path, encoding="utf-8") as fin:
            reader = csv.DictReader(fin)
            return reader.fieldnames, list(reader)

    fieldnames, rows = read_split("train-clean-100")
    folders = {}
    minutes = {"small": args.small_minutes, "full": args.full_minutes}
    for name in args.splits:
        folder = os.path.join(args.output, f"csv_{name}")
        os.makedirs(folder, exist_ok=True)
        if args.librispeech:
            subset = read_split(REAL_SPLITS[name])[1]
            got = sum(float(row["duration"]) for row in subset) / 60
        else:
            subset, got = labelled_subset(rows, minutes[name], args.data_seed)
        write_csv(os.path.join(folder, "train.csv"), subset, fieldnames)
        for split in ("dev-clean", "test-clean"):
            with open(os.path.join(full_csv, f"{split}.csv"), "rb") as src:
                data = src.read()
            with open(os.path.join(folder, f"{split}.csv"), "wb") as dst:
                dst.write(data)
        folders[name] = (folder, got, len(subset))
    return folders


LOG_FIELD = re.compile(r"([A-Za-z_ ]+?):\s*([-+0-9.eE]+)")
# The finetuning recipe's last lines, e.g. "test-clean WER: 64.32% (greedy;
# greedy CER 22.68%)" or "test-clean WER: 19.52% (lexicon + n-gram beam
# search; greedy 64.32%; greedy CER 22.68%)".
WER_LINE = re.compile(
    r"^(?P<split>\S+) WER: (?P<wer>[0-9.]+)% \((?P<decoder>lexicon|greedy)"
)


def read_train_log(path):
    """Per-epoch figures from a SpeechBrain ``train_log.txt``."""
    epochs = []
    if not os.path.isfile(path):
        return epochs
    with open(path, encoding="utf-8") as fin:
        for line in fin:
            fields = {}
            for key, value in LOG_FIELD.findall(line):
                try:
                    fields[key.strip().replace(" ", "_")] = float(value)
                except ValueError:
                    pass
            if "epoch" in fields:
                epochs.append(fields)
    return epochs


def read_test_errors(output_folder):
    """Test (WER, CER) in % from the finetuning recipe's train log."""
    path = os.path.join(output_folder, "train_log.txt")
    with open(path, encoding="utf-8") as fin:
        lines = [line for line in fin if line.startswith("test split")]
    if not lines:
        raise RuntimeError(f"no test line in {path}")
    fields = {
        key.strip(): float(value) for key, value in LOG_FIELD.findall(lines[-1])
    }
    return fields["test WER"], fields["test CER"]


def read_beam_wer(log_path, split="test-clean"):
    """Beam-search test WER (%) the recipe printed, or None (greedy only).

    Arguments
    ---------
    log_path : str
        The run's output (stdout and stderr).
    split : str
        Test split.

    Returns
    -------
    float or None
        The last "<split> WER: x% (lexicon + n-gram beam search; ..." line's
        x.
    """
    beam = None
    with open(log_path, encoding="utf-8") as fin:
        for line in fin:
            match = WER_LINE.match(line)
            if match and match["split"] == split:
                beam = None
                if match["decoder"] == "lexicon":
                    beam = float(match["wer"])
    return beam


def spread(values):
    """Mean, std (0 for one value), min and max of ``values``.

    Arguments
    ---------
    values : list of float

    Returns
    -------
    dict
        ``mean``, ``std``, ``min``, ``max`` and ``n``.

    Example
    -------
    >>> spread([10.0, 20.0, 30.0])
    {'mean': 20.0, 'std': 10.0, 'min': 10.0, 'max': 30.0, 'n': 3}
    """
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {
        "mean": statistics.fmean(values),
        "std": std,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarize(runs):
    """Mean and spread over the seeds, per (labelled split, init).

    Arguments
    ---------
    runs : list of dict
        One per finished run: ``split``, ``init``, ``seed``,
        ``labelled_minutes``, ``labelled_utterances``, ``finetune_steps``,
        ``test_cer``, ``test_wer`` and ``test_wer_beam`` (None when the
        recipe decoded greedily only).

    Returns
    -------
    list of dict
        One per (split, init), in ``SPLITS`` then ``INITS`` order:
        ``split``, ``init``, ``seeds``, ``labelled_minutes``,
        ``labelled_utterances``, ``finetune_steps``, and ``cer``,
        ``wer`` and ``wer_beam`` (None unless every seed has one), each a
        ``spread``; ``wer_best`` is ``wer_beam`` when present, else
        ``wer``.
    """
    groups = {}
    for run_info in runs:
        groups.setdefault((run_info["split"], run_info["init"]), []).append(
            run_info
        )
    order = {name: i for i, name in enumerate(SPLITS + tuple(INITS))}
    summary = []
    for (split, init), group in sorted(
        groups.items(), key=lambda item: (order[item[0][0]], order[item[0][1]])
    ):
        beams = [r["test_wer_beam"] for r in group]
        row = {
            "split": split,
            "init": init,
            "seeds": sorted(r["seed"] for r in group),
            "labelled_minutes": group[0]["labelled_minutes"],
            "labelled_utterances": group[0]["labelled_utterances"],
            "finetune_steps": max(r["finetune_steps"] for r in group),
            "cer": spread([r["test_cer"] for r in group]),
            "wer": spread([r["test_wer"] for r in group]),
            "wer_beam": None if None in beams else spread(beams),
        }
        row["wer_best"] = row["wer_beam"] or row["wer"]
        summary.append(row)
    return summary


def improvements(summary):
    """S3L's relative WER improvement over the best scratch baseline.

    Per split with an ``s3l`` row and at least one scratch row; the WER is
    ``wer_best`` (beam search when every run of both has it) averaged over
    the seeds, and the best baseline is the one with the lowest.

    Arguments
    ---------
    summary : list of dict
        ``summarize``'s rows.

    Returns
    -------
    dict
        Per split: ``baseline`` (init), ``baseline_wer``, ``s3l_wer``,
        ``decoder`` ("beam search" or "greedy") and ``relative`` (% of the
        baseline's WER; positive: S3L is better).

    Example
    -------
    >>> def row(init, wer):
    ...     stats = {"mean": wer}
    ...     return {"split": "small", "init": init, "wer": stats,
    ...             "wer_beam": None, "wer_best": stats}
    >>> improvements([row("s3l", 35.0), row("scratch", 80.0),
    ...               row("crdnn", 50.0)])["small"]["relative"]
    30.0
    """
    result = {}
    for split in SPLITS:
        rows = {r["init"]: r for r in summary if r["split"] == split}
        baselines = [r for init, r in rows.items() if init in SCRATCH]
        if "s3l" not in rows or not baselines:
            continue
        s3l = rows["s3l"]
        beam = s3l["wer_beam"] is not None and all(
            r["wer_beam"] is not None for r in baselines
        )
        key = "wer_beam" if beam else "wer"
        best = min(baselines, key=lambda r: r[key]["mean"])
        baseline_wer, s3l_wer = best[key]["mean"], s3l[key]["mean"]
        relative = 0.0
        if baseline_wer > 0:
            relative = 100.0 * (baseline_wer - s3l_wer) / baseline_wer
        result[split] = {
            "baseline": best["init"],
            "baseline_wer": baseline_wer,
            "s3l_wer": s3l_wer,
            "decoder": "beam search" if beam else "greedy",
            "relative": round(relative, 2),
        }
    return result


def _cell(stats):
    """'mean ± std [min-max]' of a ``spread``, or '-'."""
    if stats is None:
        return "-"
    return (
        f"{stats['mean']:.2f} ± {stats['std']:.2f} "
        f"[{stats['min']:.2f}-{stats['max']:.2f}]"
    )


def results_table(summary, gains, pretraining):
    """The Markdown of ``results.md``.

    Arguments
    ---------
    summary : list of dict
        ``summarize``'s rows.
    gains : dict
        ``improvements``'s result.
    pretraining : str
        How the pretrained encoders were obtained (one sentence).

    Returns
    -------
    str
    """
    lines = [
        "| labelled data | init | finetuning steps | seeds "
        "| test CER (%) | test WER (%) | test WER, beam search (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(
            f"| {row['labelled_minutes']} min "
            f"({row['labelled_utterances']} utt.) "
            f"| {INIT_NAMES[row['init']]} | {row['finetune_steps']} "
            f"| {len(row['seeds'])} | {_cell(row['cer'])} "
            f"| {_cell(row['wer'])} | {_cell(row['wer_beam'])} |"
        )
    lines += [
        "",
        "Mean ± standard deviation [min-max] over the finetuning seeds; "
        f"{pretraining}",
        "",
    ]
    for split, gain in gains.items():
        low = " (low-label split)" if split == "small" else ""
        verdict = (
            "meets" if gain["relative"] >= TARGET_IMPROVEMENT else ("misses")
        )
        lines.append(
            f"- {split}{low}: S3L pretrained {gain['s3l_wer']:.2f} % WER vs "
            f"{gain['baseline_wer']:.2f} % for the best scratch baseline "
            f"({INIT_NAMES[gain['baseline']]}), {gain['decoder']}: "
            f"**{gain['relative']:.1f} % relative improvement** ({verdict} "
            f"the {TARGET_IMPROVEMENT:.0f} % target)."
        )
    return "\n".join(lines) + "\n"


def plot_curves(runs, pretrain_log, output):
    """Learning curves: pretraining loss, finetuning dev CER/WER."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    epochs = read_train_log(pretrain_log)
    if epochs:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for key in ("train_loss", "valid_loss"):
            ax.plot(
                [e["epoch"] for e in epochs],
                [e.get(key, float("nan")) for e in epochs],
                label=key.split("_")[0],
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel("contrastive loss")
        ax.set_title("S3L pretraining (tiny, synthetic corpus)")
        ax.legend()
        fig.tight_layout()
        paths.append(os.path.join(output, "pretraining_loss.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    colours = {}
    for run_info in runs:
        epochs = read_train_log(
            os.path.join(run_info["output_folder"], "train_log.txt")
        )
        epochs = [e for e in epochs if "valid_CER" in e]
        steps = [e.get("optimizer_step", e["epoch"]) for e in epochs]
        name = f"{run_info['init']}-{run_info['split']}"
        style = "-" if run_info["split"] == "small" else "--"
        label = None if name in colours else name
        colours.setdefault(name, f"C{len(colours)}")
        for ax, key in zip(axes, ("valid_CER", "valid_WER")):
            values = [e.get(key, float("nan")) for e in epochs]
            ax.plot(
                steps,
                values,
                style,
                color=colours[name],
                label=label,
                marker="o",
                markersize=2,
            )
    for ax, label in zip(axes, ("dev CER (%)", "dev WER (%)")):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle("CTC finetuning: S3L pretrained vs from scratch (all seeds)")
    fig.tight_layout()
    paths.append(os.path.join(output, "finetuning_wer.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def pretrain_folders(args):
    """Pretraining folder per seed, and the seeds that must pretrain."""
    if args.pretrained:
        return dict.fromkeys(args.seeds, args.pretrained), []
    if args.pretrain_per_seed:
        folders = {
            seed: os.path.join(args.output, f"pretrain-{seed}")
            for seed in args.seeds
        }
    else:
        folder = os.path.join(args.output, "pretrain")
        folders = dict.fromkeys(args.seeds, folder)
    if args.skip_pretrain:
        return folders, []
    # A folder shared by every seed is pretrained with the first seed.
    first_seeds = {}
    for seed, folder in folders.items():
        first_seeds.setdefault(folder, seed)
    return folders, list(first_seeds.values())


def check_pretrained(folder):
    """Exits with one line if ``folder`` holds no pretrained encoder."""
    for name in ("encoder.ckpt", "encoder_config.json"):
        if not os.path.isfile(os.path.join(folder, name)):
            sys.exit(
                f"s3l: error: {folder} has no {name}: not a pretraining "
                "output folder (run without --skip-pretrain/--pretrained)"
            )


RECORD = "experiment_run.json"
STARTED = "experiment_started.json"


def file_stamp(path):
    """(size, mtime) of a file: tells a rewritten checkpoint apart."""
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns]


def previous_result(folder, identity):
    """The result recorded in ``folder`` by a run with ``identity``, or None.

    Arguments
    ---------
    folder : str
        A run's output folder.
    identity : dict
        What makes the run (its command; for a pretrained init, the
        ``file_stamp`` of the encoder it finetuned).

    Returns
    -------
    dict or None
        The recorded result when every key of ``identity`` matches.
    """
    path = os.path.join(folder, RECORD)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fin:
        done = json.load(fin)
    if any(done.get(key) != value for key, value in identity.items()):
        return None
    print(f"(reusing {folder})", flush=True)
    return done


def record_result(folder, result, name=RECORD):
    """Writes ``result`` as ``folder``'s record, once the run is complete."""
    path = os.path.join(folder, name)
    with open(path + ".tmp", "w", encoding="utf-8") as fout:
        json.dump(result, fout, indent=2)
    os.replace(path + ".tmp", path)


def start_folder(folder, identity):
    """Readies ``folder`` for a run with ``identity``.

    The recipes resume from the checkpoints in their output folder: an
    interrupted run of the same identity resumes; anything else that is
    there (another command's checkpoints) is deleted first.
    """
    started = os.path.join(folder, STARTED)
    if os.path.isdir(folder):
        same = False
        if os.path.isfile(started):
            with open(started, encoding="utf-8") as fin:
                same = json.load(fin) == identity
        if not same:
            print(f"(deleting {folder}: another run's output)", flush=True)
            shutil.rmtree(folder)
    os.makedirs(folder, exist_ok=True)
    record_result(folder, identity, STARTED)


def file_hash(path):
    """SHA-256 of a file's bytes (a changed YAML or recipe: a new run)."""
    with open(path, "rb") as fin:
        return hashlib.sha256(fin.read()).hexdigest()


def finetune(args, python, init, split, seed, steps, csv_info, pretrained):
    """One finetuning run, or its earlier result for the same command."""
    csv_folder, minutes, count = csv_info
    out = os.path.join(args.output, f"{init}-{split}", str(seed))
    command = [
        python,
        os.path.join(RECIPES, "finetune.py"),
        INITS[init],
        f"--data_folder={args.corpus}",
        f"--output_folder={out}",
        f"--csv_folder={csv_folder}",
        "--skip_prep=True",
        f"--total_steps={steps}",
        f"--seed={seed}",
        "--noprogressbar",
        *[f"--{option}" for option in args.finetune_option],
    ]
    if init in PRETRAINED_INITS:
        command.append(f"--pretrained_path={pretrained}")
    if init in FROZEN:
        command.append("--freeze_encoder=True")
    if init == "logmel-frozen":
        command.extend(LOGMEL_OPTIONS)
    identity = {
        "command": command[1:],
        "code": [file_hash(os.path.join(ROOT, path)) for path in command[1:3]],
    }
    if init in PRETRAINED_INITS:
        identity["encoder"] = file_stamp(
            os.path.join(pretrained, "encoder.ckpt")
        )
    done = previous_result(out, identity)
    if done is not None:
        return done
    start_folder(out, identity)
    log_path = os.path.join(out, "experiment.log")
    seconds = run(command, log_path, args.threads)
    wer, cer = read_test_errors(out)
    result = {
        "split": split,
        "init": init,
        "seed": seed,
        "labelled_minutes": round(minutes, 2),
        "labelled_utterances": count,
        "finetune_steps": steps,
        "output_folder": out,
        "test_wer": wer,
        "test_cer": cer,
        "test_wer_beam": read_beam_wer(log_path),
        "seconds": round(seconds, 1),
        **identity,
    }
    record_result(out, result)
    return result


def describe_pretraining(folders):
    """One sentence saying how the S3L encoders were pretrained.

    Arguments
    ---------
    folders : list of str
        The pretraining folder finetuned with each seed, in seed order.

    Returns
    -------
    str
    """
    options = []
    for folder in dict.fromkeys(folders):
        path = os.path.join(folder, RECORD)
        if not os.path.isfile(path):
            return f"the S3L encoder is the existing pretraining {folder}."
        with open(path, encoding="utf-8") as fin:
            command = json.load(fin)["command"]
        options.append(
            dict(arg[2:].split("=", 1) for arg in command if "=" in arg)
        )
    steps = ", ".join(sorted({o["total_steps"] for o in options}))
    if len(options) == 1:
        return (
            f"the S3L encoder was pretrained once (seed "
            f"{options[0]['seed']}, {steps} steps) and finetuned with "
            "each seed."
        )
    seeds = ", ".join(o["seed"] for o in options)
    return (
        f"the S3L encoder was pretrained once per seed (seeds {seeds}, "
        f"{steps} steps)."
    )


def main(argv=None):
    """Runs the whole experiment; returns the results dict."""
    args = parse_args(argv)
    pretrained, to_pretrain = pretrain_folders(args)
    needs_encoder = bool(PRETRAINED_INITS & set(args.inits))
    if needs_encoder and not to_pretrain:
        for folder in set(pretrained.values()):
            check_pretrained(folder)
    os.makedirs(args.output, exist_ok=True)
    if args.librispeech:
        sys.path.insert(0, os.path.join(ROOT, "experiments", "real_speech"))
        from split import build_split

        held_out = {
            key: value
            for key, value in (
                ("test", args.test_speakers),
                ("dev", args.dev_speakers),
            )
            if value
        }
        build_split(args.librispeech, args.corpus, **held_out)
    else:
        from s3l_plugin.data.mini_librispeech import (
            generate_mini_librispeech,
        )

        generate_mini_librispeech(
            args.corpus,
            seed=0,
            train_minutes=args.unlabelled_minutes,
            dev_minutes=args.eval_minutes,
            test_minutes=args.eval_minutes,
            # Sentences of the recipes' grammar, so that the decoder's word
            # n-gram (built from the labelled transcripts) can help.
            sentences="grammar",
            progress=False,
        )
    folders = prepare_subsets(args)
    python = sys.executable
    seconds = {}
    for seed in to_pretrain if needs_encoder else []:
        folder = pretrained[seed]
        command = [
            python,
            os.path.join(RECIPES, "pretrain.py"),
            "hparams/s3l_tiny.yaml",
            f"--data_folder={args.corpus}",
            f"--output_folder={folder}",
            f"--total_steps={args.pretrain_steps}",
            f"--seed={seed}",
            "--noprogressbar",
            *[f"--{option}" for option in args.pretrain_option],
        ]
        identity = {
            "command": command[1:],
            "code": [file_hash(os.path.join(ROOT, p)) for p in command[1:3]],
        }
        done = previous_result(folder, identity)
        if done is None:
            start_folder(folder, identity)
            done = {
                **identity,
                "seconds": round(
                    run(command, folder + ".log", args.threads), 1
                ),
            }
            record_result(folder, done)
        seconds[f"pretrain-{seed}"] = done["seconds"]
    plan = []
    for split in args.splits:
        for init in args.inits:
            steps = args.finetune_steps
            if init in SCRATCH:
                steps *= args.scratch_long_factor
            for seed in args.seeds:
                plan.append(
                    (init, split, seed, steps, folders[split], pretrained[seed])
                )
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda job: finetune(args, python, *job), plan))
    summary = summarize(runs)
    gains = improvements(summary)
    pretraining = "no S3L-pretrained run."
    if needs_encoder:
        pretraining = describe_pretraining(
            [pretrained[seed] for seed in args.seeds]
        )
    first_pretrain = os.path.join(pretrained[args.seeds[0]], "train_log.txt")
    plots = plot_curves(runs, first_pretrain, args.output)
    results = {
        "unlabelled_minutes": args.unlabelled_minutes,
        "pretrain_steps": args.pretrain_steps,
        "finetune_steps": args.finetune_steps,
        "seeds": args.seeds,
        "pretraining": pretraining,
        "pretrain_seconds": seconds,
        "runs": runs,
        "summary": summary,
        "improvement": gains,
        "plots": plots,
    }
    with open(
        os.path.join(args.output, "results.json"), "w", encoding="utf-8"
    ) as out:
        json.dump(results, out, indent=2)
    table = results_table(summary, gains, pretraining)
    with open(
        os.path.join(args.output, "results.md"), "w", encoding="utf-8"
    ) as out:
        out.write(table)
    if args.plots_to:
        os.makedirs(args.plots_to, exist_ok=True)
        for path in plots:
            shutil.copy(path, args.plots_to)
        shutil.copy(os.path.join(args.output, "results.md"), args.plots_to)
    print(table)
    return results


if __name__ == "__main__":
    main()
