"""The real-speech split and the experiment's real-speech mode."""

import importlib.util
import os
import shutil

from conftest import ROOT, load_experiment


def _load_real_speech(name):
    """``experiments/real_speech/<name>.py`` as a module."""
    path = os.path.join(ROOT, "experiments", "real_speech", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"real_speech_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_corpus(root, speakers, utterances):
    """A LibriSpeech-layout split: two chapters per speaker, empty audio."""
    for speaker in speakers:
        for index in range(utterances):
            chapter = str(10 + index % 2)
            folder = root / speaker / chapter
            folder.mkdir(parents=True, exist_ok=True)
            utt_id = f"{speaker}-{chapter}-{index:04d}"
            (folder / f"{utt_id}.flac").write_bytes(b"")
            with open(folder / f"{speaker}-{chapter}.trans.txt", "a") as out:
                out.write(f"{utt_id} WORDS OF {index}\n")


def _utterances(split_folder):
    """{speaker: [utterance IDs in transcripts]} and the linked audio."""
    found, audio = {}, set()
    for folder, _, files in os.walk(split_folder):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".trans.txt"):
                with open(path) as stream:
                    ids = [line.split()[0] for line in stream]
                found.setdefault(name.split("-")[0], []).extend(ids)
            else:
                assert os.path.islink(path)
                audio.add(name[: -len(".flac")])
    return {k: sorted(v) for k, v in found.items()}, audio


def test_split_holds_out_speakers_and_takes_each_speakers_first_lines(
    tmp_path,
):
    split = _load_real_speech("split")
    source, dest = tmp_path / "train-clean-5", tmp_path / "split"
    _fake_corpus(source, ["19", "26", "1970", "5789"], utterances=15)
    counts = split.build_split(str(source), str(dest), ["1970"], ["5789"])
    assert counts == {
        "test-clean": 15,
        "dev-clean": 15,
        "train-clean-100": 30,
        "train-1h": 26,
        "train-10min": 4,
    }
    splits = {name: _utterances(dest / name) for name in counts}
    assert set(splits["test-clean"][0]) == {"1970"}
    assert set(splits["dev-clean"][0]) == {"5789"}
    for name in ("train-clean-100", "train-1h", "train-10min"):
        assert set(splits[name][0]) == {"19", "26"}
    # The first lines in utterance-ID order, across the two chapters.
    ids = sorted(f"19-{10 + i % 2}-{i:04d}" for i in range(15))
    assert splits["train-1h"][0]["19"] == ids[:13]
    assert splits["train-10min"][0]["19"] == ids[:2]
    for name in counts:  # every transcript line has its audio, and back
        transcripts, audio = splits[name]
        assert audio == {u for ids in transcripts.values() for u in ids}
    # Running it again changes nothing (links exist, transcripts rewritten).
    assert split.build_split(str(source), str(dest), ["1970"], ["5789"]) == (
        counts
    )
    assert _utterances(dest / "train-1h") == splits["train-1h"]


def _merged_speakers(corpus, dest):
    """Every speaker of a generated corpus in one train-clean-5-like folder."""
    speakers = {}
    for split in ("train-clean-100", "dev-clean", "test-clean"):
        for speaker in sorted(os.listdir(os.path.join(corpus, split))):
            shutil.copytree(
                os.path.join(corpus, split, speaker), dest / speaker
            )
            speakers.setdefault(split, []).append(speaker)
    return speakers


def test_real_speech_mode_finetunes_the_named_splits_with_probes(
    tiny_corpus, tmp_path
):
    experiment = load_experiment("ssl_vs_scratch")
    source = tmp_path / "train-clean-5"
    speakers = _merged_speakers(tiny_corpus, source)
    output = tmp_path / "out"
    results = experiment.main(
        [
            "--tiny",
            f"--output={output}",
            f"--librispeech={source}",
            "--test-speakers",
            *speakers["test-clean"],
            "--dev-speakers",
            *speakers["dev-clean"],
            "--splits",
            "small",
            "--seeds",
            "1",
            "--inits",
            "s3l",
            "s3l-frozen",
            "random-frozen",
            "logmel-frozen",
            "--pretrain-option=time_mask_ratio=0.05",
        ]
    )
    runs = {run["init"]: run for run in results["runs"]}
    assert sorted(runs) == [
        "logmel-frozen",
        "random-frozen",
        "s3l",
        "s3l-frozen",
    ]
    # train-10min: the first 2 utterances of each of the 4 train speakers.
    assert {run["labelled_utterances"] for run in runs.values()} == {8}
    assert "--freeze_encoder=True" in runs["s3l-frozen"]["command"]
    assert "--freeze_encoder=True" in runs["random-frozen"]["command"]
    assert not any(
        arg.startswith("--pretrained_path")
        for arg in runs["random-frozen"]["command"]
    )
    # The floor: the same head on stacked log-mels, nothing learned below.
    assert (
        "--encoder=!new:logmel_floor.LogMelFrames"
        in (runs["logmel-frozen"]["command"])
    )
    assert runs["logmel-frozen"]["test_cer"] is not None
    pretrain = (output / "pretrain" / "experiment_run.json").read_text()
    assert "--time_mask_ratio=0.05" in pretrain
    table = (output / "results.md").read_text()
    assert "probe: S3L pretrained, frozen" in table
    # Probes are not the baselines that S3L pretrained is judged against.
    assert results["improvement"] == {}


def test_phone_probe_rewrites_transcripts_as_folded_phones(tmp_path):
    probe = _load_real_speech("phone_probe")
    assert len(probe.CLASSES) == 27 == len(set(probe.SYMBOLS.values()))
    lexicon = {
        "sing": [["S", "IH1", "NG"], ["S", "IY1", "NG"]],
        "measure": [["M", "EH1", "ZH", "ER0"]],
    }
    s, ih, n, m, eh, sh, r = (
        probe.SYMBOLS[p] for p in ("S", "IH", "N", "M", "EH", "SH", "R")
    )
    # First pronunciation, stress removed, NG->N, ZH->SH, ER->R; an
    # unknown word is spelled, repeats collapsed ("mm" -> one M).
    assert probe.phones_of("Sing MEASURE", lexicon) == (
        f"{s}{ih}{n} {m}{eh}{sh}{r}"
    )
    assert probe.phones_of("mm", {}) == m
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "train.csv").write_text(
        "ID,duration,wav,spk_id,wrd\nu1,1.0,/a.flac,s-1,SING\n"
    )
    (folder / "notes.txt").write_text("not a CSV")
    counts = probe.convert(str(folder), str(tmp_path / "out"), lexicon)
    assert counts == {"train.csv": 1}
    rows = (tmp_path / "out" / "train.csv").read_text().splitlines()
    assert rows[1] == f"u1,1.0,/a.flac,s-1,{s}{ih}{n}"


def test_logmel_floor_stacks_normalised_frames_and_zeroes_padding():
    import torch

    floor = _load_real_speech("logmel_floor").LogMelFrames(n_mels=16, stack=8)
    feats = torch.randn(2, 40, 16)
    encoded = floor.encode(feats, torch.tensor([40, 20]), return_layers=True)
    assert encoded.out.shape == (2, 5, 128)
    assert encoded.lengths.tolist() == [5, 2]
    # Output frame 1 is feature frames 8..15, in time order.
    assert torch.equal(encoded.out[0, 1], feats[0, 8:16].reshape(-1))
    assert not encoded.out[1, 2:].any()
    assert floor.architecture.d_model == 128
    assert not list(floor.parameters())
