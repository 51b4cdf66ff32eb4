"""Inference folders and command-line tools, used as a user would.

A tiny finetuning run writes ``<output>/inference``; SpeechBrain's own
``EncoderASR.from_hparams`` loads it from the folder and must give the
recipe's test transcriptions (beam search and greedy). The console
scripts run as subprocesses on the same folders.
"""

import csv
import os
import subprocess
import sys

import numpy
import pytest
import soundfile
import torch
from hooked_recipe import load_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
finetune = load_recipe(
    os.path.join(ROOT, "recipes", "LibriSpeech", "finetune.py")
)


def _finetune_on_test_clean(runner, output, *extra, beam_search=False):
    """``finetune.main`` on one thread, test-clean decoded.

    The runner's defaults (no test set; greedy unless ``beam_search``)
    replaced. Returns the Brain and test-clean's wav paths by utterance.
    """
    dropped = ("--test_splits=",) + (("--beam_search=",) if beam_search else ())
    argv = [arg for arg in runner.argv(output) if not arg.startswith(dropped)]
    argv += ["--test_splits=[test-clean]", *extra]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        brain = finetune.main(argv)
    finally:
        torch.set_num_threads(threads)
    with open(os.path.join(output, "csv", "test-clean.csv")) as fin:
        wavs = {row["ID"]: row["wav"] for row in csv.DictReader(fin)}
    return brain, wavs


def _hypotheses(metric):
    """Hypothesis text by utterance of an ``ErrorRateStats``."""
    return {s["key"]: " ".join(s["hyp_tokens"]) for s in metric.scores}


@pytest.fixture(scope="module")
def finetuned(finetune_runner, tmp_path_factory):
    """Recipe run with beam search; its test-clean hypotheses by utterance."""
    output = str(tmp_path_factory.mktemp("finetuned") / "out")
    brain, wavs = _finetune_on_test_clean(
        finetune_runner,
        output,
        "--total_steps=30",
        "--number_of_epochs=10",
        "--max_batch_length=30",
        "--lr_head=0.02",
        "--beam_size=4",
        "--tune_lm_weights=[0.5, 2.0]",
        "--tune_word_scores=[0.0]",
        beam_search=True,
    )
    return {
        "folder": os.path.join(output, "inference"),
        "wavs": wavs,
        "greedy": _hypotheses(brain.wer_metric),
        "beam": _hypotheses(brain.beam_metric),
        "results": brain.test_results,
    }


def test_asr_folder_transcribes_as_the_recipe(finetuned, tmp_path):
    from speechbrain.inference.ASR import EncoderASR

    folder = finetuned["folder"]
    assert sorted(os.listdir(folder)) == [
        "README.md",
        "asr.ckpt",
        "hyperparams.yaml",
        "lexicon.ckpt",
        "lm.ckpt",
        "tokenizer.ckpt",
    ]
    card = open(os.path.join(folder, "README.md")).read()
    wer = finetuned["results"]["test-clean"]["WER_beam"]
    assert "| test-clean |" in card and f"{wer:.2f} %" in card
    ids = sorted(finetuned["wavs"])
    paths = [finetuned["wavs"][i] for i in ids]
    assert finetuned["beam"].keys() == finetuned["greedy"].keys() == set(ids)
    # The comparison means something only if the model says something.
    assert any(finetuned["greedy"].values())

    asr = EncoderASR.from_hparams(source=folder, savedir=str(tmp_path / "b"))
    beam = [asr.transcribe_file(path) for path in paths]
    assert beam == [finetuned["beam"][i] for i in ids]
    # A padded batch: every utterance decoded as on its own.
    wavs = [asr.load_audio(path) for path in paths]
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lens = torch.tensor([len(w) / batch.shape[1] for w in wavs])
    words, _ = asr.transcribe_batch(batch, lens)
    assert words == beam

    greedy_asr = EncoderASR.from_hparams(
        source=folder,
        savedir=str(tmp_path / "g"),
        overrides={"beam_search": None},
    )
    greedy = [greedy_asr.transcribe_file(path) for path in paths]
    assert greedy == [finetuned["greedy"][i] for i in ids]


@pytest.mark.parametrize("head_type", ["conv", "lstm"])
def test_head_type_is_one_option_and_its_folder_transcribes(
    finetune_runner, tmp_path, head_type
):
    # --head_type=conv trains the paper's convolutional head, lstm the
    # BiLSTM head (HyperPyYAML overrides alone cannot change a !new:
    # class), and the folder it writes rebuilds that head, not a linear
    # one: SpeechBrain's loader gives the recipe's greedy transcriptions.
    from speechbrain.inference.ASR import EncoderASR

    from s3l_plugin.ctc import CTC_HEADS

    output = str(tmp_path / "out")
    brain, wavs = _finetune_on_test_clean(
        finetune_runner,
        output,
        f"--head_type={head_type}",
        "--head_channels=8",
        "--head_num_conv=1",
        "--total_steps=6",
        "--max_batch_length=30",
        "--lr_head=0.02",
    )
    head = brain.modules.model.head
    assert type(head) is CTC_HEADS[head_type]
    if head_type == "conv":
        assert (head.channels, len(head.blocks)) == (8, 1)
    else:
        assert (head.lstm.hidden_size, head.lstm.num_layers) == (8, 1)
    expected = _hypotheses(brain.wer_metric)
    ids = sorted(wavs)
    asr = EncoderASR.from_hparams(
        source=os.path.join(output, "inference"),
        savedir=str(tmp_path / "g"),
    )
    loaded = asr.hparams.head
    assert type(loaded) is CTC_HEADS[head_type]
    trained = head.state_dict()
    assert loaded.state_dict().keys() == trained.keys()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0)
    got = [asr.transcribe_file(wavs[i]) for i in ids]
    assert got == [expected[i] for i in ids]


