"""The benchmark scripts run on tiny sizes and print every column.

Also checks the benchmarks' measuring tools (memory tracker, synthetic
durations, padding statistics), that the variants they compare compute
the same thing. No assertion is about time.
"""

import copy
import importlib
import os
import re
import sys
import traceback

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")
sys.path.insert(0, os.path.abspath(BENCHMARKS))


def _script(name):
    return importlib.import_module(name)


def _table(output, headers):
    """Header cells and the data rows (split on spaces) of a printed table."""
    lines = output.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.split() == list(headers)
    )
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip() or line.startswith(("#", "speedup")):
            break
        rows.append(line.split())
    return rows


def test_attention_benchmark_prints_every_variant_and_column(capsys):
    attention = _script("attention")
    rows = attention.main(["--tiny", "--durations", "1", "2"])
    out = capsys.readouterr().out
    printed = _table(out, attention.HEADERS)
    variants = [
        "s3l-math",
        "s3l-sdpa",
        "s3l-math-layers",
        "s3l-sdpa-layers",
    ] + [f"sb-{name}" for name in attention.SB_ATTENTION]
    assert len(printed) == len(rows) == 2 * len(variants)
    assert [row[2] for row in printed] == variants * 2
    for row in printed:
        assert len(row) == len(attention.HEADERS)
        assert "n/a" not in row  # time and memory of every variant
    assert {row[1] for row in printed} == {"12", "25"}  # frames at 80 ms
    math_rows = [row for row in printed if row[2] == "s3l-math"]
    assert all(row[5] == "1.00" and row[7] == "1.00" for row in math_rows)
    assert "2-core" in out or "CPU" in out or "GPU" in out


def test_attention_variants_compute_the_same_stack(capsys):
    """s3l-math and s3l-sdpa are the same model with another kernel."""
    attention = _script("attention")
    args = attention.parse_args(["--tiny", "--dropout", "0"])
    variants = attention.build_variants(args, max_len=20)
    x = torch.randn(2, 20, args.d_model)
    lengths = torch.tensor([20, 11])
    reference = variants["s3l-math"](x, lengths)
    torch.testing.assert_close(
        variants["s3l-sdpa"](x, lengths), reference, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        variants["s3l-sdpa-layers"](x, lengths),
        variants["s3l-math-layers"](x, lengths),
        atol=1e-5,
        rtol=1e-5,
    )
    for name in ("sb-RelPosMHAXL", "sb-regularMHA", "sb-RoPEMHA"):
        assert variants[name](x, lengths).shape == reference.shape


def test_batching_benchmark_prints_both_samplers(capsys):
    batching = _script("batching")
    rows = batching.main(["--tiny"])
    out = capsys.readouterr().out
    printed = _table(out, batching.HEADERS)
    assert [row[0] for row in printed] == [
        "dynamic",
        "dynamic-quantiles",
        "fixed",
    ]
    assert all(len(row) == len(batching.HEADERS) for row in printed)
    stats = _table(out, batching.STATS_HEADERS)
    assert [row[0] for row in stats][:3] == ["utterances", "hours", "mean_s"]
    # Dynamic batching pads less than shuffled fixed-size batches.
    padded = [float(row[4]) for row in rows]
    assert padded[0] < padded[2] and padded[1] < padded[2]
    assert all(float(row[-1]) > 0 for row in rows)


def test_synthetic_durations_match_train_clean_100():
    batching = _script("batching")
    durations = batching.librispeech_100_durations(28539)
    assert abs(durations.sum() / 3600 - 100.6) < 2.0
    assert abs(durations.mean() - 12.7) < 0.3
    assert durations.min() >= 1.3 and durations.max() <= 24.5
    assert ((durations >= 10) & (durations <= 17)).mean() > 0.5
    centred = durations - durations.mean()
    assert (centred**3).mean() < 0  # left-skewed


def test_padding_stats_and_fixed_batches():
    batching = _script("batching")
    durations = np.array([1.0, 2.0, 4.0, 4.0])
    stats = batching.padding_stats([[0, 1], [2, 3]], durations)
    # Batch 1: 2 x 2 s with 1 s of padding; batch 2: no padding.
    assert stats["padded_fraction"] == pytest.approx(1 / 12)
    assert stats["utts_per_batch"] == 2.0
    batches = batching.fixed_batches(10, 3, seed=1)
    assert sorted(i for batch in batches for i in batch) == list(range(10))


