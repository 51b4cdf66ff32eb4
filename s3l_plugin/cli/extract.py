"""``s3l-extract``: per-layer features of a folder of audio files.

::

    s3l-extract results/s3l_tiny/1986/inference wavs/ feats/ --layers -2 -1

``MODEL_DIR`` is the ``inference/`` folder the pretraining recipe writes
(or a Hub repo id), loaded with SpeechBrain's ``WaveformEncoder``. Every
audio file under ``AUDIO_DIR`` (``--extensions``, searched recursively)
gives ``OUT_DIR/<its relative path>.pt``: ``torch.save`` of a float32
tensor (layers, frames, d_model) of the selected transformer layers, read
back with ``torch.load(path, weights_only=True)``. ``OUT_DIR/manifest.csv``
lists ``ID,audio,features,frames``. Resumable: a feature file already
written is kept and not recomputed (files are written whole or not at
all). An unusable file is skipped with one line on stderr; the exit
status is 2 when no file has features.
"""

import argparse
import csv
import os
import sys

import torch

from s3l_plugin.cli.common import (
    fail,
    load_pretrained,
    progress,
    read_audio,
    skip,
)
from s3l_plugin.data.atomic import atomic_path

MANIFEST = "manifest.csv"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="s3l-extract",
        description="Per-layer features of the audio files under AUDIO_DIR "
        "with a pretrained S3L encoder (an inference/ folder written by "
        "recipes/LibriSpeech/pretrain.py), one .pt file per file plus "
        "manifest.csv in OUT_DIR.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR")
    parser.add_argument("audio_dir", metavar="AUDIO_DIR")
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[-1],
        help="transformer layers to save, negative from the end; they must "
        "share a frame rate (default: -1, the last)",
    )
    parser.add_argument(
        "--extensions",
        nargs="+",
        default=[".wav", ".flac", ".ogg"],
        help="audio file name endings (default: .wav .flac .ogg)",
    )
    parser.add_argument(
        "--savedir", help="where SpeechBrain collects the model's files"
    )
    parser.add_argument("--device", default="cpu", help="torch device")
    return parser.parse_args(argv)


def find_audio(folder, extensions):
    """Sorted paths, relative to ``folder``, of its audio files."""
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            if name.lower().endswith(tuple(extensions)):
                found.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)


def check_layers(layers, architecture):
    """Fails unless ``layers`` exist and run at one frame rate."""
    transf1 = architecture.transf1_layers
    total = transf1 + architecture.transf2_layers
    rates = set()
    for layer in layers:
        if not -total <= layer < total:
            fail(f"--layers {layer}: the encoder has {total} layers")
        rates.add(layer % total < transf1)
    if len(rates) > 1:
        fail(
            f"--layers {layers}: the first {transf1} layers run at twice the "
            "frame rate of the others; extract them separately"
        )


def main(argv=None):
    """Runs the tool; returns the exit status."""
    from speechbrain.inference.encoders import WaveformEncoder

    args = parse_args(argv)
    if not os.path.isdir(args.audio_dir):
        fail(f"{args.audio_dir}: not a folder")
    files = find_audio(args.audio_dir, args.extensions)
    if not files:
        fail(f"{args.audio_dir}: no {'/'.join(args.extensions)} file")
    ssl = load_pretrained(
        WaveformEncoder, args.model_dir, args.savedir, args.device
    )
    encoder = ssl.mods.encoder.encoder
    check_layers(args.layers, encoder.architecture)
    sample_rate = encoder.features.sample_rate
    rows = []
    for rel_path in progress(files, "s3l-extract"):
        utt_id = os.path.splitext(rel_path)[0]
        out_path = os.path.join(args.out_dir, utt_id + ".pt")
        audio_path = os.path.join(args.audio_dir, rel_path)
        if os.path.isfile(out_path):
            try:
                feats = torch.load(out_path, weights_only=True)
            except Exception as error:  # torch raises several error types
                skip(f"{out_path}: unreadable, recomputed ({error})")
            else:
                rows.append((utt_id, audio_path, out_path, feats.shape[1]))
                continue
        wav = read_audio(audio_path, sample_rate, encoder.min_input_seconds)
        if wav is None:
            continue
        out = ssl.encode_batch(wav.unsqueeze(0), torch.ones(1))
        feats = torch.stack([out["layers"][i][0] for i in args.layers])
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        with atomic_path(out_path) as tmp_path:
            torch.save(feats.float().cpu().contiguous(), tmp_path)
        rows.append((utt_id, audio_path, out_path, feats.shape[1]))
    if not rows:
        fail("no audio file could be processed")
    write_manifest(os.path.join(args.out_dir, MANIFEST), rows)
    return 0


def write_manifest(path, rows):
    """Writes ``ID,audio,features,frames`` rows (atomically)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = [["ID", "audio", "features", "frames"], *rows]
    with atomic_path(path) as tmp_path:
        with open(tmp_path, "w", newline="", encoding="utf-8") as out:
            csv.writer(out).writerows(lines)


if __name__ == "__main__":
    sys.exit(main())
