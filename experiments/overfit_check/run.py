#!/usr/bin/env python3
"""Does the tiny CTC model leave the blank plateau? The 8-utterance check.

In the style of SpeechBrain's ASR_CTC integration test: 8 short training
utterances (1.5-3.5 s) of the mini corpus, batches of 2, Adam at 1e-3,
character CTC; the tiny S3L encoder from scratch must overfit them (train
loss below 1.0). ``tests/test_learning.py`` runs the same function for the
recipes' default head. Per head type and seed this prints the epoch at
which the train loss first fell below 1.0 and the last loss::

    python experiments/overfit_check/run.py --corpus data/mini_librispeech \\
        --heads linear conv --seeds 0 1 2

About 1-2 minutes per run on one CPU thread.
"""

import argparse
import glob
import os
import statistics

import soundfile as sf
import torch

from s3l_plugin.ctc import S3LCTC, build_ctc_head, ctc_loss
from s3l_plugin.encoder import S3LEncoder, architecture
from s3l_plugin.vocabulary import CharVocabulary

# The train loss the model must fall below: off the blank plateau.
LOSS_TARGET = 1.0


def short_utterances(corpus, count=8, low=1.5, high=3.5):
    """The first ``count`` training utterances lasting low..high seconds.

    Arguments
    ---------
    corpus : str
        A LibriSpeech-layout folder with ``train-clean-100``.
    count : int
        Utterances wanted.
    low, high : float
        Duration range in seconds.

    Returns
    -------
    list of (torch.Tensor, str)
        Waveform and transcript.
    """
    found = []
    pattern = os.path.join(corpus, "train-clean-100", "*", "*", "*.trans.txt")
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as transcripts:
            for line in transcripts:
                utt_id, text = line.split(maxsplit=1)
                audio = os.path.join(os.path.dirname(path), utt_id + ".flac")
                wav, rate = sf.read(audio, dtype="float32")
                if low <= len(wav) / rate <= high:
                    found.append((torch.from_numpy(wav), text.strip()))
                if len(found) == count:
                    return found
    raise ValueError(f"fewer than {count} short utterances in {corpus}")


def batch_of(pairs, vocab):
    """Padded waveforms, relative lengths, padded tokens, token counts."""
    wavs = torch.nn.utils.rnn.pad_sequence([w for w, _ in pairs], True)
    wav_lens = torch.tensor([len(w) for w, _ in pairs]) / wavs.shape[1]
    tokens = [torch.tensor(vocab.encode(text)) for _, text in pairs]
    token_lens = torch.tensor([len(t) for t in tokens])
    tokens = torch.nn.utils.rnn.pad_sequence(tokens, True)
    return wavs, wav_lens, tokens, token_lens


def overfit_curve(
    corpus, head_type="linear", seed=0, epochs=40, stop=LOSS_TARGET
):
    """Mean train loss per epoch of the 8-utterance check.

    Arguments
    ---------
    corpus : str
        The corpus folder.
    head_type : str
        ``build_ctc_head``'s (``"linear"`` or ``"conv"``, the tiny
        finetuning YAML's sizes: 20 ms frames, 128 channels).
    seed : int
        Torch seed (initialisation and dropout).
    epochs : int
        At most this many epochs.
    stop : float or None
        Stop after the first epoch whose loss is below this.

    Returns
    -------
    list of float
    """
    torch.manual_seed(seed)
    vocab = CharVocabulary()
    batches = [
        batch_of(pairs, vocab)
        for pairs in zip(*[iter(short_utterances(corpus))] * 2)
    ]
    encoder = S3LEncoder(**architecture("tiny"))
    head = build_ctc_head(
        head_type,
        encoder.architecture.d_model,
        upsample=4,
        vocab_size=len(vocab),
        dropout=0.1,
        channels=128,
    )
    model = S3LCTC(encoder, head, num_layers=2)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3
    )
    curve = []
    for _ in range(epochs):
        total = 0.0
        for wavs, wav_lens, tokens, token_lens in batches:
            feats, feat_lens = model.features(wavs, wav_lens)
            logits, lengths = model(feats, feat_lens)
            loss = ctc_loss(logits, lengths, tokens, token_lens)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        curve.append(total / len(batches))
        if stop is not None and curve[-1] < stop:
            break
    return curve


def main(argv=None):
    """Runs the check per head type and seed; prints one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="data/mini_librispeech")
    parser.add_argument("--heads", nargs="+", default=["linear", "conv"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    for head_type in args.heads:
        below = []
        for seed in args.seeds:
            curve = overfit_curve(args.corpus, head_type, seed, args.epochs)
            epoch = len(curve) if curve[-1] < LOSS_TARGET else None
            below.append(epoch)
            result = f"below {LOSS_TARGET} at epoch {epoch}"
            if epoch is None:
                result = f"not below {LOSS_TARGET}"
            print(
                f"head {head_type} seed {seed}: {result} (last loss "
                f"{curve[-1]:.2f} after {len(curve)} epochs)",
                flush=True,
            )
        reached = [e for e in below if e]
        if reached:
            print(
                f"head {head_type}: {len(reached)}/{len(below)} seeds below "
                f"{LOSS_TARGET}, median epoch {statistics.median(reached)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