def test_train_step_benchmark_prints_every_variant_and_phase(capsys):
    train_step = _script("train_step")
    rows, breakdown, speedups = train_step.main(["--tiny", "--ablations"])
    out = capsys.readouterr().out
    printed = _table(out, train_step.HEADERS)
    assert [row[0] for row in printed] == [
        "s3l",
        "s3l-all-off",
        "s3l-math",
        "s3l-direct-conv",
        "s3l-teacher-autograd",
        "s3l-teacher-inference-mode",
        "s3l-foreach-adamw",
        "bestrq",
    ]
    assert all(len(row) == len(train_step.HEADERS) for row in printed)
    by_name = {row[0]: row for row in printed}
    assert "n/a" not in by_name["s3l"] and "n/a" not in by_name["bestrq"]
    # The all-off variant is fp32 only.
    assert by_name["s3l-all-off"][5:] == ["n/a"] * 3
    phases = _table(out, train_step.BREAKDOWN_HEADERS)
    assert [row[0] for row in phases][:2] == ["features", "student"]
    assert len(phases) == len(train_step.PHASES) + 1 == len(breakdown)
    fixed = {
        "s3l bf16 vs bestrq bf16",
        "s3l bf16 vs s3l-all-off fp32",
        "s3l fp32 vs bestrq bf16",
        "s3l fp32 vs s3l-all-off fp32",
    }
    assert fixed < set(speedups)
    # Plus the target: each at its own best (fastest) precision.
    (best,) = set(speedups) - fixed
    times = {
        (row[0], p): row[i]
        for row in printed
        for p, i in (("fp32", 3), ("bf16", 6))
    }
    s3l_p, bestrq_p = re.fullmatch(
        r"s3l best \((\w+)\) vs bestrq best \((\w+)\)", best
    ).groups()
    assert float(times["s3l", s3l_p]) <= min(
        float(times["s3l", p]) for p in ("fp32", "bf16")
    )
    assert float(times["bestrq", bestrq_p]) <= min(
        float(times["bestrq", p]) for p in ("fp32", "bf16")
    )
    assert "speedup s3l bf16 vs bestrq bf16" in out
    assert "bf16 speed-up" in out


def _eval_step_loss(step, wavs, wav_lens, phased):
    train_step = _script("train_step")
    step.student.eval()
    step.noise.eval()
    step.spec_augment.eval()
    torch.manual_seed(3)
    if phased:
        # Same functions as s3l_forward, with the phase timers around them.
        losses = []
        original = step.loss_fn.forward

        def record(*args, **kwargs):
            loss = original(*args, **kwargs)
            losses.append(loss[0].detach())
            return loss

        step.loss_fn.forward = record
        step.phased(wavs, wav_lens, "fp32", train_step.PhaseTimer("cpu"))
        return losses[0]
    return step(wavs, wav_lens, "fp32").detach()


def test_phased_step_and_teacher_variants_compute_the_same_loss():
    train_step = _script("train_step")
    args = train_step.parse_args(["--tiny"])
    wavs, wav_lens = train_step.make_batch(args)
    wav_lens = torch.tensor([1.0, 0.7])
    losses = []
    for phased, teacher in (
        (False, "no_grad"),
        (True, "no_grad"),
        (False, "autograd"),
        (False, "inference_mode"),
    ):
        step = train_step.S3LStep(args, teacher=teacher)
        losses.append(_eval_step_loss(step, wavs, wav_lens, phased))
    for loss in losses[1:]:
        torch.testing.assert_close(loss, losses[0])


def test_autograd_teacher_builds_a_graph_but_gives_detached_targets():
    train_step = _script("train_step")
    from s3l_plugin.encoder import S3LEncoder, architecture
    from s3l_plugin.teacher import EMATeacher

    encoder = S3LEncoder(**architecture("toy"))
    naive = train_step.AutogradTeacher(encoder)
    plain = EMATeacher(encoder)
    feats = torch.randn(2, 200, 16)
    lengths = torch.tensor([200, 150])
    ours, _ = naive.encode_projected(feats, lengths, left=2, num_frames=18)
    theirs, _ = plain.encode_projected(feats, lengths, left=2, num_frames=18)
    assert all(p.requires_grad for p in naive.encoder.parameters())
    assert not ours.requires_grad
    torch.testing.assert_close(ours, theirs)


