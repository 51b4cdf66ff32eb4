"""Cost report: FLOP counting, energy counters, projection, cost.json."""

import json
import os

import pytest
import torch

from s3l_plugin.cost import CostTracker, RaplEnergy


def test_flops_of_a_linear_layer_match_the_analytic_count(tmp_path):
    tracker = CostTracker(str(tmp_path), "cpu", flop_batches=2)
    layer = torch.nn.Linear(16, 32, bias=False)
    inputs = torch.randn(8, 16, requires_grad=True)
    for _ in range(4):
        with tracker.micro_batch(audio_seconds=1.0, padded_seconds=2.0):
            layer(inputs).sum().backward()
    report = tracker.write()
    # Forward 2*B*I*O; backward twice that (input and weight gradients).
    per_batch = 2 * 8 * 16 * 32 * 3
    assert report["flops"]["counted_micro_batches"] == 2
    assert report["flops"]["counted"] == 2 * per_batch
    assert report["flops"]["per_padded_audio_second"] == per_batch / 2.0
    assert report["micro_batches"] == 4
    assert report["audio_seconds"] == 4.0
    assert report["padded_audio_seconds"] == 8.0


def test_first_micro_batch_is_not_counted(tmp_path):
    tracker = CostTracker(str(tmp_path), "cpu", flop_batches=5)
    layer = torch.nn.Linear(4, 4)
    with tracker.micro_batch(audio_seconds=1.0, padded_seconds=1.0):
        layer(torch.randn(2, 4)).sum().backward()
    assert tracker.counted_batches == 0


def test_cost_json_is_written_with_a_projection(tmp_path):
    projection = {"steps": 10, "micro_batches": 2, "batch_seconds": 30}
    tracker = CostTracker(str(tmp_path), "cpu", projection=projection)
    layer = torch.nn.Linear(4, 4)
    for _ in range(3):
        with tracker.micro_batch(audio_seconds=1.0, padded_seconds=1.5):
            layer(torch.randn(2, 4)).sum().backward()
    tracker.write({"optimizer_steps": 3})
    with open(os.path.join(tmp_path, "cost.json"), encoding="utf-8") as fin:
        report = json.load(fin)
    assert report["optimizer_steps"] == 3
    assert report["peak_memory_bytes"] > 0
    speed = report["padded_audio_seconds_per_second"]
    assert report["projection"]["padded_audio_seconds"] == 600
    assert report["projection"]["hours"] == pytest.approx(
        600 / speed / 3600, rel=0.01
    )
    assert report["projection"]["flops"] == pytest.approx(
        report["flops"]["per_padded_audio_second"] * 600
    )


def _write_zone(root, name, energy, limit):
    zone = root / name
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "energy_uj").write_text(str(energy))
    (zone / "max_energy_range_uj").write_text(str(limit))


def test_rapl_energy_sums_packages_and_handles_wraparound(tmp_path):
    _write_zone(tmp_path, "intel-rapl:0", 900, 1000)
    _write_zone(tmp_path, "intel-rapl:1", 100, 1000)
    _write_zone(tmp_path, "intel-rapl:0:0", 5, 1000)  # sub-zone: ignored
    meter = RaplEnergy(root=str(tmp_path))
    _write_zone(tmp_path, "intel-rapl:0", 100, 1000)  # wrapped: +200
    _write_zone(tmp_path, "intel-rapl:1", 400, 1000)  # +300
    assert meter.joules() == pytest.approx(500 / 1e6)


def test_rapl_absent_reports_none(tmp_path):
    assert RaplEnergy(root=str(tmp_path / "missing")).joules() is None


class FakeNvml:
    """A stand-in ``pynvml`` module: two GPUs whose counters advance."""

    def __init__(self):
        self.millijoules = [1000, 5000]

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.millijoules)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return self.millijoules[handle]


def test_gpu_energy_comes_from_nvml_when_importable(monkeypatch, tmp_path):
    import sys

    from s3l_plugin.cost import NvmlEnergy, gpu_energy_meter

    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    meter = gpu_energy_meter()
    assert isinstance(meter, NvmlEnergy)
    fake.millijoules = [1500, 7000]  # +0.5 J and +2 J
    assert meter.joules() == pytest.approx(2.5)
    tracker = CostTracker(str(tmp_path), "cpu")
    fake.millijoules = [2500, 7000]
    report = tracker.report()
    assert report["energy_joules"]["gpu"] == pytest.approx(1.0)
    assert report["energy_joules"]["gpu_method"] == "NvmlEnergy"


def test_gpu_energy_falls_back_without_nvml(monkeypatch):
    import sys

    from s3l_plugin.cost import NvidiaSmiEnergy, gpu_energy_meter

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    meter = gpu_energy_meter()
    assert isinstance(meter, NvidiaSmiEnergy)
    if not torch.cuda.is_available():
        assert meter.joules() is None
