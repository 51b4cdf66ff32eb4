"""Cost report of a training run: FLOPs, time, memory, energy, projection.

Each recipe writes ``cost.json`` in its output folder. FLOPs are counted
with ``torch.utils.flop_counter`` on real training micro-batches (forward
and backward), then scaled by the audio processed. Energy is read where the
hardware exposes it: Intel/AMD RAPL counters on the CPU; on NVIDIA GPUs
NVML's energy counter (``pynvml``, package ``nvidia-ml-py``) when it is
importable, else ``nvidia-smi`` power samples; otherwise it is reported as
unavailable, not guessed.
"""

import importlib
import json
import logging
import os
import resource
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode

from s3l_plugin.data.atomic import write_text_atomic

logger = logging.getLogger(__name__)

RAPL_ROOT = "/sys/class/powercap"

# The paper's pretraining: 12,500 optimizer steps of 4 micro-batches of at
# most 1080 s of padded audio (about 15 passes over LibriSpeech 960 h).
PAPER_PRETRAINING = {"steps": 12500, "micro_batches": 4, "batch_seconds": 1080}


class RaplEnergy:
    """Cumulative CPU package energy from the RAPL counters, when readable.

    Example
    -------
    >>> meter = RaplEnergy()
    >>> meter.joules() is None or meter.joules() >= 0
    True
    """

    def __init__(self, root=RAPL_ROOT):
        self.zones = []
        if os.path.isdir(root):
            for name in sorted(os.listdir(root)):
                # Top-level packages only ("intel-rapl:0"), not sub-zones.
                if name.count(":") != 1:
                    continue
                energy = os.path.join(root, name, "energy_uj")
                limit = os.path.join(root, name, "max_energy_range_uj")
                if _readable_int(energy) is not None:
                    self.zones.append((energy, _readable_int(limit)))
        self.start = [_readable_int(path) for path, _ in self.zones]

    def joules(self):
        """Energy since construction in joules, or None if unavailable."""
        if not self.zones:
            return None
        total = 0
        for (path, limit), start in zip(self.zones, self.start):
            now = _readable_int(path)
            if now is None or start is None:
                return None
            delta = now - start
            if delta < 0 and limit:  # the counter wrapped around
                delta += limit
            total += delta
        return total / 1e6


class NvmlEnergy:
    """GPU energy from NVML's counters, summed over the GPUs NVML sees.

    ``nvmlDeviceGetTotalEnergyConsumption`` counts millijoules since the
    driver was loaded (Volta and newer): exact, and no sampling thread.

    Example
    -------
    >>> meter = NvmlEnergy()
    >>> meter.joules() is None or meter.joules() >= 0
    True
    """

    def __init__(self):
        self.nvml = None
        self.handles = []
        try:
            nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            self.handles = [
                nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)
            ]
            self.start = [
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                for handle in self.handles
            ]
        except Exception as error:  # ImportError, NVMLError_*: no counter
            logger.debug("NVML energy counter unavailable: %s", error)
            self.handles = []
            return
        self.nvml = nvml if self.handles else None

    @property
    def available(self):
        """Whether the counters could be read at construction."""
        return self.nvml is not None

    def joules(self):
        """Energy since construction in joules, or None if unavailable."""
        if not self.available:
            return None
        try:
            now = [
                self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                for handle in self.handles
            ]
        except Exception as error:  # NVMLError_*: the GPU went away
            logger.warning("NVML energy counter unreadable: %s", error)
            return None
        return sum(b - a for a, b in zip(self.start, now)) / 1e3


class NvidiaSmiEnergy:
    """GPU energy integrated from ``nvidia-smi`` power samples (1 s apart).

    Example
    -------
    >>> meter = NvidiaSmiEnergy()
    >>> meter.joules() is None or meter.joules() >= 0
    True
    """

    def __init__(self, interval=1.0):
        self.interval = interval
        self.available = (
            torch.cuda.is_available() and shutil.which("nvidia-smi") is not None
        )
        self.energy = 0.0
        self._stop = threading.Event()
        self._thread = None
        if self.available:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def _poll(self):
        last = time.time()
        while not self._stop.wait(self.interval):
            watts = self._power()
            now = time.time()
            if watts is not None:
                self.energy += watts * (now - last)
            last = now

    @staticmethod
    def _power():
        try:
            out = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=power.draw",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
            return sum(float(v) for v in out.split())
        except (OSError, ValueError, subprocess.SubprocessError):
            return None

    def joules(self):
        """Energy so far in joules (sampling continues), None if unavailable."""
        if not self.available:
            return None
        return self.energy


def gpu_energy_meter():
    """The best GPU energy meter here: NVML, else ``nvidia-smi`` samples.

    Returns
    -------
    NvmlEnergy or NvidiaSmiEnergy
        Its ``joules()`` is None where neither can read a GPU.

    Example
    -------
    >>> gpu_energy_meter().joules() is None or True
    True
    """
    meter = NvmlEnergy()
    if meter.available:
        return meter
    return NvidiaSmiEnergy()


