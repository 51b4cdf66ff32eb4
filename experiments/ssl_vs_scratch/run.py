#!/usr/bin/env python3
"""Does S3L pretraining help? Pretrain, finetune, compare with scratch.

One command, about 30 minutes on a 2-core CPU::

    python experiments/ssl_vs_scratch/run.py

1. Generates a larger synthetic mini LibriSpeech (``--unlabelled-minutes``
   of training speech from 24 eSpeak NG speakers; dev and test speakers are
   held out).
2. Pretrains the tiny S3L model (``hparams/s3l_tiny.yaml``) on all of its
   training audio, without transcripts.
3. Finetunes for CTC ASR (``hparams/finetune_ctc_tiny.yaml``) on a small
   labelled subset and on a larger one, each from the pretrained encoder and
   from scratch (same steps, same seed); then from scratch on the larger
   subset once more with ``--scratch-long-factor`` times the steps, to see
   whether scratch only needs longer.
4. Writes ``results.md`` / ``results.json`` (test WER on held-out speakers)
   and learning-curve plots (PNG) into ``--output``.

The synthetic speech makes this a check of the machinery (does pretraining
transfer at all?), not a LibriSpeech result.
"""

import argparse
import csv
import json
import os
import random
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
ROOT = os.path.abspath(ROOT)
RECIPES = os.path.join(ROOT, "recipes", "LibriSpeech")
sys.path.insert(0, RECIPES)


def parse_args(argv):
    """Command-line options; defaults are the 30-minute configuration."""
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
    parser.add_argument("--seed", type=int, default=1986)
    parser.add_argument(
        "--scratch-long-factor",
        type=int,
        default=3,
        help="extra scratch run on the larger subset with this many times "
        "the finetuning steps (0 or 1: none)",
    )
    parser.add_argument(
        "--plots-to",
        default=None,
        help="also copy the PNG plots here (e.g. docs/figures)",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="smoke-test sizes (a minute)"
    )
    args = parser.parse_args(argv)
    if args.tiny:
        args.unlabelled_minutes, args.eval_minutes = 1.5, 0.4
        args.small_minutes, args.full_minutes = 0.5, 1.0
        args.pretrain_steps, args.finetune_steps = 3, 3
    if args.corpus is None:
        args.corpus = os.path.join(args.output, "corpus")
    return args