def test_encoder_folder_gives_every_layer(tmp_path):
    from speechbrain.inference.encoders import WaveformEncoder

    from s3l_plugin.encoder import S3LEncoder, architecture
    from s3l_plugin.inference import write_encoder_folder
    from s3l_plugin.pretrained import extract_features

    torch.manual_seed(0)
    encoder = S3LEncoder(**architecture("toy")).eval()
    folder = write_encoder_folder(str(tmp_path / "inference"), encoder)
    ssl = WaveformEncoder.from_hparams(
        source=folder, savedir=str(tmp_path / "s")
    )
    wavs = torch.randn(2, 16000) * 0.1
    lens = torch.tensor([1.0, 0.6])
    out = ssl.encode_batch(wavs, lens)
    expected, expected_lens = extract_features(encoder, wavs, lens)
    assert len(out["layers"]) == len(expected) == 2
    for got, want in zip(out["layers"], expected):
        torch.testing.assert_close(got, want)
    assert out["lengths"].tolist() == expected_lens[-1].tolist()
    path = str(tmp_path / "a.wav")
    soundfile.write(path, wavs[0].numpy(), 16000, subtype="FLOAT")
    torch.testing.assert_close(
        ssl.encode_file(path), expected[-1][:1], atol=1e-4, rtol=1e-4
    )


def _cli(module, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", f"s3l_plugin.cli.{module}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_console_scripts_are_declared():
    setup = open(os.path.join(ROOT, "setup.py")).read()
    assert '"s3l-transcribe=s3l_plugin.cli.transcribe:main"' in setup
    assert '"s3l-extract=s3l_plugin.cli.extract:main"' in setup
    for module in ("transcribe", "extract"):
        result = _cli(module, "--help")
        assert result.returncode == 0 and "MODEL_DIR" in result.stdout


def test_transcribe_cli_matches_the_recipe(finetuned, tmp_path):
    ids = sorted(finetuned["wavs"])
    paths = [finetuned["wavs"][i] for i in ids]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    out = tmp_path / "hyps.tsv"
    result = _cli(
        "transcribe",
        finetuned["folder"],
        str(bad),
        *paths,
        "--output",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"s3l: skipped {bad}: unreadable audio" in result.stderr
    lines = out.read_text().splitlines()
    assert lines == [
        f"{path}\t{finetuned['beam'][i]}" for i, path in zip(ids, paths)
    ]
    greedy = _cli("transcribe", finetuned["folder"], paths[0], "--greedy")
    assert greedy.stdout == f"{paths[0]}\t{finetuned['greedy'][ids[0]]}\n"
    nothing = _cli("transcribe", finetuned["folder"], str(bad))
    assert nothing.returncode == 2
    assert "s3l: error: no audio file could be transcribed" in nothing.stderr


def test_extract_cli_writes_resumable_features(tmp_path):
    from s3l_plugin.encoder import S3LEncoder, architecture
    from s3l_plugin.inference import write_encoder_folder
    from s3l_plugin.pretrained import extract_features

    torch.manual_seed(0)
    encoder = S3LEncoder(**architecture("toy", transf2_layers=2)).eval()
    model = write_encoder_folder(str(tmp_path / "inference"), encoder)
    audio = tmp_path / "audio"
    (audio / "spk").mkdir(parents=True)
    rng = numpy.random.default_rng(0)
    for name, seconds in (("a", 1.0), ("spk/b", 0.7)):
        wav = (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(
            "float32"
        )
        soundfile.write(str(audio / f"{name}.wav"), wav, 16000)
    (audio / "empty.wav").write_bytes(b"")
    out = tmp_path / "feats"
    result = _cli(
        "extract", model, str(audio), str(out), "--layers", "-2", "-1"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "s3l: skipped" in result.stderr and "empty.wav" in result.stderr
    with open(out / "manifest.csv") as fin:
        rows = list(csv.DictReader(fin))
    assert [r["ID"] for r in rows] == ["a", "spk/b"]
    feats = torch.load(out / "spk" / "b.pt", weights_only=True)
    wav, _ = soundfile.read(str(audio / "spk" / "b.wav"), dtype="float32")
    layers, _ = extract_features(
        encoder, torch.from_numpy(wav), layers=[-2, -1]
    )
    torch.testing.assert_close(feats, torch.cat(layers), atol=1e-4, rtol=1e-4)
    assert int(rows[1]["frames"]) == feats.shape[1]

    # Resumed: what is written is kept, not recomputed.
    os.utime(out / "a.pt", (0, 0))
    again = _cli("extract", model, str(audio), str(out), "--layers", "-2", "-1")
    assert again.returncode == 0, again.stderr[-2000:]
    assert os.stat(out / "a.pt").st_mtime == 0
    with open(out / "manifest.csv") as fin:
        assert list(csv.DictReader(fin)) == rows

    mixed = _cli("extract", model, str(audio), str(out), "--layers", "0", "-1")
    assert mixed.returncode == 2 and "frame rate" in mixed.stderr
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "x.wav").write_bytes(b"junk")
    nothing = _cli("extract", model, str(only_bad), str(tmp_path / "f2"))
    assert nothing.returncode == 2
    assert "s3l: error: no audio file could be processed" in nothing.stderr
