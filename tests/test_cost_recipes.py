"""Both recipes write <output_folder>/cost.json (issue #5 item 4)."""

import json
import os


def _check_cost(output, steps, projected_steps):
    with open(os.path.join(output, "cost.json"), encoding="utf-8") as fin:
        report = json.load(fin)
    assert report["optimizer_steps"] == steps
    assert report["micro_batches"] >= 3
    assert report["flops"]["counted_micro_batches"] == 2
    assert report["flops"]["counted"] > 0
    assert report["flops"]["per_padded_audio_second"] > 0
    assert report["peak_memory_bytes"] > 0
    assert 0 < report["audio_seconds"] <= report["padded_audio_seconds"]
    projection = report["projection"]
    assert projection["hours"] > 0
    assert projection["padded_audio_seconds"] == projected_steps * 4 * 1080
    assert projection["flops"] > 0
    return report


def test_pretraining_writes_cost_json(pretrain_runner, tmp_path):
    output = str(tmp_path / "out")
    result = pretrain_runner.run(output, "--total_steps=3")
    assert result.returncode == 0, result.stderr[-3000:]
    _check_cost(output, steps=3, projected_steps=12500)


def test_finetuning_writes_cost_json(finetune_runner, tmp_path):
    output = str(tmp_path / "out")
    result = finetune_runner.run(
        output, "--total_steps=3", "--number_of_epochs=1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _check_cost(output, steps=3, projected_steps=60000)
