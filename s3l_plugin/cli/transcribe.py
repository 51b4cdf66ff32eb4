"""``s3l-transcribe``: transcribe audio files with a finetuned S3L model.

::

    s3l-transcribe results/finetune_ctc_tiny/1986/inference a.flac b.wav \
        --output hyps.tsv

``MODEL_DIR`` is the ``inference/`` folder the finetuning recipe writes
(or a Hub repo id), loaded with SpeechBrain's ``EncoderASR``; each file is
decoded as ``EncoderASR.transcribe_file`` would (the recipe's beam search
when the folder has one; ``--greedy`` for greedy CTC). Output: one
``path<TAB>transcript`` line per file, in the order given. An unusable file
is skipped with one line on stderr; the exit status is 2 when no file could
be transcribed.
"""

import argparse
import sys

import torch

from s3l_plugin.cli.common import (
    fail,
    load_pretrained,
    progress,
    read_audio,
)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="s3l-transcribe",
        description="Transcribe audio files with a finetuned S3L model "
        "(an inference/ folder written by recipes/LibriSpeech/finetune.py).",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR")
    parser.add_argument("audio", metavar="AUDIO", nargs="+")
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="write path<TAB>transcript lines here (default: stdout)",
    )
    parser.add_argument(
        "--greedy",
        action="store_true",
        help="greedy CTC decoding instead of the folder's beam search",
    )
    parser.add_argument(
        "--savedir", help="where SpeechBrain collects the model's files"
    )
    parser.add_argument("--device", default="cpu", help="torch device")
    return parser.parse_args(argv)


def main(argv=None):
    """Runs the tool; returns the exit status."""
    from speechbrain.inference.ASR import EncoderASR

    args = parse_args(argv)
    overrides = {"beam_search": None} if args.greedy else {}
    asr = load_pretrained(
        EncoderASR,
        args.model_dir,
        args.savedir,
        args.device,
        overrides=overrides,
        overrides_must_match=False,
    )
    model = asr.mods.encoder.model
    if hasattr(asr.tokenizer, "expect_len"):  # a CTCTextEncoder's labels
        asr.tokenizer.expect_len(model.head.vocab_size)
    sample_rate = model.features.sample_rate
    min_seconds = model.encoder.min_input_seconds
    lines = []
    for path in progress(args.audio, "s3l-transcribe"):
        wav = read_audio(path, sample_rate, min_seconds)
        if wav is None:
            continue
        words, _ = asr.transcribe_batch(wav.unsqueeze(0), torch.ones(1))
        lines.append(f"{path}\t{words[0]}\n")
    if not lines:
        fail("no audio file could be transcribed")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.writelines(lines)
    else:
        sys.stdout.writelines(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
