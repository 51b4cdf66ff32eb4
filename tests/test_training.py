"""The training core's guarded steps, on a toy Brain (no recipe, no data)."""

import pytest
import torch

from s3l_plugin.config import NonFiniteError
from s3l_plugin.data.audio import EmptyBatch
from s3l_plugin.training import S3LBrain


class Batch:
    """A batch of inputs with a loss factor (``nan`` poisons the loss)."""

    def __init__(self, scale=1.0, nan_bias_grad=False):
        self.x = torch.ones(2, 3)
        self.scale = scale
        self.nan_bias_grad = nan_bias_grad
        self.skipped = [("bad", "bad: silent")]
        self.id = ["a", "b"]


class ToyBrain(S3LBrain):
    def compute_forward(self, batch, stage):
        return self.modules.model(batch.x)

    def compute_objectives(self, outputs, batch, stage):
        loss = outputs.sum() * batch.scale
        if batch.nan_bias_grad:
            # Finite value, NaN gradient for the bias only.
            bias = self.modules.model.bias.sum() * 0.0
            loss = loss + torch.sqrt(bias) * 0.0
        return loss

    def init_optimizers(self):
        model = self.modules.model
        # Two parameter groups: SpeechBrain clips the first only.
        self.optimizer = torch.optim.SGD(
            [{"params": [model.weight]}, {"params": [model.bias]}], lr=1.0
        )
        self.optimizers_dict = {"optimizer": self.optimizer}


def make_brain(**run_opts):
    torch.manual_seed(0)
    brain = ToyBrain(
        modules={"model": torch.nn.Linear(3, 2)},
        run_opts=dict({"device": "cpu", "max_grad_norm": 1.0}, **run_opts),
    )
    brain.init_optimizers()
    brain.nonfinite_count = 0  # as SpeechBrain sets it each epoch
    brain.step = 1
    return brain


def parameters(brain):
    return [p.detach().clone() for p in brain.modules.model.parameters()]


def test_every_parameter_group_is_clipped():
    brain = make_brain()
    before = parameters(brain)
    brain.fit_batch(Batch(scale=100.0))
    assert brain.stepped and brain.optimizer_step == 1
    update = torch.cat(
        [(a - b).flatten() for a, b in zip(parameters(brain), before)]
    )
    assert update.norm() == pytest.approx(1.0, rel=1e-4)
    assert brain.skipped_audio == 1


def test_nonfinite_loss_skips_the_step_then_stops_the_run():
    brain = make_brain(nonfinite_patience=1)
    before = parameters(brain)
    loss = brain.fit_batch(Batch(scale=float("nan")))
    assert torch.isnan(loss)
    assert not brain.stepped and brain.optimizer_step == 0
    assert brain.nonfinite_steps == brain.nonfinite_count == 1
    assert all(torch.equal(a, b) for a, b in zip(parameters(brain), before))
    assert all(p.grad is None for p in brain.modules.model.parameters())
    with pytest.raises(NonFiniteError, match="--nonfinite_patience"):
        brain.fit_batch(Batch(scale=float("nan")))


@pytest.mark.parametrize("skip_nonfinite_grads", [False, True])
def test_nonfinite_gradient(skip_nonfinite_grads):
    brain = make_brain(skip_nonfinite_grads=skip_nonfinite_grads)
    weight, bias = parameters(brain)
    brain.fit_batch(Batch(nan_bias_grad=True))
    new_weight, new_bias = parameters(brain)
    assert torch.equal(new_bias, bias)
    assert brain.nonfinite_count == 0  # SpeechBrain counts losses only
    if skip_nonfinite_grads:
        # SpeechBrain's meaning: the non-finite gradients are dropped and
        # the step goes on with the others.
        assert brain.stepped and not torch.equal(new_weight, weight)
    else:
        assert not brain.stepped and torch.equal(new_weight, weight)
        assert brain.nonfinite_steps == 1


def test_window_without_audio_skips_the_step():
    brain = make_brain(grad_accumulation_factor=2)
    before = parameters(brain)
    empty = EmptyBatch([("x", "x: empty audio")])
    assert torch.isnan(brain.fit_batch(empty))
    brain.step = 2
    brain.fit_batch(EmptyBatch([]))
    assert not brain.stepped and brain.optimizer_step == 0
    assert brain.skipped_audio == 1 and brain.nonfinite_steps == 0
    assert all(torch.equal(a, b) for a, b in zip(parameters(brain), before))
    # A window with audio in one micro-batch steps.
    brain.step = 3
    brain.fit_batch(empty)
    brain.step = 4
    brain.fit_batch(Batch())
    assert brain.stepped and brain.optimizer_step == 1