def test_memory_tracker_counts_forward_backward_and_frees():
    from benchutils import TensorMemoryTracker, measure_peak_memory

    weight = torch.randn(256, 256, requires_grad=True)
    inputs = torch.randn(64, 256)
    with TensorMemoryTracker() as tracker:
        hidden = (inputs @ weight).relu()  # 64 KiB kept for backward
        hidden.sum().backward()  # + 256 KiB of weight gradient
        del hidden
    assert tracker.peak >= (64 + 256) * 1024
    assert tracker.live == 256 * 1024  # only the gradient is left
    weight.grad = None
    # In-place ops and views are not new memory.
    before = torch.zeros(1024)
    assert measure_peak_memory(lambda: before.add_(1).view(2, -1), "cpu") == 0


def test_s3l_targets_crop_before_projection_matches_crop_after():
    """Projecting only the kept frames changes no target."""
    from s3l_plugin.augment import RandomShift
    from s3l_plugin.encoder import S3LEncoder, architecture
    from s3l_plugin.pretraining import s3l_targets
    from s3l_plugin.teacher import EMATeacher

    torch.manual_seed(0)
    teacher = EMATeacher(S3LEncoder(**architecture("toy")))
    feats = torch.randn(3, 240, 16)
    lengths = torch.tensor([240, 200, 100])
    num_frames = int(teacher.encoder.output_lengths(torch.tensor([240])))
    shift = RandomShift()
    torch.manual_seed(1)
    left, right = shift.draw()
    torch.manual_seed(1)
    targets = s3l_targets(teacher, feats, lengths, num_frames, shift)
    padded, padded_lengths, _, _ = shift.pad(feats, lengths, left, right)
    full, _ = teacher.encode_projected(padded, padded_lengths)
    expected = shift.crop(full, left, right)
    assert targets.shape == expected.shape == (3, num_frames, 16)
    torch.testing.assert_close(targets, expected, atol=1e-6, rtol=1e-6)


def test_teacher_momentum_reads_the_step_without_the_device_each_time(
    monkeypatch,
):
    from s3l_plugin.teacher import EMATeacher

    student = torch.nn.Linear(2, 2)
    teacher = EMATeacher(student, total_steps=10)
    assert teacher.update(student) == 0.0
    reads = []
    original = torch.Tensor.__int__

    def counting_int(tensor):
        reads.append(1)
        return original(tensor)

    monkeypatch.setattr(torch.Tensor, "__int__", counting_int)
    momenta = [teacher.update(student) for _ in range(3)]
    assert reads == []  # the host copy followed every increment
    monkeypatch.undo()
    assert momenta == [teacher.momentum(s) for s in (1, 2, 3)]
    # A state-dict load (an in-place copy) is seen.
    state = copy.deepcopy(teacher.state_dict())
    state["step"].fill_(7)
    teacher.load_state_dict(state)
    assert teacher.momentum() == teacher.momentum(7)
    teacher.step.fill_(2)
    assert teacher.momentum() == teacher.momentum(2)


