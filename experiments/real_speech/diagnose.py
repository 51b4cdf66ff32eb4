"""What a pretrained S3L encoder's frames hold, against a random encoder.

Measures, on held-out utterances (a SpeechBrain CSV with ``wav``)::

    python experiments/real_speech/diagnose.py PRETRAIN_FOLDER CSV

for the pretrained encoder and for a randomly initialised one of the same
architecture (seed 0), per transformer layer and for the projection:

- ``eff_rank``: effective rank (exp of the entropy of the normalised
  eigenvalues) of the centred frames, and ``top1``, the share of the
  variance on the first principal axis (dimensional collapse);
- ``within``: share of the variance that is within utterances (the rest is
  per-utterance constant: speaker, channel, level);
- ``pos_r2``: held-out R^2 of a ridge regression from a frame to its
  relative position t/T in the utterance (a position code lets the
  pretext task be solved without content);
- ``stationary``: the frames' spread over time on stationary white noise,
  relative to their spread on speech (content-free variation);
- ``adj_cos``: mean cosine of neighbouring frames (smoothness).
"""

import argparse
import csv
import json
import os
import sys

import soundfile as sf
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.abspath(ROOT))

from s3l_plugin.pretrained import build_encoder, load_encoder  # noqa: E402


def read_wavs(csv_path, limit):
    """The first ``limit`` waveforms of a SpeechBrain CSV."""
    with open(csv_path, newline="") as stream:
        rows = list(csv.DictReader(stream))[:limit]
    return [
        torch.from_numpy(sf.read(r["wav"], dtype="float32")[0]) for r in rows
    ]


@torch.no_grad()
def frames_of(encoder, wav):
    """Every transformer layer's frames and the projection, one utterance."""
    feats, lens = encoder.features(wav[None], torch.ones(1))
    encoded = encoder.encode(feats, lens, return_layers=True)
    layers = [layer[0] for layer in encoded.layers]
    return layers + [encoder.proj(encoded.out)[0]]


def effective_rank(x):
    """exp(entropy) of the normalised covariance eigenvalues, top share."""
    x = x - x.mean(0)
    eig = torch.linalg.eigvalsh(x.T @ x / len(x)).clamp(min=0)
    p = eig / eig.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy.exp()), float(p.max())


def within_share(utterances):
    """Share of the total variance that is within utterances."""
    allx = torch.cat(utterances)
    total = allx.var(0, unbiased=False).sum()
    within = sum(((u - u.mean(0)) ** 2).sum(0).sum() for u in utterances)
    return float(within / len(allx) / total)


def position_r2(utterances, ridge=1.0):
    """Held-out R^2 of predicting t/T from a frame (ridge regression)."""
    half = len(utterances) // 2

    def design(items):
        x = torch.cat(items)
        t = torch.cat([torch.linspace(0, 1, len(u)) for u in items])
        return torch.cat([x, torch.ones(len(x), 1)], 1), t

    x_train, t_train = design(utterances[:half])
    x_test, t_test = design(utterances[half:])
    mean, std = x_train[:, :-1].mean(0), x_train[:, :-1].std(0) + 1e-5
    x_train[:, :-1] = (x_train[:, :-1] - mean) / std
    x_test[:, :-1] = (x_test[:, :-1] - mean) / std
    gram = x_train.T @ x_train + ridge * torch.eye(x_train.shape[1])
    weights = torch.linalg.solve(gram, x_train.T @ t_train)
    residual = ((x_test @ weights - t_test) ** 2).mean()
    return float(1 - residual / t_test.var(unbiased=False))


def temporal_spread(frames):
    """Mean over dimensions of the std over time."""
    return float(frames.std(0).mean())


def adjacent_cosine(utterances):
    """Mean cosine similarity of consecutive frames."""
    sims = [
        torch.nn.functional.cosine_similarity(u[1:], u[:-1], dim=-1)
        for u in utterances
    ]
    return float(torch.cat(sims).mean())


def describe(encoder, wavs, seconds=10.0):
    """The measures of the module docstring, one dict per layer."""
    per_utt = [frames_of(encoder, w) for w in wavs]
    noise = (
        torch.randn(
            int(seconds * 16000), generator=torch.Generator().manual_seed(0)
        )
        * 0.05
    )
    noise_layers = frames_of(encoder, noise)
    rows = []
    for index in range(len(per_utt[0])):
        utterances = [layers[index] for layers in per_utt]
        rank, top1 = effective_rank(torch.cat(utterances))
        speech_spread = sum(temporal_spread(u) for u in utterances) / len(
            utterances
        )
        rows.append(
            {
                "layer": index if index < len(per_utt[0]) - 1 else "proj",
                "eff_rank": round(rank, 1),
                "dim": utterances[0].shape[1],
                "top1": round(top1, 3),
                "within": round(within_share(utterances), 3),
                "pos_r2": round(position_r2(utterances), 3),
                "stationary": round(
                    temporal_spread(noise_layers[index]) / speech_spread, 3
                ),
                "adj_cos": round(adjacent_cosine(utterances), 3),
            }
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pretrained", help="pretraining output folder")
    parser.add_argument("csv", help="held-out utterances (SpeechBrain CSV)")
    parser.add_argument("--utterances", type=int, default=40)
    parser.add_argument("--json", default=None, help="also write this JSON")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    wavs = read_wavs(args.csv, args.utterances)
    encoders = {
        "pretrained": load_encoder(args.pretrained),
        "random": build_encoder(args.pretrained).eval(),
    }
    results = {}
    for name, encoder in encoders.items():
        results[name] = describe(encoder, wavs)
        for row in results[name]:
            print(name, json.dumps(row))
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(results, stream, indent=1)


if __name__ == "__main__":
    main()
