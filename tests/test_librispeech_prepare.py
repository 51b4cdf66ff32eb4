"""LibriSpeech preparation on the mini corpus: CSVs, bad files, reruns."""

import csv
import glob
import logging
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from librispeech_prepare import OPTIONS_FILE, prepare_librispeech

from s3l_plugin.data.mini_librispeech import generate_mini_librispeech

SPLITS = ["train-clean-100", "dev-clean", "test-clean"]


@pytest.fixture(scope="module")
def mini_corpus(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("corpus") / "mini")
    generate_mini_librispeech(
        folder,
        train_minutes=0.15,
        dev_minutes=0.1,
        test_minutes=0.05,
        train_speakers=2,
        dev_speakers=1,
        test_speakers=1,
        with_noise=False,
        progress=False,
    )
    return folder


@pytest.fixture
def corpus_copy(mini_corpus, tmp_path):
    """A copy the test may damage."""
    folder = str(tmp_path / "corpus")
    shutil.copytree(mini_corpus, folder)
    return folder


def _read_csv(path):
    with open(path, encoding="utf-8", newline="") as csv_file:
        return list(csv.DictReader(csv_file))


def _transcripts(split_folder):
    lines = {}
    for path in glob.glob(os.path.join(split_folder, "*/*/*.trans.txt")):
        with open(path, encoding="utf-8") as trans_file:
            for line in trans_file:
                utt_id, words = line.rstrip("\n").split(" ", 1)
                lines[utt_id] = words
    return lines


def test_csvs_match_the_corpus(mini_corpus, tmp_path):
    save = str(tmp_path / "csv")
    outputs = prepare_librispeech(
        mini_corpus,
        save,
        tr_splits=SPLITS[:1],
        dev_splits=SPLITS[1:2],
        te_splits=SPLITS[2:],
    )
    for split in SPLITS:
        rows = _read_csv(outputs[split])
        assert list(rows[0]) == ["ID", "duration", "wav", "spk_id", "wrd"]
        flacs = glob.glob(os.path.join(mini_corpus, split, "*/*/*.flac"))
        transcripts = _transcripts(os.path.join(mini_corpus, split))
        assert sorted(r["ID"] for r in rows) == sorted(
            os.path.basename(f)[:-5] for f in flacs
        )
        for row in rows:
            assert os.path.isabs(row["wav"])
            assert os.path.basename(row["wav"]) == row["ID"] + ".flac"
            assert float(row["duration"]) == pytest.approx(
                sf.info(row["wav"]).duration, abs=1e-6
            )
            assert row["spk_id"] == "-".join(row["ID"].split("-")[:2])
            assert row["wrd"] == transcripts[row["ID"]]
        skipped = os.path.join(save, f"{split}_skipped.txt")
        assert open(skipped).read() == ""


def test_bad_files_are_reported_skipped_and_listed(
    corpus_copy, tmp_path, caplog
):
    split_folder = os.path.join(corpus_copy, "dev-clean")
    flacs = sorted(glob.glob(os.path.join(split_folder, "*/*/*.flac")))
    assert len(flacs) >= 2
    corrupt, empty = flacs[0], flacs[1]
    with open(corrupt, "r+b") as audio:
        audio.truncate(os.path.getsize(corrupt) // 2)
    open(empty, "wb").close()
    chapter = os.path.dirname(flacs[0])
    speaker, chapter_id = chapter.split(os.sep)[-2:]
    orphan = os.path.join(chapter, f"{speaker}-{chapter_id}-9999.flac")
    sf.write(orphan, np.zeros(16000), 16000)

    save = str(tmp_path / "csv")
    with caplog.at_level(logging.WARNING):
        outputs = prepare_librispeech(
            corpus_copy, save, dev_splits=["dev-clean"]
        )
    ids = {row["ID"] for row in _read_csv(outputs["dev-clean"])}
    bad = [corrupt, empty, orphan]
    for path in bad:
        assert os.path.basename(path)[:-5] not in ids
        assert path in caplog.text
    assert "unreadable" in caplog.text and "empty" in caplog.text
    assert "no transcript" in caplog.text
    assert len(ids) == len(flacs) - 2
    with open(os.path.join(save, "dev-clean_skipped.txt")) as skipped_file:
        listed = [line.split("\t")[0] for line in skipped_file]
    assert sorted(listed) == sorted(bad)


def test_transcript_without_audio_is_reported(corpus_copy, tmp_path, caplog):
    flacs = glob.glob(os.path.join(corpus_copy, "dev-clean", "*/*/*.flac"))
    os.remove(flacs[0])
    with caplog.at_level(logging.WARNING):
        outputs = prepare_librispeech(
            corpus_copy, str(tmp_path), dev_splits=["dev-clean"]
        )
    utt_id = os.path.basename(flacs[0])[:-5]
    assert f"{utt_id}: no audio file" in caplog.text
    assert utt_id not in {r["ID"] for r in _read_csv(outputs["dev-clean"])}


def test_missing_split_raises_with_its_name(mini_corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="dev-other"):
        prepare_librispeech(
            mini_corpus, str(tmp_path), dev_splits=["dev-other"]
        )
    assert not os.path.exists(os.path.join(tmp_path, OPTIONS_FILE))


def test_second_call_skips_changed_call_redoes(mini_corpus, tmp_path, caplog):
    save = str(tmp_path / "csv")
    csv_path = prepare_librispeech(mini_corpus, save, dev_splits=["dev-clean"])[
        "dev-clean"
    ]
    os.utime(csv_path, (0, 0))  # recognisable mtime
    with caplog.at_level(logging.INFO):
        prepare_librispeech(mini_corpus, save, dev_splits=["dev-clean"])
    assert "skipped" in caplog.text
    assert os.path.getmtime(csv_path) == 0
    prepare_librispeech(
        mini_corpus, save, dev_splits=["dev-clean"], select_n_sentences=1
    )
    assert os.path.getmtime(csv_path) != 0
    assert len(_read_csv(csv_path)) == 1


def test_interrupted_run_is_not_taken_as_done(mini_corpus, tmp_path):
    save = str(tmp_path / "csv")
    csv_path = prepare_librispeech(mini_corpus, save, dev_splits=["dev-clean"])[
        "dev-clean"
    ]
    # A run interrupted after this CSV: the options file is not there yet.
    os.remove(os.path.join(save, OPTIONS_FILE))
    with open(csv_path, "w") as half:
        half.write("ID,duration\n")
    prepare_librispeech(mini_corpus, save, dev_splits=["dev-clean"])
    assert list(_read_csv(csv_path)[0]) == [
        "ID",
        "duration",
        "wav",
        "spk_id",
        "wrd",
    ]


def test_merge_concatenates_splits(mini_corpus, tmp_path):
    outputs = prepare_librispeech(
        mini_corpus,
        str(tmp_path),
        tr_splits=SPLITS[:1],
        dev_splits=SPLITS[1:2],
        merge_lst=SPLITS[:2],
        merge_name="train",
    )
    merged = _read_csv(outputs["train.csv"])
    parts = _read_csv(outputs[SPLITS[0]]) + _read_csv(outputs[SPLITS[1]])
    assert merged == parts


def test_skip_prep_does_nothing(tmp_path):
    assert (
        prepare_librispeech(
            str(tmp_path / "absent"), str(tmp_path), skip_prep=True
        )
        == {}
    )
    assert os.listdir(tmp_path) == []