class _HostReads(TorchDispatchMode):
    """Records the operators that make the host wait for the device.

    ``_local_scalar_dense`` is behind ``.item()``, ``int()``, ``float()``
    and ``bool()`` of a tensor; the others have data-dependent output
    shapes. On CUDA each is a host-device synchronisation.
    """

    SYNCING = {
        "_local_scalar_dense",
        "nonzero",
        "masked_select",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "repeat_interleave",
    }

    def __init__(self):
        super().__init__()
        self.sites = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.SYNCING:
            frames = [
                f"{os.path.basename(f.filename)}:{f.name}"
                for f in traceback.extract_stack()
                if "s3l_plugin" in f.filename
            ]
            self.sites.append(frames[-1] if frames else "outside s3l_plugin")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_s3l_step_reads_the_device_only_for_the_length_checks(backend):
    """No host-device sync in the step but the encoder's length check.

    Forward (features, noise, SpecAugment, student, shift, teacher), loss,
    backward and the EMA update; the optimizer is left out (AdamW keeps
    its step counters on the CPU). The two remaining reads are the
    student's and the teacher's ``S3LEncoder._check_lengths``, kept for
    their error message.
    """
    from s3l_plugin.augment import NoiseAugment, RandomShift, SpecAugment
    from s3l_plugin.encoder import S3LEncoder, architecture
    from s3l_plugin.loss import ContrastiveLoss
    from s3l_plugin.predictor import Predictor
    from s3l_plugin.pretraining import S3LStudent, s3l_forward
    from s3l_plugin.teacher import EMATeacher

    torch.manual_seed(0)
    encoder = S3LEncoder(**architecture("toy"), attention_backend=backend)
    student = S3LStudent(encoder, Predictor(16, (16, 16), (5, 1))).train()
    teacher = EMATeacher(encoder, total_steps=10)
    teacher.update(student)  # step 0 (the copy) done
    teacher.momentum()
    wavs, wav_lens = torch.randn(3, 16000), torch.tensor([1.0, 0.8, 0.5])
    with _HostReads() as reads:
        outputs = s3l_forward(
            student,
            teacher,
            encoder.features,
            wavs,
            wav_lens,
            NoiseAugment(prob=1.0).train(),
            SpecAugment().train(),
            RandomShift(),
        )
        loss, _ = ContrastiveLoss(num_negatives=10)(
            outputs.predictions, outputs.targets, outputs.lengths
        )
        loss.backward()
        teacher.update(student)
    assert reads.sites == ["encoder.py:_check_lengths"] * 2


def test_pretrain_throughput_runs_the_recipe_both_ways(
    pretrain_runner, tmp_path, capsys
):
    from conftest import SMALL_PRETRAIN_ARGS

    throughput = _script("pretrain_throughput")
    rows = throughput.main(
        [
            "--steps=3",
            "--log-interval=1",
            "--max-batch-length=10",
            f"--output={tmp_path}",
            f"--data_folder={pretrain_runner.corpus}",
            *(a for a in SMALL_PRETRAIN_ARGS if "log_interval" not in a),
        ]
    )
    out = capsys.readouterr().out
    printed = _table(out, throughput.HEADERS)
    assert [row[0] for row in printed] == [
        "dynamic",
        "dynamic-lognormal",
        "fixed",
    ]
    assert all(len(row) == len(throughput.HEADERS) for row in printed)
    assert printed == [[str(cell) for cell in row] for row in rows]
    # The tiny corpus's longest utterance is under 10 s: >= 1 per batch.
    assert int(rows[2][1].removesuffix("utt")) >= 1
    assert all(row[2] == 3 for row in rows)
    assert all(0.0 <= float(row[4]) < 1.0 for row in rows)
    assert "speedup dynamic vs fixed:" in out
    assert "speedup dynamic vs dynamic-lognormal:" in out
    # The fixed run really ran without the dynamic sampler.
    with open(tmp_path / "fixed" / "hyperparams.yaml") as f:
        saved = f.read()
    assert "dynamic_batching: false" in saved.lower()
    assert f"batch_size: {rows[2][1].removesuffix('utt')}" in saved
    with open(tmp_path / "dynamic" / "log.txt") as f:
        assert "duration buckets at quantiles" in f.read()
    with open(tmp_path / "dynamic-lognormal" / "log.txt") as f:
        assert "duration buckets at quantiles" not in f.read()


def test_shared_options_follow_the_device():
    from benchutils import benchmark_parser, parse_benchmark_args

    parser = benchmark_parser(
        "Demo.", precision="device", model="device", tiny=""
    )
    cpu = parse_benchmark_args(parser, ["--device", "cpu"])
    assert (cpu.precision, cpu.model) == (["fp32"], "toy")
    gpu = parse_benchmark_args(parser, ["--device", "cuda"])
    assert (gpu.precision, gpu.model) == (["bf16"], "paper")
    quick = parse_benchmark_args(parser, ["--device", "cuda", "--tiny"])
    assert quick.model == "toy"
    fixed = parse_benchmark_args(parser, ["--precision", "fp32", "bf16"])
    assert fixed.precision == ["fp32", "bf16"]


