"""The ssl_vs_scratch experiment's own logic (the full run takes 30 minutes)."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
    path = os.path.join(ROOT, "experiments", "ssl_vs_scratch", "run.py")
    spec = importlib.util.spec_from_file_location("ssl_vs_scratch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_tiny_run_writes_every_result_and_plot(tmp_path):
    experiment = _load()
    output = tmp_path / "out"
    plots = tmp_path / "plots"
    results = experiment.main(
        ["--tiny", f"--output={output}", f"--plots-to={plots}"]
    )
    assert list(results["runs"]) == [
        "s3l-small",
        "scratch-small",
        "s3l-full",
        "scratch-full",
        "scratch-full-x3",
    ]
    assert results["runs"]["scratch-full-x3"]["finetune_steps"] == 9
    for run in results["runs"].values():
        assert 0.0 <= run["test_cer"] and 0.0 <= run["test_wer"]
    table = (output / "results.md").read_text().splitlines()
    assert len(table) == 2 + 5 and "test CER (%)" in table[0]
    for name in ("finetuning_wer.png", "pretraining_loss.png", "results.md"):
        assert (plots / name).stat().st_size > 0
