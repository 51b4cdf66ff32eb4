"""The ssl_vs_scratch experiment's own logic (the full run takes hours)

and its from-scratch CRDNN baseline (``s3l_plugin.baselines``).
"""

import json
import os

import pytest
import torch
from conftest import ROOT, load_experiment

from s3l_plugin.config import load_yaml


def _load():
    return load_experiment("ssl_vs_scratch")


def test_labelled_subset_takes_about_the_asked_minutes():
    experiment = _load()
    rows = [{"ID": str(i), "duration": "6.0"} for i in range(100)]
    subset, minutes = experiment.labelled_subset(rows, 1.0, seed=0)
    assert len(subset) == 10 and minutes == 1.0
    again, _ = experiment.labelled_subset(rows, 1.0, seed=0)
    assert [r["ID"] for r in again] == [r["ID"] for r in subset]


def test_train_log_parsing_reads_speechbrain_lines(tmp_path):
    experiment = _load()
    log = tmp_path / "train_log.txt"
    log.write_text(
        "epoch: 1, optimizer_step: 30, lr: 1.00e-03 - train loss: 3.20 - "
        "valid loss: 2.90, valid CER: 8.50e+01, valid WER: 1.00e+02\n"
        "test split: test-clean - test loss: 2.80, test CER: 8.00e+01, "
        "test WER: 9.75e+01\n"
    )
    epochs = experiment.read_train_log(str(log))
    assert epochs == [
        {
            "epoch": 1.0,
            "optimizer_step": 30.0,
            "lr": 1e-3,
            "train_loss": 3.2,
            "valid_loss": 2.9,
            "valid_CER": 85.0,
            "valid_WER": 100.0,
        }
    ]
    assert experiment.read_test_errors(str(tmp_path)) == (97.5, 80.0)


def test_beam_wer_is_read_when_the_recipe_prints_it(tmp_path):
    experiment = _load()
    log = tmp_path / "experiment.log"
    log.write_text("noise\ntest-clean WER: 40.00% (greedy; greedy CER 9.00%)\n")
    assert experiment.read_beam_wer(str(log)) is None
    log.write_text(
        "test-clean WER: 25.50% (lexicon + n-gram beam search; greedy "
        "40.00%; greedy CER 9.00%)\n"
        "dev-clean WER: 1.00% (lexicon + n-gram beam search; greedy 9.00%; "
        "greedy CER 2.00%)\n"
    )
    assert experiment.read_beam_wer(str(log)) == 25.5


def test_a_run_folder_resumes_only_the_same_run(tmp_path):
    experiment = _load()
    folder = tmp_path / "crdnn-small" / "1"
    first = {"command": ["finetune.py", "--seed=1"], "code": ["abc"]}
    experiment.start_folder(str(folder), first)
    (folder / "save").mkdir()  # an interrupted run's checkpoints
    experiment.start_folder(str(folder), first)
    assert (folder / "save").is_dir()  # the same run resumes from them
    assert experiment.previous_result(str(folder), first) is None
    experiment.record_result(str(folder), dict(first, test_wer=50.0))
    assert experiment.previous_result(str(folder), first)["test_wer"] == 50.0
    other = dict(first, code=["changed yaml"])
    assert experiment.previous_result(str(folder), other) is None
    experiment.start_folder(str(folder), other)
    assert not (folder / "save").exists()  # another run starts afresh
    assert experiment.previous_result(str(folder), first) is None


def _fake_runs(beam=True):
    """3 seeds x 2 splits x 3 inits with known test errors."""
    wers = {"s3l": 30.0, "scratch": 90.0, "crdnn": 50.0}
    runs = []
    for split, offset in (("small", 0.0), ("full", -20.0)):
        for init, wer in wers.items():
            for i, seed in enumerate((3, 1, 2)):
                runs.append(
                    {
                        "split": split,
                        "init": init,
                        "seed": seed,
                        "labelled_minutes": 5.0,
                        "labelled_utterances": 40,
                        "finetune_steps": 2000,
                        "test_cer": wer / 2,
                        # seeds spread by -2, 0, +2 around the mean
                        "test_wer": wer + offset + 2.0 * (i - 1),
                        "test_wer_beam": (
                            wer + offset - 10.0 if beam else None
                        ),
                    }
                )
    return runs