def test_dataloader_benchmark_times_every_stage_and_loader(capsys):
    dataloader = _script("dataloader")
    stage_rows, loader_rows = dataloader.main(["--tiny"])
    out = capsys.readouterr().out
    stages = _table(out, dataloader.STAGE_HEADERS)
    assert [row[0] for row in stages[:5]] == [
        "decode",
        "checks",
        "resample_24k",
        "collate",
        "noise",
    ]
    shares = [float(row[2]) for row in stages[:5] if row[2] != "n/a"]
    assert sum(shares) == pytest.approx(1.0, abs=0.02)
    loaders = _table(out, dataloader.LOADER_HEADERS)
    assert [row[0] for row in loaders] == ["0", "1"]
    # Every loader delivered the same batches (same sampler, same audio).
    assert len({row[2] for row in loaders}) == 1
    assert all(float(row[-1]) > 0 for row in loaders)
    assert "per worker" in out and "workers needed" in out


def test_prepare_scale_benchmark_times_every_phase(capsys):
    prepare_scale = _script("prepare_scale")
    rows = prepare_scale.main(["--tiny"])
    printed = _table(capsys.readouterr().out, prepare_scale.HEADERS)
    phases = ["write", "prepare", "sampler", "resume", "prepare (again)"]
    assert [" ".join(row[:-4]) for row in printed] == phases
    assert [row[0] for row in rows] == phases
    # Every generated file was prepared and reached the sampler.
    assert {row[1] for row in rows} == {300}
    assert all(float(row[-1]) > 0 for row in rows)  # peak RSS reported


REFERENCE_MIRROR = "/work/.mirror/Orange-OpenSource+s3lspeech/repo"

FAKE_REFERENCE_SSL = """
import torch
import pytorch_lightning as pl
from flash_attn.modules.mha import MHA


class S3LSpeech(pl.LightningModule):
    def __init__(self, config):
        super().__init__()
        self.student = torch.nn.Linear(config.n_mels, 8)
        self.attention = MHA(8, 2, dropout=0.0, use_flash_attn=True)
        self.predictor = torch.nn.Linear(8, config.n_mels)
        self.seen = []

    def pretrain_model(self, batch, batch_idx):
        lr = self.optimizers().param_groups[0]["lr"]
        dtype = torch.get_autocast_dtype("cpu")
        autocast = torch.is_autocast_enabled("cpu")
        self.seen.append((self.global_step, lr, autocast and dtype))
        x = self.attention(self.student(batch.signal_noise.data))
        y = self.predictor(x).float()
        return (y - batch.signal.data).pow(2).mean()

    def pretrain_optimizers(self):
        adam = torch.optim.AdamW(self.parameters(), lr=1e-3)
        halve = torch.optim.lr_scheduler.StepLR(adam, 1, gamma=0.5)
        return {"optimizer": adam, "lr_scheduler": {"scheduler": halve}}
"""

FAKE_REFERENCE_CONFIG = """
class S3LSpeechConfig:
    def __init__(self):
        self.n_mels, self.log_mel = 16, True
        self.sample_rate, self.win_length, self.hop_length = 16000, 20, 10
        self.n_fft = 320
"""


# Top-level names a reference import brings: its packages and the stubs.
REFERENCE_IMPORTS = {
    "models",
    "config",
    "modules",
    "datasets",
    "flash_attn",
    "pytorch_lightning",
    "omegaconf",
    "pandas",
    "librosa",
    "sox",
}


@pytest.fixture
def isolated_imports():
    """Forgets the modules and sys.path entries a reference import adds."""
    modules, path = set(sys.modules), list(sys.path)
    yield
    for name in set(sys.modules) - modules:
        if name.split(".")[0] in REFERENCE_IMPORTS:
            del sys.modules[name]
    sys.path[:] = path


def _fake_reference(root):
    """A minimal package with the reference's layout and step interface."""
    for package, module, source in (
        ("models", "ssl.py", FAKE_REFERENCE_SSL),
        ("config", "s3lspeech.py", FAKE_REFERENCE_CONFIG),
    ):
        os.makedirs(root / package)
        (root / package / "__init__.py").write_text("")
        (root / package / module).write_text(source)
    return str(root)


