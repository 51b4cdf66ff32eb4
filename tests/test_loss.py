"""Contrastive loss: negatives, -inf rule, padding, agreement with a loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from s3l_plugin.loss import ContrastiveLoss, frame_keys, sample_negatives


def _seeded(seed):
    return torch.Generator().manual_seed(seed)


def _reference_loss(predictions, targets, lengths, negatives, temperature):
    """Slow per-frame InfoNCE, written directly from METHOD.md 3."""
    losses, correct = [], []
    for b, length in enumerate(lengths.tolist()):
        if length < 2:
            continue
        for t in range(length):
            pred = predictions[b, t].double()
            logits = [F.cosine_similarity(pred, targets[b, t].double(), dim=0)]
            for j in negatives[b, t].tolist():
                if torch.equal(targets[b, j], targets[b, t]):
                    logits.append(torch.tensor(-math.inf, dtype=torch.float64))
                else:
                    logits.append(
                        F.cosine_similarity(pred, targets[b, j].double(), dim=0)
                    )
            logits = torch.stack(logits) / temperature
            losses.append(-torch.log_softmax(logits, dim=0)[0])
            correct.append(bool(logits[0] > logits[1:].max()))
    return torch.stack(losses).mean(), sum(correct) / len(correct)


def test_negatives_are_valid_frames_of_the_same_utterance():
    generator = _seeded(0)
    for _ in range(50):
        lengths = torch.randint(1, 40, (6,), generator=generator)
        max_len = int(lengths.max()) + 5
        negatives = sample_negatives(lengths, max_len, 30, generator)
        assert negatives.shape == (6, max_len, 30)
        assert negatives.dtype == torch.long
        upper = lengths.clamp(min=1).view(-1, 1, 1)
        # Never padding, for every query frame (padded ones included).
        assert bool((negatives >= 0).all())
        assert bool((negatives < upper).all())
        frames = torch.arange(max_len).view(1, -1, 1)
        query_valid = (frames < lengths.view(-1, 1, 1)) & (
            lengths.view(-1, 1, 1) >= 2
        )
        # Never the positive.
        assert not bool(((negatives == frames) & query_valid).any())


def test_negatives_are_uniform_over_the_other_frames():
    negatives = sample_negatives(torch.tensor([5]), 5, 20000, _seeded(1))
    counts = torch.bincount(negatives[0, 2], minlength=5).float() / 20000
    assert counts[2] == 0
    torch.testing.assert_close(
        counts[[0, 1, 3, 4]], torch.full((4,), 0.25), atol=0.015, rtol=0
    )


@pytest.mark.parametrize("num_negatives", [1, 7])
def test_loss_matches_a_per_frame_reference(num_negatives):
    torch.manual_seed(0)
    lengths = torch.tensor([9, 1, 5, 2])
    predictions = torch.randn(4, 9, 6)
    targets = torch.randn(4, 9, 6)
    loss_fn = ContrastiveLoss(num_negatives=num_negatives, temperature=0.5)
    loss, accuracy = loss_fn(predictions, targets, lengths, _seeded(3))
    negatives = sample_negatives(lengths, 9, num_negatives, _seeded(3))
    expected_loss, expected_accuracy = _reference_loss(
        predictions, targets, lengths, negatives, 0.5
    )
    torch.testing.assert_close(
        loss.double(), expected_loss, rtol=1e-5, atol=1e-6
    )
    assert float(accuracy) == pytest.approx(expected_accuracy)


def test_identical_negatives_get_minus_inf():
    torch.manual_seed(1)
    distinct = torch.randn(3, 8)
    # Utterance 0 repeats 3 vectors; utterance 1 repeats one whose first
    # coordinate is 0.0 in one frame and -0.0 in the other (equal under ==,
    # different bits).
    targets = torch.zeros(2, 10, 8)
    targets[0] = distinct[torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1, 0])]
    targets[1, :6] = distinct[torch.tensor([0, 1, 0, 2, 1, 0])]
    targets[1, 0, 0] = 0.0
    targets[1, 2] = targets[1, 0]
    targets[1, 2, 0] = -0.0
    lengths = torch.tensor([10, 6])
    predictions = targets + 0.3 * torch.randn(2, 10, 8)
    loss_fn = ContrastiveLoss(num_negatives=12, temperature=0.5)

    logits, valid = loss_fn.logits(predictions, targets, lengths, _seeded(4))
    negatives = sample_negatives(lengths, 10, 12, _seeded(4))
    keys_equal = torch.stack(
        [
            torch.stack(
                [
                    torch.tensor(
                        [torch.equal(targets[b, t], targets[b, j]) for j in row]
                    )
                    for t, row in enumerate(negatives[b].tolist())
                ]
            )
            for b in range(2)
        ]
    )
    assert keys_equal[valid].any()  # the test does exercise duplicates
    assert torch.equal(torch.isinf(logits[..., 1:]), keys_equal)
    assert not torch.isinf(logits[..., 0]).any()

    loss, accuracy = loss_fn(predictions, targets, lengths, _seeded(4))
    expected_loss, expected_accuracy = _reference_loss(
        predictions, targets, lengths, negatives, 0.5
    )
    assert torch.isfinite(loss)
    torch.testing.assert_close(
        loss.double(), expected_loss, rtol=1e-5, atol=1e-6
    )
    assert float(accuracy) == pytest.approx(expected_accuracy)

    # With exact predictions a duplicate would tie with the positive; the
    # rule removes it, so every frame is right.
    _, accuracy = loss_fn(targets, targets, lengths, _seeded(4))
    assert float(accuracy) == 1.0


def test_perfect_predictions_beat_random_ones():
    torch.manual_seed(2)
    targets = torch.randn(3, 30, 16)
    lengths = torch.tensor([30, 20, 11])
    loss_fn = ContrastiveLoss(num_negatives=20)
    perfect, accuracy = loss_fn(targets, targets, lengths)
    random_loss, _ = loss_fn(torch.randn(3, 30, 16), targets, lengths)
    assert float(accuracy) == 1.0
    assert float(perfect) < float(random_loss)
    # Random predictions: about log(1 + N) (all logits comparable).
    assert float(random_loss) == pytest.approx(math.log(21), rel=0.25)


def test_known_value_and_single_frame_utterances_excluded():
    # One-hot targets, exact predictions: positive cos 1, negatives cos 0.
    num_negatives, temperature = 4, 0.5
    targets = torch.zeros(2, 5, 8)
    targets[0, :5] = torch.eye(8)[:5]
    targets[1, 0] = torch.eye(8)[7]
    lengths = torch.tensor([5, 1])
    loss_fn = ContrastiveLoss(num_negatives, temperature)
    loss, accuracy = loss_fn(targets, targets, lengths)
    positive = 1 / temperature
    expected = math.log(math.exp(positive) + num_negatives) - positive
    # Counting the single-frame utterance as a zero loss would lower this.
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(accuracy) == 1.0


def test_padding_does_not_change_the_loss():
    torch.manual_seed(3)
    lengths = torch.tensor([12, 7, 3])
    predictions = torch.randn(3, 12, 8)
    targets = torch.randn(3, 12, 8)
    loss_fn = ContrastiveLoss(num_negatives=10)
    loss, accuracy = loss_fn(predictions, targets, lengths, _seeded(5))
    padding = torch.arange(12).view(1, -1, 1) >= lengths.view(-1, 1, 1)
    other_predictions = torch.where(
        padding, 100 * torch.randn(3, 12, 8), predictions
    )
    other_targets = torch.where(padding, targets[:, :1], targets)
    other_loss, other_accuracy = loss_fn(
        other_predictions, other_targets, lengths, _seeded(5)
    )
    torch.testing.assert_close(loss, other_loss)
    assert float(accuracy) == float(other_accuracy)


def test_gradient_reaches_predictions_only():
    torch.manual_seed(4)
    lengths = torch.tensor([6, 1, 4])
    predictions = torch.randn(3, 6, 8, requires_grad=True)
    targets = torch.randn(3, 6, 8, requires_grad=True)
    loss, accuracy = ContrastiveLoss(num_negatives=5)(
        predictions, targets, lengths
    )
    loss.backward()
    assert targets.grad is None
    assert not accuracy.requires_grad
    frame_grad = predictions.grad.abs().sum(-1)
    assert bool((frame_grad[0] > 0).all())
    assert bool((frame_grad[2, :4] > 0).all())
    assert bool((frame_grad[2, 4:] == 0).all())
    assert bool((frame_grad[1] == 0).all())  # single frame: excluded


def test_loss_is_float32_under_bf16_autocast():
    torch.manual_seed(5)
    lengths = torch.tensor([40, 25])
    predictions = torch.randn(2, 40, 32)
    targets = torch.randn(2, 40, 32)
    loss_fn = ContrastiveLoss(num_negatives=20)
    loss, _ = loss_fn(predictions, targets, lengths, _seeded(6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_loss, _ = loss_fn(predictions, targets, lengths, _seeded(6))
    assert autocast_loss.dtype == torch.float32
    torch.testing.assert_close(autocast_loss, loss, rtol=1e-6, atol=1e-6)


def test_no_valid_frame_gives_zero_loss_with_a_graph():
    predictions = torch.randn(2, 3, 4, requires_grad=True)
    loss, accuracy = ContrastiveLoss(num_negatives=2)(
        predictions, torch.randn(2, 3, 4), torch.tensor([1, 1])
    )
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(accuracy) == 0.0
    assert torch.equal(predictions.grad, torch.zeros(2, 3, 4))


def test_frame_keys_separate_distinct_vectors():
    torch.manual_seed(6)
    frames = torch.randn(5000, 64)
    # A one-ulp change in one coordinate must change the keys.
    nudged = frames.clone()
    nudged[:, 3] = torch.nextafter(nudged[:, 3], torch.tensor(math.inf))
    keys = frame_keys(torch.cat([frames, nudged, frames.clone()]))
    assert torch.equal(keys[:5000], keys[10000:])
    assert not (keys[:5000] == keys[5000:10000]).all(-1).any()
    assert torch.unique(keys[:10000], dim=0).shape[0] == 10000


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        ContrastiveLoss()(
            torch.randn(1, 4, 3), torch.randn(1, 5, 3), torch.tensor([4])
        )


def test_frame_mask_counts_only_the_masked_frames():
    torch.manual_seed(0)
    loss_fn = ContrastiveLoss(num_negatives=4)
    predictions = torch.randn(2, 8, 6)
    targets = torch.randn(2, 8, 6)
    lengths = torch.tensor([8, 5])
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, 2:4] = True
    mask[1, 4:7] = True  # frames 5 and 6 are padding: never counted
    generator = torch.Generator().manual_seed(1)
    logits, valid = loss_fn.logits(predictions, targets, lengths, generator)
    frame_loss = torch.logsumexp(logits, -1) - logits[..., 0]
    expected = (frame_loss[0, 2:4].sum() + frame_loss[1, 4]) / 3
    generator = torch.Generator().manual_seed(1)
    loss, _ = loss_fn(predictions, targets, lengths, generator, mask)
    assert torch.allclose(loss, expected)
    generator = torch.Generator().manual_seed(1)
    unmasked, _ = loss_fn(predictions, targets, lengths, generator)
    assert not torch.allclose(unmasked, expected)
