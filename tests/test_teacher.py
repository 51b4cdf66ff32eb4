"""EMA teacher: schedule, EMA maths, frozen eval mode, checkpointed step."""

from typing import NamedTuple

import pytest
import torch
from torch import nn

from s3l_plugin.teacher import EMATeacher, cosine_momentum


class EncoderOutput(NamedTuple):
    out: torch.Tensor
    lengths: torch.Tensor
    layers: list
    layer_lengths: list


class TinyEncoder(nn.Module):
    """Stand-in with the encoder's interface: ``encode`` and ``proj``.

    Has dropout (to see eval mode) and a BatchNorm (buffers to copy).
    """

    def __init__(self, n_mels=6, d_model=8, proj_dim=4):
        super().__init__()
        self.conv = nn.Conv1d(n_mels, d_model, kernel_size=2, stride=2)
        self.norm = nn.BatchNorm1d(d_model)
        self.dropout = nn.Dropout(0.5)
        self.proj = nn.Linear(d_model, proj_dim)

    def encode(self, feats, feat_lens):
        hidden = self.dropout(self.norm(self.conv(feats.transpose(1, 2))))
        hidden = hidden.transpose(1, 2)
        lengths = feat_lens // 2
        frames = torch.arange(hidden.shape[1])
        padding = frames >= lengths.unsqueeze(1)
        out = hidden.masked_fill(padding.unsqueeze(-1), 0.0)
        return EncoderOutput(out, lengths, [], [])