def test_summary_gives_mean_and_spread_per_split_and_init():
    experiment = _load()
    summary = experiment.summarize(_fake_runs())
    assert [(r["split"], r["init"]) for r in summary] == [
        ("small", "s3l"),
        ("small", "scratch"),
        ("small", "crdnn"),
        ("full", "s3l"),
        ("full", "scratch"),
        ("full", "crdnn"),
    ]
    crdnn = summary[2]
    assert crdnn["seeds"] == [1, 2, 3]
    assert crdnn["wer"] == {
        "mean": 50.0,
        "std": 2.0,
        "min": 48.0,
        "max": 52.0,
        "n": 3,
    }
    assert crdnn["cer"]["mean"] == 25.0 and crdnn["cer"]["std"] == 0.0
    assert crdnn["wer_beam"]["mean"] == 40.0
    assert crdnn["wer_best"] is crdnn["wer_beam"]


def test_improvement_is_over_the_best_scratch_baseline():
    experiment = _load()
    gains = experiment.improvements(experiment.summarize(_fake_runs()))
    # beam search: s3l 20 vs crdnn 40 (scratch: 80) -> 50 %
    assert gains["small"] == {
        "baseline": "crdnn",
        "baseline_wer": 40.0,
        "s3l_wer": 20.0,
        "decoder": "beam search",
        "relative": 50.0,
    }
    # full: s3l 0 vs crdnn 20 (beam) -> 100 %
    assert gains["full"]["relative"] == 100.0


def test_greedy_wer_is_compared_when_a_run_has_no_beam_search():
    experiment = _load()
    runs = _fake_runs()
    runs[0]["test_wer_beam"] = None  # one s3l-small seed decoded greedily
    summary = experiment.summarize(runs)
    assert summary[0]["wer_beam"] is None
    gains = experiment.improvements(summary)
    # greedy: s3l 30 vs crdnn 50 -> 40 %
    assert gains["small"]["decoder"] == "greedy"
    assert gains["small"]["relative"] == 40.0
    assert gains["full"]["decoder"] == "beam search"


def test_results_table_shows_spread_and_the_low_label_improvement():
    experiment = _load()
    summary = experiment.summarize(_fake_runs(beam=False))
    gains = experiment.improvements(summary)
    table = experiment.results_table(summary, gains, "pretrained once.")
    lines = table.splitlines()
    assert len([line for line in lines if line.startswith("| 5.0 min")]) == 6
    assert "| CRDNN from scratch | 2000 | 3 | 25.00 ± 0.00" in table
    assert "50.00 ± 2.00 [48.00-52.00] | - |" in table
    low = [line for line in lines if "low-label" in line]
    assert len(low) == 1 and "40.0 % relative improvement" in low[0]
    assert "meets the 30 % target" in low[0]


def _trainable(hparams):
    model = hparams["model"]
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _load_hparams(name, tmp_path):
    # The checkpointer creates its folder: keep it out of the repository.
    overrides = {"output_folder": str(tmp_path / name)}
    return load_yaml(os.path.join(ROOT, "hparams", f"{name}.yaml"), overrides)


def test_crdnn_baseline_matches_the_tiny_s3l_model_in_size_and_frames(
    tmp_path,
):
    s3l = _load_hparams("finetune_ctc_tiny", tmp_path)
    crdnn = _load_hparams("finetune_crdnn_tiny", tmp_path)
    ratio = _trainable(crdnn) / _trainable(s3l)
    # The same order of size (1.35 M vs 1.4 M; 0.9 M with a linear S3L head).
    assert 0.5 < ratio < 2.0, ratio
    # Both emit a CTC frame every 20 ms (character CTC stays feasible).
    samples = torch.tensor([16000, 48000])
    s3l_frames = s3l["head"].output_lengths(
        s3l["encoder"].output_lengths(
            s3l["encoder"].features.num_frames(samples)
        )
    )
    model = crdnn["model"].eval()
    feats, feat_lens = model.features(torch.randn(2, 48000), samples / 48000)
    logits, lengths = model(feats, feat_lens)
    assert lengths.tolist() == [50, 150]
    assert logits.shape == (2, 150, crdnn["output_neurons"])
    # (S3L's 'valid' convolutions lose a few frames at the ends.)
    assert int(s3l_frames[1] - s3l_frames[0]) == 100
    # The recipe's entry points: model.features, encoder and head.
    assert model.features is crdnn["encoder"].features
    assert crdnn["head"].vocab_size == s3l["head"].vocab_size


