"""The synthetic mini LibriSpeech: layout, determinism, audio, noise."""

import glob
import json
import os
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from s3l_plugin.data.mini_librispeech import (
    MARKER,
    SPLITS,
    generate_mini_librispeech,
    make_speakers,
)
from s3l_plugin.data.noise import generate_noise_collection, make_noise_csv
from s3l_plugin.data.sentences import load_words, normalize_transcript

TINY = {
    "train_minutes": 0.1,
    "dev_minutes": 0.05,
    "test_minutes": 0.05,
    "train_speakers": 2,
    "dev_speakers": 1,
    "test_speakers": 1,
    "progress": False,
}
UTT_FILE = re.compile(r"^(\d+)-(\d+)-(\d{4})\.flac$")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two corpora from seed 0 (one with 1 worker) and one from seed 1."""
    root = tmp_path_factory.mktemp("mini")
    first = generate_mini_librispeech(str(root / "a"), seed=0, **TINY)
    generate_mini_librispeech(str(root / "b"), seed=0, num_workers=1, **TINY)
    generate_mini_librispeech(str(root / "c"), seed=1, with_noise=False, **TINY)
    return root, first


def _files(folder, pattern):
    return sorted(
        os.path.relpath(p, folder)
        for p in glob.glob(os.path.join(folder, pattern), recursive=True)
    )


def _transcripts(folder):
    lines = {}
    for path in glob.glob(os.path.join(folder, "*", "*", "*", "*.trans.txt")):
        with open(path, encoding="utf-8") as trans_file:
            for line in trans_file:
                utt_id, words = line.rstrip("\n").split(" ", 1)
                lines[utt_id] = (words, path)
    return lines


def test_same_seed_gives_identical_corpus(corpora):
    root, _ = corpora
    a, b = str(root / "a"), str(root / "b")
    assert _files(a, "**/*.flac") == _files(b, "**/*.flac")
    assert _transcripts(a).keys() == _transcripts(b).keys()
    for utt_id, (words, _) in _transcripts(a).items():
        assert _transcripts(b)[utt_id][0] == words
    for relative in _files(a, "**/*.flac"):
        samples_a, _ = sf.read(os.path.join(a, relative), dtype="int16")
        samples_b, _ = sf.read(os.path.join(b, relative), dtype="int16")
        np.testing.assert_array_equal(samples_a, samples_b, err_msg=relative)


def test_other_seed_gives_other_corpus(corpora):
    root, _ = corpora
    a, c = _transcripts(str(root / "a")), _transcripts(str(root / "c"))
    assert sorted(w for w, _ in a.values()) != sorted(w for w, _ in c.values())
    assert {u.split("-")[0] for u in a} != {u.split("-")[0] for u in c}


def test_layout_is_librispeech(corpora):
    root, _ = corpora
    corpus = str(root / "a")
    assert sorted(os.listdir(corpus)) == sorted(
        [*SPLITS, "noise", "SPEAKERS.txt", "README.txt", MARKER]
    )
    assert not os.path.exists(corpus + ".partial")
    for split in SPLITS:
        for speaker in os.listdir(os.path.join(corpus, split)):
            for chapter in os.listdir(os.path.join(corpus, split, speaker)):
                folder = os.path.join(corpus, split, speaker, chapter)
                names = sorted(os.listdir(folder))
                trans = f"{speaker}-{chapter}.trans.txt"
                assert trans in names
                flacs = [n for n in names if n != trans]
                for name in flacs:
                    match = UTT_FILE.match(name)
                    assert match, name
                    assert match.group(1, 2) == (speaker, chapter)
                with open(os.path.join(folder, trans), encoding="utf-8") as f:
                    lines = f.read().splitlines()
                ids = [line.split(" ", 1)[0] for line in lines]
                assert ids == sorted(n[: -len(".flac")] for n in flacs)
                for line in lines:
                    words = line.split(" ", 1)[1]
                    assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", words), line


def test_audio_is_16k_mono_pcm16_and_1_to_20_s(corpora):
    root, _ = corpora
    paths = glob.glob(str(root / "a" / "*" / "*" / "*" / "*.flac"))
    assert paths
    for path in paths:
        info = sf.info(path)
        assert (info.samplerate, info.channels) == (16000, 1)
        assert info.subtype == "PCM_16"
        assert 1.0 <= info.duration <= 20.0, path


def test_summary_matches_files(corpora):
    root, summary = corpora
    for split in SPLITS:
        paths = glob.glob(str(root / "a" / split / "*" / "*" / "*.flac"))
        stats = summary["splits"][split]
        assert stats["utterances"] == len(paths)
        seconds = sum(sf.info(p).duration for p in paths)
        assert stats["minutes"] == pytest.approx(seconds / 60, abs=1e-3)
        assert stats["minutes"] >= TINY[f"{split.split('-')[0]}_minutes"]


def test_speakers_disjoint_across_splits(corpora):
    root, _ = corpora
    speakers = {split: set(os.listdir(root / "a" / split)) for split in SPLITS}
    assert len(speakers["train-clean-100"]) == TINY["train_speakers"]
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1 :]:
            assert not speakers[first] & speakers[second]


def test_default_speaker_table_has_20_distinct_voices():
    speakers = make_speakers(seed=0)
    voices = {(s.voice.name, s.voice.rate, s.voice.pitch) for s in speakers}
    assert len(voices) == len(speakers) >= 20
    assert len({s.voice.name for s in speakers}) == len(speakers)
    assert len({s.speaker_id for s in speakers}) == len(speakers)
    chapters = [c for s in speakers for c in s.chapters]
    assert len(set(chapters)) == len(chapters)
    assert {s.sex for s in speakers} == {"M", "F"}
    assert make_speakers(seed=0) == speakers
    assert make_speakers(seed=1) != speakers


def test_speaker_table_file_lists_every_speaker(corpora):
    root, _ = corpora
    with open(root / "a" / "SPEAKERS.txt", encoding="utf-8") as table:
        rows = [line for line in table if not line.startswith(";")]
    listed = {
        row.split("|")[0].strip(): row.split("|")[2].strip() for row in rows
    }
    for split in SPLITS:
        for speaker in os.listdir(root / "a" / split):
            assert listed[speaker] == split


def test_word_list_is_large_and_clean():
    words = load_words()
    assert len(words) >= 500
    assert len(set(words)) == len(words)
    assert all(re.fullmatch(r"[a-z']+", word) for word in words)


def test_same_arguments_skip_other_arguments_raise(corpora, caplog):
    root, _ = corpora
    corpus = str(root / "a")
    marker_mtime = os.path.getmtime(os.path.join(corpus, MARKER))
    with caplog.at_level("INFO"):
        summary = generate_mini_librispeech(corpus, seed=0, **TINY)
    assert summary["already_complete"]
    assert "skipping" in caplog.text
    assert os.path.getmtime(os.path.join(corpus, MARKER)) == marker_mtime
    with pytest.raises(ValueError, match="seed"):
        generate_mini_librispeech(corpus, seed=3, **TINY)


def test_refuses_foreign_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no complete"):
        generate_mini_librispeech(str(tmp_path), **TINY)


def test_interrupted_run_leaves_no_corpus_and_is_redone(tmp_path):
    out = str(tmp_path / "mini")
    partial = out + ".partial"
    # What an interrupted run leaves: a partial folder with its sentinel.
    os.makedirs(os.path.join(partial, "train-clean-100"))
    open(os.path.join(partial, ".s3l-mini-librispeech-partial"), "w").close()
    generate_mini_librispeech(out, with_noise=False, **TINY)
    assert os.path.exists(os.path.join(out, MARKER))
    assert not os.path.exists(partial)


def test_text_file_lines_are_read_and_not_shared(tmp_path):
    text = tmp_path / "text.txt"
    sentences = [
        f"Sentence number {word} is here, said the {word} reader."
        for word in load_words()[100:160]
    ]
    text.write_text("\n".join(sentences) + "\n")
    out = str(tmp_path / "mini")
    generate_mini_librispeech(
        out, text_file=str(text), with_noise=False, **TINY
    )
    expected = {normalize_transcript(s) for s in sentences}
    by_split = {
        split: {
            words
            for words, path in _transcripts(out).values()
            if os.path.relpath(path, out).split(os.sep)[0] == split
        }
        for split in SPLITS
    }
    for split in SPLITS:
        assert by_split[split] and by_split[split] <= expected
    assert not by_split["train-clean-100"] & by_split["dev-clean"]
    assert not by_split["train-clean-100"] & by_split["test-clean"]
    assert not by_split["dev-clean"] & by_split["test-clean"]


def test_noise_collection_and_csv_work_with_addnoise(corpora):
    from speechbrain.augment.time_domain import AddNoise

    root, summary = corpora
    csv_path = summary["noise_csv"]
    assert csv_path == str(root / "a" / "noise" / "noise.csv")
    with open(csv_path, encoding="utf-8") as csv_file:
        lines = csv_file.read().splitlines()
    assert lines[0] == "ID,duration,wav,wav_format,wav_opts"
    kinds = {line.split(",")[0].split("_")[0] for line in lines[1:]}
    assert kinds == {"white", "pink", "brown", "hum", "babble"}
    assert 20 <= len(lines) - 1 <= 40
    for line in lines[1:]:
        path = line.split(",")[2]
        assert os.path.isabs(path) and os.path.isfile(path)
        assert sf.info(path).samplerate == 16000

    torch.manual_seed(0)
    add_noise = AddNoise(csv_file=csv_path, snr_low=0, snr_high=0)
    clean = torch.zeros(2, 16000)
    clean[:, ::100] = 0.5
    noisy = add_noise(clean, torch.ones(2))
    assert noisy.shape == clean.shape
    assert torch.isfinite(noisy).all()
    assert (noisy - clean).abs().mean() > 1e-3


def test_noise_files_are_deterministic(tmp_path):
    first = generate_noise_collection(str(tmp_path / "a"), 7, seconds=0.5)
    second = generate_noise_collection(str(tmp_path / "b"), 7, seconds=0.5)
    other = generate_noise_collection(str(tmp_path / "c"), 8, seconds=0.5)
    for a, b, c in zip(first, second, other):
        np.testing.assert_array_equal(sf.read(a)[0], sf.read(b)[0])
        assert not np.array_equal(sf.read(a)[0], sf.read(c)[0])


def test_make_noise_csv_leaves_out_unusable_files(tmp_path, caplog):
    folder = tmp_path / "noise set"
    (folder / "sub").mkdir(parents=True)
    good = np.random.default_rng(0).standard_normal(8000) * 0.1
    sf.write(folder / "sub" / "good.wav", good, 16000)
    sf.write(folder / "stereo.wav", np.stack([good, good], 1), 16000)
    sf.write(folder / "rate.flac", good, 8000)
    (folder / "broken.flac").write_bytes(b"not audio")
    (folder / "readme.txt").write_text("ignored")
    csv_path = tmp_path / "noise.csv"
    with caplog.at_level("WARNING"):
        rows = make_noise_csv(str(folder), str(csv_path))
    assert rows == 1
    for name in ("stereo.wav", "rate.flac", "broken.flac"):
        assert name in caplog.text
    lines = csv_path.read_text().splitlines()
    assert lines[1].split(",")[:2] == ["sub/good.wav", "0.5000"]
    assert lines[1].split(",")[2] == str(folder / "sub" / "good.wav")


def test_make_noise_csv_without_usable_files_raises(tmp_path):
    with pytest.raises(ValueError, match="no usable noise file"):
        make_noise_csv(str(tmp_path), str(tmp_path / "noise.csv"))


def test_marker_records_arguments(corpora):
    root, _ = corpora
    with open(root / "a" / MARKER, encoding="utf-8") as marker:
        stored = json.load(marker)
    assert stored["options"]["seed"] == 0
    assert stored["options"]["minutes"]["train-clean-100"] == 0.1