def test_reference_step_runs_as_lightning_would(tmp_path, isolated_imports):
    """The stubs import, and the harness plays Lightning's training loop."""
    train_step = _script("train_step")
    args = train_step.parse_args(
        ["--tiny", "--reference", _fake_reference(tmp_path)]
    )
    step = train_step.ReferenceStep(args)
    wavs, wav_lens = train_step.make_batch(args)
    before = copy.deepcopy(step.model.state_dict())
    for _ in range(2):
        loss = step(wavs, wav_lens, "bf16")
    assert torch.isfinite(loss)
    # Its data workers' log-mels: 10 ms hop, the config's mel count.
    assert step.batch.signal.data.shape == (2, 151, 16)
    assert not torch.equal(step.batch.signal.data, step.batch.signal_noise.data)
    # global_step advances per optimizer step, the scheduler steps, the
    # optimizer reaches the module, the step runs under bf16 autocast.
    assert step.model.global_step == 2
    assert step.model.seen == [
        (0, 1e-3, torch.bfloat16),
        (1, 5e-4, torch.bfloat16),
    ]
    changed = [
        name
        for name, value in step.model.state_dict().items()
        if not torch.equal(value, before[name])
    ]
    assert any(name.startswith("attention.Wqkv") for name in changed)
    assert step.params == sum(
        p.numel()
        for m in (step.model.student, step.model.predictor)
        for p in m.parameters()
    )


def test_reference_variant_in_the_interleaved_run(
    tmp_path, isolated_imports, capsys
):
    train_step = _script("train_step")
    rows, _, speedups = train_step.main(
        [
            "--tiny",
            "--no-breakdown",
            "--no-memory",
            "--reference",
            _fake_reference(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    reference = next(row for row in rows if row[0] == "reference")
    assert reference[2:5] == ["n/a"] * 3  # fp32 cannot run (see docstring)
    assert float(reference[6]) > 0
    assert "reference bf16:" in out
    assert any(
        key.startswith("s3l best") and "reference best (bf16)" in key
        for key in speedups
    )
    assert any("bestrq best" in key for key in speedups)


def test_reference_path_without_the_model_is_one_clear_error(tmp_path, capsys):
    train_step = _script("train_step")
    with pytest.raises(SystemExit) as exit_info:
        train_step.load_reference(str(tmp_path))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"s3l: error: {tmp_path}: not a checkout of the S3LSpeech reference "
        "(no models/ssl.py)"
    ]


def test_flash_attn_stub_is_multi_head_attention_with_its_mask(
    isolated_imports,
):
    """Keys masked False are ignored; the rest is plain softmax attention."""
    sys.path.append(_script("train_step").REFERENCE_STUBS)
    from flash_attn.modules.mha import MHA

    torch.manual_seed(0)
    mha = MHA(8, 2).eval()
    x = torch.randn(2, 5, 8)
    keep = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    q, k, v = mha.Wqkv(x).view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / 2.0
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    expected = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 8)
    out = mha(x, key_padding_mask=keep)
    torch.testing.assert_close(out, mha.out_proj(expected))
    # A change in a masked key changes nothing.
    x2 = x.clone()
    x2[1, 4] += 1.0
    torch.testing.assert_close(
        mha(x2, key_padding_mask=keep)[1, :3], out[1, :3]
    )
    with pytest.raises(TypeError, match="unsupported"):
        MHA(8, 2, rotary_emb_dim=4)


@pytest.mark.skipif(
    not os.path.isdir(REFERENCE_MIRROR), reason="no reference checkout"
)
def test_real_reference_step_runs_from_the_mirror(tmp_path, isolated_imports):
    import subprocess

    checkout = tmp_path / "s3lspeech"
    checkout.mkdir()
    subprocess.run(
        [
            "git",
            f"--git-dir={REFERENCE_MIRROR}",
            f"--work-tree={checkout}",
            "checkout",
            "-f",
            "HEAD",
            "--",
            ".",
        ],
        check=True,
    )
    train_step = _script("train_step")
    args = train_step.parse_args(["--tiny", "--reference", str(checkout)])
    step = train_step.ReferenceStep(args)
    wavs, wav_lens = train_step.make_batch(args)
    assert torch.isfinite(step(wavs, wav_lens, "bf16"))
    assert step.model.global_step == 1
