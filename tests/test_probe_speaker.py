"""The speaker identification probe, end to end on the tiny corpus."""

import csv
import json
import os
import re

import pytest
import torch
from hooked_recipe import load_recipe

from s3l_plugin.encoder import S3LEncoder, architecture
from s3l_plugin.pretrained import save_encoder
from s3l_plugin.probe import SpeakerProbe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "LibriSpeech", "probe_speaker.py")
TINY_YAML = os.path.join(ROOT, "hparams", "probe_speaker_tiny.yaml")

probe_speaker = load_recipe(RECIPE)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster (and far more steadily) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.manual_seed(0)
    encoder = S3LEncoder(**architecture("toy"))
    folder = str(tmp_path_factory.mktemp("pretrained"))
    save_encoder(encoder, folder)
    return encoder, folder


def _read(path):
    with open(path, encoding="utf-8", newline="") as csv_file:
        return list(csv.DictReader(csv_file))


def test_probe_trains_above_chance_and_writes_accuracy(
    tmp_path, tiny_corpus, pretrained
):
    encoder, folder = pretrained
    output = tmp_path / "probe"
    brain = probe_speaker.main(
        [
            TINY_YAML,
            f"--data_folder={tiny_corpus}",
            f"--pretrained_path={folder}",
            f"--output_folder={output}",
            "--noprogressbar",
            "--number_of_epochs=6",
            # ~8 steps an epoch on this corpus's ~33 training utterances
            "--dynamic_batching=False",
            "--batch_size=4",
            "--lr=0.02",
        ]
    )
    result = json.loads((output / "speaker_accuracy.json").read_text())
    assert result["speakers"] == tiny_corpus.args["train_speakers"]
    assert result["encoder"].startswith("pretrained encoder from")
    assert result["epochs"] == 6
    assert 0 <= result["test_accuracy"] <= 100
    assert result["test_utterances"] >= result["speakers"]  # >= 1 each
    # The sanity property: the classifier learns the training speakers.
    log = (output / "train_log.txt").read_text()
    accuracies = [float(a) for a in re.findall(r"accuracy: ([\d.e+-]+)", log)]
    assert len(accuracies) == 8  # 6 epochs, then train and test sets
    assert accuracies[5] > 2 * result["chance_accuracy"], log
    assert result["train_accuracy"] > 2 * result["chance_accuracy"], log
    weights = result["layer_weights"]
    assert len(weights) == len(result["layers"]) == 2
    assert abs(sum(weights) - 1) < 1e-3 and weights != [0.5, 0.5]
    # The encoder is frozen: the pretrained weights are untouched.
    model = brain.modules.model
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, model.encoder.state_dict()[key]), key
    # Train and test share speakers, never an utterance.
    train = _read(output / "csv" / "speaker_train.csv")
    test = _read(output / "csv" / "speaker_test.csv")
    assert not {r["ID"] for r in train} & {r["ID"] for r in test}
    assert {r["speaker"] for r in test} == {r["speaker"] for r in train}
    assert len(test) < len(train)


def test_random_init_encoder_is_said(tmp_path, tiny_corpus):
    output = tmp_path / "random"
    brain = probe_speaker.main(
        [
            TINY_YAML,
            f"--data_folder={tiny_corpus}",
            f"--output_folder={output}",
            "--noprogressbar",
            "--encoder_size=toy",
            "--number_of_epochs=1",
        ]
    )
    assert brain.result["encoder"] == "random-init encoder"
    assert "RANDOMLY INITIALISED" in (output / "log.txt").read_text()
    assert (output / "speaker_accuracy.json").is_file()


def test_speaker_split_is_deterministic_per_speaker(tmp_path):
    rows = [
        f"{spk}-{chapter}-{utt:04d},2.0,x.flac,{spk}-{chapter},A B"
        for spk in (11, 12, 13)
        for chapter in (1, 2)
        for utt in range(5 if spk != 13 else 1)
    ] + ["99-1-0000,2.0,x.flac,99-1,ALONE"]
    path = tmp_path / "all.csv"
    path.write_text("ID,duration,wav,spk_id,wrd\n" + "\n".join(rows) + "\n")
    first = probe_speaker.split_speaker_utterances(
        str(path), str(tmp_path / "a"), 0.2, seed=3
    )
    second = probe_speaker.split_speaker_utterances(
        str(path), str(tmp_path / "b"), 0.2, seed=3
    )
    for name in ("train", "test"):
        assert _read(first[name]) == _read(second[name])
    test = _read(first["test"])
    counts = {s: sum(r["speaker"] == s for r in test) for s in ("11", "12")}
    assert counts == {"11": 2, "12": 2}  # 20 % of 10; 13: 1 of 2
    assert {r["speaker"] for r in test} == {"11", "12", "13"}
    # A speaker with one utterance cannot be both trained and tested.
    assert "99" not in {r["speaker"] for r in _read(first["train"]) + test}


def test_probe_rejects_layers_the_encoder_lacks():
    encoder = S3LEncoder(**architecture("toy"))
    with pytest.raises(ValueError, match="out of range"):
        SpeakerProbe(encoder, 3, layers=[5])