def run(command, log_path):
    """Runs a recipe, teeing its output to ``log_path``; fails loudly."""
    print("$ " + " ".join(command), flush=True)
    start = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.run(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
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
    prepare_librispeech(
        args.corpus,
        full_csv,
        tr_splits=["train-clean-100"],
        dev_splits=["dev-clean"],
        te_splits=["test-clean"],
    )
    with open(
        os.path.join(full_csv, "train-clean-100.csv"), encoding="utf-8"
    ) as fin:
        reader = csv.DictReader(fin)
        fieldnames, rows = reader.fieldnames, list(reader)
    folders = {}
    for name, minutes in (
        ("small", args.small_minutes),
        ("full", args.full_minutes),
    ):
        folder = os.path.join(args.output, f"csv_{name}")
        os.makedirs(folder, exist_ok=True)
        subset, got = labelled_subset(rows, minutes, args.seed)
        write_csv(os.path.join(folder, "train.csv"), subset, fieldnames)
        for split in ("dev-clean", "test-clean"):
            with open(os.path.join(full_csv, f"{split}.csv"), "rb") as src:
                data = src.read()
            with open(os.path.join(folder, f"{split}.csv"), "wb") as dst:
                dst.write(data)
        folders[name] = (folder, got, len(subset))
    return folders


LOG_FIELD = re.compile(r"([A-Za-z_ ]+?):\s*([-+0-9.eE]+)")


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


def plot_curves(runs, pretrain_log, output):
    """Learning curves: pretraining loss, finetuning valid WER per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    epochs = read_train_log(pretrain_log)
    if epochs:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(
            [e["epoch"] for e in epochs],
            [e.get("train_loss", float("nan")) for e in epochs],
            label="train",
        )
        ax.plot(
            [e["epoch"] for e in epochs],
            [e.get("valid_loss", float("nan")) for e in epochs],
            label="valid",
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
    for name, run_info in runs.items():
        epochs = read_train_log(
            os.path.join(run_info["output_folder"], "train_log.txt")
        )
        epochs = [e for e in epochs if "valid_CER" in e]
        steps = [e.get("optimizer_step", e["epoch"]) for e in epochs]
        style = "o-" if name.startswith("s3l") else "s--"
        for ax, key in zip(axes, ("valid_CER", "valid_WER")):
            values = [e.get(key, float("nan")) for e in epochs]
            ax.plot(steps, values, style, label=name, markersize=3)
    for ax, label in zip(axes, ("dev CER (%)", "dev WER (%)")):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle("CTC finetuning: S3L-pretrained vs from scratch")
    fig.tight_layout()
    paths.append(os.path.join(output, "finetuning_wer.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def main(argv=None):
    """Runs the whole experiment; returns the results dict."""
    args = parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    from s3l_plugin.data.mini_librispeech import generate_mini_librispeech

    generate_mini_librispeech(
        args.corpus,
        seed=0,
        train_minutes=args.unlabelled_minutes,
        dev_minutes=args.eval_minutes,
        test_minutes=args.eval_minutes,
        progress=False,
    )
    folders = prepare_subsets(args)
    python = sys.executable
    pretrain_out = os.path.join(args.output, "pretrain")
    seconds = {}
    seconds["pretrain"] = run(
        [
            python,
            os.path.join(RECIPES, "pretrain.py"),
            "hparams/s3l_tiny.yaml",
            f"--data_folder={args.corpus}",
            f"--output_folder={pretrain_out}",
            f"--total_steps={args.pretrain_steps}",
            f"--seed={args.seed}",
            "--noprogressbar",
        ],
        os.path.join(args.output, "pretrain.log"),
    )
    runs = {}
    plan = [
        (f"{init}-{subset}", subset, init, args.finetune_steps)
        for subset in folders
        for init in ("s3l", "scratch")
    ]
    if args.scratch_long_factor > 1:
        factor = args.scratch_long_factor
        plan.append(
            (
                f"scratch-full-x{factor}",
                "full",
                "scratch",
                factor * args.finetune_steps,
            )
        )
    for name, subset, init, steps in plan:
        csv_folder, minutes, count = folders[subset]
        out = os.path.join(args.output, name)
        command = [
            python,
            os.path.join(RECIPES, "finetune.py"),
            "hparams/finetune_ctc_tiny.yaml",
            f"--data_folder={args.corpus}",
            f"--output_folder={out}",
            f"--csv_folder={csv_folder}",
            "--skip_prep=True",
            f"--total_steps={steps}",
            f"--seed={args.seed}",
            "--noprogressbar",
        ]
        if init == "s3l":
            command.append(f"--pretrained_path={pretrain_out}")
        seconds[name] = run(command, os.path.join(args.output, f"{name}.log"))
        wer, cer = read_test_errors(out)
        runs[name] = {
            "labelled_minutes": round(minutes, 2),
            "labelled_utterances": count,
            "init": init,
            "finetune_steps": steps,
            "output_folder": out,
            "test_wer": wer,
            "test_cer": cer,
            "seconds": round(seconds[name], 1),
        }
    plots = plot_curves(
        runs, os.path.join(pretrain_out, "train_log.txt"), args.output
    )
    results = {
        "unlabelled_minutes": args.unlabelled_minutes,
        "pretrain_steps": args.pretrain_steps,
        "finetune_steps": args.finetune_steps,
        "pretrain_seconds": round(seconds["pretrain"], 1),
        "runs": runs,
        "plots": plots,
    }
    with open(
        os.path.join(args.output, "results.json"), "w", encoding="utf-8"
    ) as out:
        json.dump(results, out, indent=2)
    lines = [
        "| labelled data | init | finetuning steps | test CER (%) "
        "| test WER (%) | finetuning time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for run_info in runs.values():
        lines.append(
            f"| {run_info['labelled_minutes']} min "
            f"({run_info['labelled_utterances']} utt.) | {run_info['init']} "
            f"| {run_info['finetune_steps']} | {run_info['test_cer']:.2f} | {run_info['test_wer']:.2f} "
            f"| {run_info['seconds']} |"
        )
    table = "\n".join(lines)
    with open(os.path.join(args.output, "results.md"), "w") as out:
        out.write(table + "\n")
    if args.plots_to:
        import shutil

        os.makedirs(args.plots_to, exist_ok=True)
        for path in plots:
            shutil.copy(path, args.plots_to)
        shutil.copy(os.path.join(args.output, "results.md"), args.plots_to)
    print(table)
    return results


if __name__ == "__main__":
    main()