def test_crdnn_baseline_fits_a_fixed_batch():
    """A few Adam steps leave the CTC blank plateau on one batch."""
    from s3l_plugin.baselines import CRDNNCTC, CRDNNEncoder
    from s3l_plugin.ctc import LinearCTCHead, ctc_loss, greedy_decode

    torch.manual_seed(0)
    encoder = CRDNNEncoder(
        n_mels=20,
        cnn_channels=[8, 8],
        rnn_neurons=32,
        dnn_neurons=32,
        dropout=0.0,
    )
    model = CRDNNCTC(encoder, LinearCTCHead(32, 1, vocab_size=6, dropout=0.0))
    feats = torch.randn(2, 60, 20)
    feat_lens = torch.tensor([60, 40])
    targets = torch.tensor([[1, 2, 3, 4, 5], [5, 4, 3, 0, 0]])
    target_lens = torch.tensor([5, 3])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits, lengths = model(feats, feat_lens)
        loss = ctc_loss(logits, lengths, targets, target_lens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    logits, lengths = model(feats, feat_lens)
    final = ctc_loss(logits, lengths, targets, target_lens)
    assert float(final.detach()) < 0.5
    assert greedy_decode(logits, lengths) == [[1, 2, 3, 4, 5], [5, 4, 3]]


def test_skip_pretrain_without_a_pretraining_folder_is_one_error(
    tmp_path, capsys
):
    experiment = _load()
    with pytest.raises(SystemExit) as error:
        experiment.main(["--tiny", f"--output={tmp_path}", "--skip-pretrain"])
    message = str(error.value.code)
    assert message.startswith("s3l: error: ") and "encoder.ckpt" in message
    assert not (tmp_path / "corpus").exists()


def test_finetune_options_reach_every_run_and_make_it_another(
    tmp_path, monkeypatch
):
    experiment = _load()
    commands = []

    def run(command, log_path, threads=None):
        commands.append(command)
        raise RuntimeError("stop here")

    monkeypatch.setattr(experiment, "run", run)
    csv_info = (str(tmp_path / "csv"), 1.0, 2)
    for options in ([], ["freq_masks=2", "time_mask_ratio=0.025"]):
        args = experiment.parse_args(
            [f"--output={tmp_path}", "--tiny"]
            + [f"--finetune-option={option}" for option in options]
        )
        with pytest.raises(RuntimeError, match="stop here"):
            experiment.finetune(
                args, "py", "crdnn", "small", 1, 3, csv_info, ""
            )
    assert "--freq_masks=2" not in commands[0]
    assert commands[1][-2:] == ["--freq_masks=2", "--time_mask_ratio=0.025"]
    # The options are part of the run's identity: no reuse across them.
    started = tmp_path / "crdnn-small" / "1" / experiment.STARTED
    assert "--freq_masks=2" in json.loads(started.read_text())["command"]
    with pytest.raises(SystemExit):
        experiment.parse_args(["--finetune-option=freq_masks"])


def test_tiny_run_writes_every_result_and_reuses_finished_runs(tmp_path):
    experiment = _load()
    output = tmp_path / "out"
    plots = tmp_path / "plots"
    common = ["--tiny", f"--output={output}", "--splits", "small"]
    results = experiment.main(common + ["--seeds", "1", f"--plots-to={plots}"])
    assert [(r["init"], r["seed"]) for r in results["runs"]] == [
        ("s3l", 1),
        ("scratch", 1),
        ("crdnn", 1),
    ]
    for run in results["runs"]:
        assert run["finetune_steps"] == 3
        assert 0.0 <= run["test_cer"] and 0.0 <= run["test_wer"]
        assert run["test_wer_beam"] is None or run["test_wer_beam"] >= 0
    table = (output / "results.md").read_text()
    assert table.count("| 0.") == 3 and "low-label" in table
    assert "pretrained once (seed 1, 3 steps)" in table
    for name in ("finetuning_wer.png", "pretraining_loss.png", "results.md"):
        assert (plots / name).stat().st_size > 0
    record = output / "crdnn-small" / "1" / "experiment_run.json"
    recorded = record.stat().st_mtime_ns

    # A second seed for two inits, pretraining reused: seed 1 is read back;
    # the two new runs go side by side.
    results = experiment.main(
        common
        + ["--seeds", "1", "2", "--inits", "s3l", "crdnn", "--skip-pretrain"]
        + ["--jobs", "2", "--threads", "1"]
    )
    assert record.stat().st_mtime_ns == recorded
    assert [
        (r["split"], r["init"], r["seeds"]) for r in results["summary"]
    ] == [
        ("small", "s3l", [1, 2]),
        ("small", "crdnn", [1, 2]),
    ]
    assert json.loads((output / "results.json").read_text())["seeds"] == [1, 2]
    assert results["improvement"]["small"]["baseline"] == "crdnn"
    assert "pretrained once (seed 1, 3 steps)" in results["pretraining"]