class CostTracker:
    """Measures a run's cost and writes it to ``<output_folder>/cost.json``.

    Arguments
    ---------
    output_folder : str
        Where ``cost.json`` goes.
    device : str
        The training device (``cpu``, ``cuda:0``, ...).
    flop_batches : int
        How many training micro-batches to count FLOPs on (after the first,
        which warms up caches and kernels).
    projection : dict, optional
        ``steps``, ``micro_batches``, ``batch_seconds`` of the run to project
        (defaults to the paper's pretraining).

    Example
    -------
    >>> import tempfile
    >>> tracker = CostTracker(tempfile.mkdtemp(), "cpu", flop_batches=1)
    >>> layer = torch.nn.Linear(4, 4)
    >>> for index in range(3):
    ...     with tracker.micro_batch(audio_seconds=2.0, padded_seconds=2.5):
    ...         layer(torch.randn(8, 4)).sum().backward()
    >>> report = tracker.write()
    >>> report["flops"]["per_padded_audio_second"] > 0
    True
    """

    def __init__(self, output_folder, device, flop_batches=2, projection=None):
        self.path = os.path.join(output_folder, "cost.json")
        self.device = str(device)
        self.flop_batches = flop_batches
        self.projection = dict(projection or PAPER_PRETRAINING)
        self.start_time = time.time()
        self.train_seconds = 0.0
        self.micro_batches = 0
        self.audio_seconds = 0.0
        self.padded_seconds = 0.0
        self.counted_flops = 0
        self.counted_padded_seconds = 0.0
        self.counted_batches = 0
        self.rapl = RaplEnergy()
        self.gpu_energy = gpu_energy_meter()
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    @contextmanager
    def micro_batch(self, audio_seconds, padded_seconds):
        """Times one training micro-batch; counts its FLOPs if sampled.

        Arguments
        ---------
        audio_seconds : float
            Valid audio in the micro-batch.
        padded_seconds : float
            Audio including padding (what the model computes on).
        """
        count = 0 < self.micro_batches and (
            self.counted_batches < self.flop_batches
        )
        start = time.time()
        if count:
            counter = FlopCounterMode(display=False)
            with counter:
                yield
            self.counted_flops += counter.get_total_flops()
            self.counted_padded_seconds += padded_seconds
            self.counted_batches += 1
        else:
            yield
        self.train_seconds += time.time() - start
        self.micro_batches += 1
        self.audio_seconds += audio_seconds
        self.padded_seconds += padded_seconds

    def peak_memory_bytes(self):
        """Peak GPU memory allocated (CUDA) or peak process RSS (CPU)."""
        if self.device.startswith("cuda"):
            return int(torch.cuda.max_memory_allocated())
        # ru_maxrss is in kilobytes on Linux.
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    def report(self, extra=None):
        """The cost figures so far, as a dict (see ``write``)."""
        wall = time.time() - self.start_time
        per_second = (
            self.counted_flops / self.counted_padded_seconds
            if self.counted_padded_seconds
            else None
        )
        speed = (
            self.padded_seconds / self.train_seconds
            if self.train_seconds
            else None
        )
        cpu_joules = self.rapl.joules()
        gpu_joules = self.gpu_energy.joules()
        proj = self.projection
        projected_padded = (
            proj["steps"] * proj["micro_batches"] * proj["batch_seconds"]
        )
        projected_hours = projected_padded / speed / 3600 if speed else None
        report = {
            "device": self.device,
            "wall_seconds": round(wall, 2),
            "train_seconds": round(self.train_seconds, 2),
            "micro_batches": self.micro_batches,
            "audio_seconds": round(self.audio_seconds, 2),
            "padded_audio_seconds": round(self.padded_seconds, 2),
            "padded_audio_seconds_per_second": speed,
            "peak_memory_bytes": self.peak_memory_bytes(),
            "peak_memory_kind": "cuda_max_allocated"
            if self.device.startswith("cuda")
            else "process_max_rss",
            "flops": {
                "counted_micro_batches": self.counted_batches,
                "counted": self.counted_flops,
                "per_padded_audio_second": per_second,
                "estimated_run_total": per_second * self.padded_seconds
                if per_second
                else None,
                "method": "torch.utils.flop_counter (forward + backward)",
            },
            "energy_joules": {
                "cpu_rapl": cpu_joules,
                "gpu": gpu_joules,
                "gpu_method": type(self.gpu_energy).__name__,
            },
            "projection": {
                "what": (
                    "this run's model on this device, for "
                    f"{proj['steps']} steps x {proj['micro_batches']} "
                    f"micro-batches x {proj['batch_seconds']} s padded audio"
                ),
                "padded_audio_seconds": projected_padded,
                "hours": projected_hours,
                "flops": per_second * projected_padded if per_second else None,
                "energy_kwh": _project_energy(
                    cpu_joules, gpu_joules, wall, projected_hours
                ),
            },
        }
        report.update(extra or {})
        return report

    def write(self, extra=None):
        """Writes ``cost.json`` atomically and returns its content.

        Arguments
        ---------
        extra : dict, optional
            More fields to record (e.g. optimizer steps).

        Returns
        -------
        dict
        """
        report = self.report(extra)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        write_text_atomic(self.path, json.dumps(report, indent=2))
        return report


def _project_energy(cpu_joules, gpu_joules, wall_seconds, projected_hours):
    # The meters run for the whole wall time, so average power over it.
    measured = [j for j in (cpu_joules, gpu_joules) if j is not None]
    if not measured or not wall_seconds or not projected_hours:
        return None
    watts = sum(measured) / wall_seconds
    return round(watts * projected_hours / 1000, 3)


def _readable_int(path):
    try:
        with open(path, encoding="utf-8") as fin:
            return int(fin.read().strip())
    except (OSError, ValueError):
        return None
