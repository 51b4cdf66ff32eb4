"""Libri-light limited supervision: the mini corpus's sets, their CSVs and
finetuning on them."""

import csv
import os
import shutil

import pytest
import soundfile as sf
import torch
from hooked_recipe import load_recipe
from librispeech_prepare import (
    LIBRILIGHT_SETS,
    librilight_splits,
    prepare_librilight,
    prepare_librispeech,
)

from s3l_plugin.config import ConfigError
from s3l_plugin.data.mini_librispeech import TRAIN, write_finetuning_sets
from s3l_plugin.encoder import S3LEncoder, architecture
from s3l_plugin.pretrained import save_encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "LibriSpeech", "finetune.py")
TINY_YAML = os.path.join(ROOT, "hparams", "finetune_ctc_tiny.yaml")
# The tiny corpus has 1.5 min of training speech: 3 s per Libri-light hour
# leaves ~0.25 s per fold half (one utterance) and 13.5 s per 9h half.
SECONDS_PER_HOUR = 3.0

finetune = load_recipe(RECIPE)


@pytest.fixture(scope="module")
def corpus(tiny_corpus, tmp_path_factory):
    """A copy of the tiny corpus with its Libri-light sets."""
    folder = str(tmp_path_factory.mktemp("librilight") / "mini")
    shutil.copytree(tiny_corpus, folder)
    write_finetuning_sets(folder, seconds_per_hour=SECONDS_PER_HOUR)
    return folder


def _rows(path):
    with open(path, encoding="utf-8", newline="") as csv_file:
        return {row["ID"]: row for row in csv.DictReader(csv_file)}


def test_layout_matches_libri_light(corpus):
    root = os.path.join(corpus, "librispeech_finetuning")
    assert sorted(os.listdir(os.path.join(root, "1h"))) == list("012345")
    for part in LIBRILIGHT_SETS["10h"]:
        assert sorted(os.listdir(os.path.join(root, part))) == [
            "clean",
            "other",
        ]
    seen = {}
    for split in librilight_splits("10h", root):
        for dirpath, _, files in os.walk(split):
            for name in files:
                if name.endswith(".flac"):
                    assert name not in seen, f"{name} in {split} and {seen}"
                    seen[name] = split
                    speaker, chapter = name.split("-")[:2]
                    # <subset>/<speaker>/<chapter>/<id>.flac, as LibriSpeech
                    assert dirpath.endswith(os.path.join(speaker, chapter))
                    original = os.path.join(
                        corpus, TRAIN, speaker, chapter, name
                    )
                    assert (
                        sf.read(os.path.join(dirpath, name))[0]
                        == sf.read(original)[0]
                    ).all()
    # Every fold half holds at least one utterance; 9h the most.
    for split in librilight_splits("10h", root):
        assert any(split == s for s in seen.values()), split


def test_prepared_sets_nest_and_keep_transcripts(corpus, tmp_path):
    rows = {}
    for labelled_set in LIBRILIGHT_SETS:
        path = prepare_librilight(corpus, str(tmp_path), labelled_set)
        assert os.path.basename(path) == f"{labelled_set}.csv"
        rows[labelled_set] = _rows(path)
    ids = {name: set(set_rows) for name, set_rows in rows.items()}
    assert ids["10min"] < ids["1h"] < ids["10h"]
    train = _rows(
        prepare_librispeech(corpus, str(tmp_path / "full"), tr_splits=[TRAIN])[
            TRAIN
        ]
    )
    assert ids["10h"] <= set(train)
    for utt_id, row in rows["10h"].items():
        assert row["wrd"] == train[utt_id]["wrd"]
        assert row["spk_id"] == train[utt_id]["spk_id"]
    hours = {
        name: sum(float(r["duration"]) for r in set_rows.values())
        for name, set_rows in rows.items()
    }
    # Each part is filled up to its share of SECONDS_PER_HOUR per hour.
    assert hours["1h"] >= SECONDS_PER_HOUR
    assert hours["10h"] - hours["1h"] >= 9 * SECONDS_PER_HOUR
    assert hours["10h"] < sum(float(r["duration"]) for r in train.values())


def test_finetuning_sets_are_deterministic_and_guarded(corpus, tmp_path):
    again = str(tmp_path / "mini")
    shutil.copytree(corpus, again, ignore=shutil.ignore_patterns("librisp*"))
    write_finetuning_sets(again, seconds_per_hour=SECONDS_PER_HOUR)
    for name in ("10min", "10h"):
        first = _rows(prepare_librilight(corpus, str(tmp_path / "a"), name))
        second = _rows(prepare_librilight(again, str(tmp_path / "b"), name))
        assert set(first) == set(second)
    # Same arguments: nothing to do; others: an error.
    write_finetuning_sets(again, seconds_per_hour=SECONDS_PER_HOUR)
    with pytest.raises(ValueError, match="made with"):
        write_finetuning_sets(again, seconds_per_hour=2 * SECONDS_PER_HOUR)
    with pytest.raises(ValueError, match="too little training speech"):
        write_finetuning_sets(
            _fresh_copy(corpus, tmp_path / "c"), seconds_per_hour=1e4
        )
    assert not os.path.exists(tmp_path / "c" / "librispeech_finetuning")


def _fresh_copy(corpus, folder):
    shutil.copytree(corpus, folder, ignore=shutil.ignore_patterns("librisp*"))
    return str(folder)


def test_finetune_trains_on_the_labelled_set(corpus, tmp_path):
    torch.manual_seed(0)
    pretrained = str(tmp_path / "pretrained")
    save_encoder(
        S3LEncoder(**architecture("toy", transf2_layers=2)), pretrained
    )
    brain = finetune.main(
        [
            TINY_YAML,
            f"--data_folder={corpus}",
            f"--pretrained_path={pretrained}",
            f"--output_folder={tmp_path / 'out'}",
            "--noprogressbar",
            "--labelled_set=10min",
            "--total_steps=2",
            "--number_of_epochs=2",
            "--beam_search=False",
            "--test_splits=[]",
        ]
    )
    assert brain.optimizer_step == 2
    train = _rows(tmp_path / "out" / "csv" / "train.csv")
    ten_min = _rows(prepare_librilight(corpus, str(tmp_path / "ll"), "10min"))
    assert set(train) == set(ten_min)


def test_unknown_or_missing_labelled_set_is_a_config_error(corpus, tmp_path):
    base = [
        TINY_YAML,
        f"--output_folder={tmp_path / 'out'}",
        "--noprogressbar",
    ]
    with pytest.raises(ConfigError, match="not a Libri-light set"):
        finetune.main(base + [f"--data_folder={corpus}", "--labelled_set=5h"])
    bare = _fresh_copy(corpus, tmp_path / "bare")
    with pytest.raises(ConfigError, match="librispeech_finetuning.tgz"):
        finetune.main(base + [f"--data_folder={bare}", "--labelled_set=1h"])
