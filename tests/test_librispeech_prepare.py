"""LibriSpeech preparation on the mini corpus: CSVs, bad files, reruns."""

import csv
import glob
import logging
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
from librispeech_prepare import OPTIONS_FILE, prepare_librispeech
from speechbrain.dataio.dataio import load_data_csv

from s3l_plugin.config import ConfigError
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


# ---- Corpus defects --------------------------------------------------------
@pytest.fixture
def dev_copy(tiny_corpus, tmp_path):
    """A copy of the tiny corpus's dev-clean (7 utterances) to damage."""
    folder = str(tmp_path / "corpus")
    shutil.copytree(
        os.path.join(tiny_corpus, "dev-clean"),
        os.path.join(folder, "dev-clean"),
    )
    return folder


def _replace_transcript(flac, line):
    """Replaces the transcript line of ``flac`` by ``line`` (bytes).

    Returns ``"<trans.txt>:<line number>"``.
    """
    utt_id = os.path.basename(flac)[:-5].encode()
    (trans,) = glob.glob(os.path.join(os.path.dirname(flac), "*.trans.txt"))
    with open(trans, "rb") as f:
        lines = f.read().splitlines()
    number = next(i for i, old in enumerate(lines) if old.startswith(utt_id))
    lines[number] = line
    with open(trans, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    return f"{trans}:{number + 1}"


def test_corpus_defects_are_skipped_listed_and_counted(
    dev_copy, tmp_path, caplog
):
    flacs = sorted(glob.glob(os.path.join(dev_copy, "dev-clean/*/*/*.flac")))
    ids = [os.path.basename(f)[:-5] for f in flacs]
    os.remove(flacs[0])
    os.symlink(str(tmp_path / "gone.flac"), flacs[0])
    lines = {
        "not UTF-8 (byte 0xff at column": ids[1].encode() + b" CAF\xff AU LAIT",
        "holds '$', which SpeechBrain's CSV reader takes": ids[2].encode()
        + b" IT COST $5",
        "empty transcript (an ID without words)": ids[3].encode() + b"  ",
    }
    where = {
        reason: _replace_transcript(flac, line)
        for (reason, line), flac in zip(lines.items(), flacs[1:4])
    }
    save = str(tmp_path / "csv")
    with caplog.at_level(logging.INFO):
        outputs = prepare_librispeech(dev_copy, save, dev_splits=["dev-clean"])

    # SpeechBrain reads the CSV back; only the good utterances are in it.
    data = load_data_csv(outputs["dev-clean"])
    assert sorted(data) == ids[4:]
    with open(os.path.join(save, "dev-clean_skipped.txt")) as f:
        skipped = dict(line.rstrip("\n").split("\t") for line in f)
    # The broken link is named (not the data folder), and so is each bad
    # line and the audio file it leaves without a transcript.
    assert skipped[flacs[0]].startswith("broken link (")
    for (reason, _), flac in zip(lines.items(), flacs[1:4]):
        assert skipped[where[reason]].startswith(reason)
        assert skipped[flac].startswith(
            f"its transcript line {where[reason]} is left out ({reason}"
        )
    assert len(skipped) == 7
    assert "dev-clean: 3 utterances (" in caplog.text
    assert "; 7 skipped, listed in" in caplog.text


def test_blank_lines_are_ignored(dev_copy, tmp_path):
    trans = glob.glob(os.path.join(dev_copy, "dev-clean/*/*/*.trans.txt"))[0]
    with open(trans, "a") as f:
        f.write("\n  \n")
    save = str(tmp_path / "csv")
    outputs = prepare_librispeech(dev_copy, save, dev_splits=["dev-clean"])
    assert len(_read_csv(outputs["dev-clean"])) == 7
    assert open(os.path.join(save, "dev-clean_skipped.txt")).read() == ""


def test_an_id_on_two_transcript_lines_stops(dev_copy, tmp_path):
    flacs = sorted(glob.glob(os.path.join(dev_copy, "dev-clean/*/*/*.flac")))
    first = os.path.basename(flacs[0])[:-5]
    where = _replace_transcript(flacs[1], first.encode() + b" AGAIN")
    trans, number = where.rsplit(":", 1)
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"utterance ID {first} is on two transcript lines, "
            f"{trans}:{int(number) - 1} and {where}: keep one"
        ),
    ):
        prepare_librispeech(dev_copy, str(tmp_path), dev_splits=["dev-clean"])
    assert not os.path.exists(os.path.join(tmp_path, OPTIONS_FILE))


def test_an_id_with_two_audio_files_stops(dev_copy, tmp_path):
    flac = sorted(glob.glob(os.path.join(dev_copy, "dev-clean/*/*/*.flac")))[0]
    speaker_folder = os.path.dirname(os.path.dirname(flac))
    copy = os.path.join(speaker_folder, "999", os.path.basename(flac))
    os.makedirs(os.path.dirname(copy))
    shutil.copy(flac, copy)
    first, second = sorted([flac, copy])
    with pytest.raises(
        ConfigError, match=re.escape(f"two audio files, {first} and {second}")
    ):
        prepare_librispeech(dev_copy, str(tmp_path), dev_splits=["dev-clean"])


def test_an_id_in_two_merged_splits_stops(dev_copy, tmp_path):
    shutil.copytree(
        os.path.join(dev_copy, "dev-clean"), os.path.join(dev_copy, "dev-other")
    )
    with pytest.raises(ConfigError, match="which are merged into"):
        prepare_librispeech(
            dev_copy,
            str(tmp_path),
            dev_splits=["dev-clean", "dev-other"],
            merge_lst=["dev-clean", "dev-other"],
            merge_name="dev",
        )
    assert not os.path.exists(os.path.join(tmp_path, OPTIONS_FILE))


def test_a_split_without_usable_utterance_stops(dev_copy, tmp_path):
    flacs = glob.glob(os.path.join(dev_copy, "dev-clean/*/*/*.flac"))
    for flac in flacs:
        open(flac, "wb").close()
    save = str(tmp_path / "csv")
    with pytest.raises(
        ConfigError,
        match="split dev-clean has no usable utterance: 7 .flac files in "
        f"{dev_copy}/dev-clean, 7 files or transcript lines left out",
    ):
        prepare_librispeech(dev_copy, save, dev_splits=["dev-clean"])
    with open(os.path.join(save, "dev-clean_skipped.txt")) as f:
        assert sorted(line.split("\t")[0] for line in f) == sorted(flacs)
    assert not os.path.exists(os.path.join(save, OPTIONS_FILE))
    assert not os.path.exists(os.path.join(save, "dev-clean.csv"))


def test_dollar_in_the_data_folder_stops(dev_copy, tmp_path):
    link = str(tmp_path / "a$HOME")
    os.symlink(dev_copy, link)
    with pytest.raises(ConfigError, match=re.escape(f"data_folder '{link}'")):
        prepare_librispeech(link, str(tmp_path), dev_splits=["dev-clean"])