class TinyStudent(nn.Module):
    """Like ``S3LStudent``: the encoder plus a predictor not in the EMA."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.predictor = nn.Linear(4, 4)


def _randomise(module, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
        for buffer in module.buffers():
            if buffer.is_floating_point():  # positive: BatchNorm variances
                buffer.copy_(
                    torch.rand(buffer.shape, generator=generator) + 0.5
                )
            else:
                buffer.fill_(seed)
    return module


def test_cosine_momentum_schedule():
    total = 100
    values = [cosine_momentum(step, total) for step in range(total + 5)]
    assert values[0] == 0.0
    assert values[1] == pytest.approx(0.995, abs=1e-5)
    assert values[1] > 0.995
    assert values[total // 2] == pytest.approx(0.9975)
    assert values[total] == 1.0 and values[-1] == 1.0
    assert all(b >= a for a, b in zip(values[1:], values[2:]))
    assert cosine_momentum(1, 10, base=0.9, final=0.99) > 0.9


def test_first_update_copies_the_student_exactly():
    teacher = EMATeacher(_randomise(TinyEncoder(), 0), total_steps=10)
    student = _randomise(TinyEncoder(), 1)
    assert teacher.update(student) == 0.0
    assert int(teacher.step) == 1
    for ours, theirs in zip(
        teacher.encoder.state_dict().values(), student.state_dict().values()
    ):
        assert torch.equal(ours, theirs)


def test_update_applies_the_ema_formula():
    student = _randomise(TinyEncoder(), 0)
    teacher = EMATeacher(student, base_momentum=0.9, total_steps=10)
    teacher.update(student)
    _randomise(student, 1)
    before = [p.clone() for p in teacher.encoder.parameters()]
    momentum = teacher.update(student)
    assert momentum == cosine_momentum(1, 10, base=0.9)
    assert 0.9 < momentum < 1.0
    for old, new, target in zip(
        before, teacher.encoder.parameters(), student.parameters()
    ):
        expected = momentum * old + (1 - momentum) * target
        torch.testing.assert_close(new, expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(new, target)
    # Buffers (BatchNorm statistics) follow the student exactly.
    assert torch.equal(
        teacher.encoder.norm.running_mean, student.norm.running_mean
    )
    assert int(teacher.step) == 2


def test_momentum_one_leaves_the_teacher_unchanged():
    student = _randomise(TinyEncoder(), 0)
    teacher = EMATeacher(student, total_steps=1)
    teacher.update(student)
    _randomise(student, 1)
    before = [p.clone() for p in teacher.encoder.parameters()]
    assert teacher.update(student) == 1.0
    for old, new in zip(before, teacher.encoder.parameters()):
        assert torch.equal(old, new)


def test_teacher_is_frozen_and_stays_in_eval_mode():
    teacher = EMATeacher(TinyEncoder())
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    nn.ModuleDict({"teacher": teacher}).train(True)
    assert not any(m.training for m in teacher.modules())
    feats = torch.randn(2, 10, 6, requires_grad=True)
    lengths = torch.tensor([10, 6])
    first = teacher(feats, lengths).out
    assert not first.requires_grad
    # Dropout off: deterministic targets.
    assert torch.equal(first, teacher(feats, lengths).out)


def test_update_does_not_touch_the_student_or_its_graph():
    student = TinyEncoder()
    teacher = EMATeacher(student, total_steps=10)
    snapshot = {k: v.clone() for k, v in student.state_dict().items()}
    teacher.update(student)
    teacher.update(student)
    for key, value in student.state_dict().items():
        assert torch.equal(value, snapshot[key])
    assert all(p.requires_grad for p in student.parameters())


def test_step_counter_survives_a_state_dict_round_trip():
    student = _randomise(TinyEncoder(), 0)
    teacher = EMATeacher(student, total_steps=10)
    for seed in (1, 2, 3):
        teacher.update(_randomise(student, seed))
    state = teacher.state_dict()
    assert int(state["step"]) == 3

    resumed = EMATeacher(_randomise(TinyEncoder(), 7), total_steps=10)
    resumed.load_state_dict(state)
    assert int(resumed.step) == 3
    _randomise(student, 4)
    before = [p.clone() for p in resumed.encoder.parameters()]
    momentum = resumed.update(student)
    assert momentum == cosine_momentum(3, 10)
    for old, new, target in zip(
        before, resumed.encoder.parameters(), student.parameters()
    ):
        # An EMA step, not a fresh copy of the student.
        assert not torch.equal(new, target)
        torch.testing.assert_close(
            new, momentum * old + (1 - momentum) * target
        )


@pytest.mark.parametrize(
    "wrap",
    [
        lambda encoder: encoder,
        TinyStudent,
        lambda encoder: nn.DataParallel(TinyStudent(encoder)),
        lambda encoder: torch.compile(TinyStudent(encoder)),
    ],
    ids=["encoder", "student", "data_parallel", "compiled"],
)
def test_update_unwraps_the_student(wrap):
    encoder = _randomise(TinyEncoder(), 0)
    teacher = EMATeacher(TinyEncoder(), total_steps=10)
    teacher.update(wrap(encoder))
    for ours, theirs in zip(teacher.encoder.parameters(), encoder.parameters()):
        assert torch.equal(ours, theirs)


def test_update_rejects_a_different_architecture():
    teacher = EMATeacher(TinyEncoder(d_model=8))
    with pytest.raises(ValueError, match="does not match"):
        teacher.update(TinyEncoder(d_model=12))
    assert int(teacher.step) == 0


def test_encode_projected_gives_zero_padded_targets_without_grad():
    teacher = EMATeacher(_randomise(TinyEncoder(), 0))
    feats = torch.randn(2, 12, 6)
    lengths = torch.tensor([12, 7])
    targets, out_lengths = teacher.encode_projected(feats, lengths)
    assert targets.shape == (2, 6, 4)
    assert out_lengths.tolist() == [6, 3]
    assert not targets.requires_grad
    assert torch.equal(targets[1, 3:], torch.zeros(3, 4))
    encoded = teacher.encoder.encode(feats, lengths)
    expected = teacher.encoder.proj(encoded.out)
    torch.testing.assert_close(targets[0], expected[0])
    torch.testing.assert_close(targets[1, :3], expected[1, :3])


def test_targets_can_be_used_in_a_student_loss():
    """no_grad (not inference_mode) outputs can be saved for backward."""
    teacher = EMATeacher(TinyEncoder())
    targets, _ = teacher.encode_projected(
        torch.randn(1, 8, 6), torch.tensor([8])
    )
    predictions = torch.randn(1, 4, 4, requires_grad=True)
    (predictions * targets).sum().backward()
    torch.testing.assert_close(predictions.grad, targets)


def test_with_the_real_encoder_targets_align_with_the_student():
    """Shifted, cropped teacher targets line up with the student's frames."""
    encoder_module = pytest.importorskip("s3l_plugin.encoder")
    pretraining = pytest.importorskip("s3l_plugin.pretraining")
    predictor_module = pytest.importorskip("s3l_plugin.predictor")
    from s3l_plugin.augment import RandomShift

    torch.manual_seed(0)
    config = encoder_module.architecture("toy")
    encoder = encoder_module.S3LEncoder(**config)
    predictor = predictor_module.Predictor(
        config["proj_dim"], (16, config["proj_dim"]), (5, 1)
    )
    student = pretraining.S3LStudent(encoder, predictor)
    teacher = EMATeacher(encoder, total_steps=10)
    teacher.train()
    assert not any(m.training for m in teacher.modules())

    feats = torch.randn(3, 200, config["n_mels"])
    lengths = torch.tensor([200, 150, 90])
    predictions, student_lengths = student(feats, lengths)
    shift = RandomShift(unit=8, max_shift=16)
    for left, right in [(0, 0), (3, 5), (16, 16)]:
        padded, padded_lengths, left, right = shift.pad(
            feats, lengths, left, right
        )
        targets, target_lengths = teacher.encode_projected(
            padded, padded_lengths
        )
        targets = shift.crop(targets, left, right)
        assert targets.shape == predictions.shape
        assert torch.equal(target_lengths - left - right, student_lengths)
    # Eval mode: the targets are deterministic.
    first, _ = teacher.encode_projected(feats, lengths)
    second, _ = teacher.encode_projected(feats, lengths)
    assert torch.equal(first, second)

    # The EMA goes over the encoder of the (wrapped) student only.
    with torch.no_grad():
        for param in student.parameters():
            param.add_(1.0)
    assert teacher.update(student) == 0.0
    for ours, theirs in zip(teacher.encoder.parameters(), encoder.parameters()):
        assert torch.equal(ours, theirs)
