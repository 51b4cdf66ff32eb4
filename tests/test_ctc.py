"""CTC modelling: layer sum, head, loss lengths, decoding (vocabularies:
test_vocabulary.py)."""

import pytest
import torch
import torch.nn.functional as F

from s3l_plugin.ctc import (
    S3LCTC,
    CTCHead,
    LSTMCTCHead,
    WeightedLayerSum,
    build_ctc_head,
    ctc_loss,
    greedy_decode,
)
from s3l_plugin.encoder import S3LEncoder, architecture
from s3l_plugin.vocabulary import CharVocabulary


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster (and far more steadily) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_encoder():
    return S3LEncoder(**dict(architecture("toy"), transf2_layers=2))


# ---- Weighted layer sum ------------------------------------------------------
def test_weighted_sum_uses_softmax():
    layer_sum = WeightedLayerSum(3)
    assert torch.allclose(layer_sum.weights, torch.full((3,), 1 / 3))
    with torch.no_grad():
        layer_sum.raw_weights.copy_(torch.tensor([-5.0, -1.0, -3.0]))
    weights = layer_sum.weights
    assert (weights > 0).all()
    assert torch.allclose(weights.sum(), torch.tensor(1.0))
    layers = [torch.randn(2, 4, 8) for _ in range(3)]
    expected = sum(w * layer for w, layer in zip(weights, layers))
    assert torch.allclose(layer_sum(layers), expected, atol=1e-6)


def test_weighted_sum_rejects_mismatched_layers():
    with pytest.raises(ValueError, match="different shapes"):
        WeightedLayerSum(2)([torch.zeros(1, 4, 8), torch.zeros(1, 2, 8)])


# ---- CTC head ----------------------------------------------------------------
def test_ctc_head_logits_are_linear_and_upsampled():
    torch.manual_seed(0)
    head = CTCHead(input_dim=16, channels=8, vocab_size=29).eval()
    logits, lengths = head(torch.randn(2, 5, 16), torch.tensor([5, 3]))
    assert logits.shape == (2, 40, 29)
    assert lengths.tolist() == [40, 24]
    # No ReLU on the output (METHOD.md 7.4): negative logits exist.
    assert (logits < 0).any()
    assert isinstance(head.output, torch.nn.Linear)


def test_ctc_head_ignores_padding():
    torch.manual_seed(0)
    head = CTCHead(input_dim=16, channels=8, vocab_size=7).eval()
    short = torch.randn(1, 3, 16)
    batch = torch.cat([short, torch.randn(1, 3, 16)], dim=1)  # garbage pad
    padded = torch.cat([batch, torch.randn(1, 6, 16)], dim=0)
    out_alone, _ = head(short, torch.tensor([3]))
    out_batch, lengths = head(padded, torch.tensor([3, 6]))
    assert torch.allclose(out_batch[0, :24], out_alone[0], atol=1e-5)
    assert lengths.tolist() == [24, 48]


def test_lstm_head_ignores_padding_and_reads_the_yaml_options():
    torch.manual_seed(0)
    head = LSTMCTCHead(input_dim=16, upsample=4, hidden=8, vocab_size=7)
    head.eval()
    short = torch.randn(1, 3, 16)
    batch = torch.cat([short, torch.randn(1, 3, 16)], dim=1)  # garbage pad
    padded = torch.cat([batch, torch.randn(1, 6, 16)], dim=0)
    out_alone, _ = head(short, torch.tensor([3]))
    out_batch, lengths = head(padded, torch.tensor([3, 6]))
    # Bidirectional: the backward pass must start at the true last frame.
    assert torch.allclose(out_batch[0, :12], out_alone[0], atol=1e-5)
    assert lengths.tolist() == [12, 24]
    built = build_ctc_head("lstm", 16, 4, 7, 0.1, channels=8, num_conv=2)
    assert (built.lstm.hidden_size, built.lstm.num_layers) == (8, 2)


# ---- Loss and decoding -------------------------------------------------------
def test_ctc_loss_uses_true_lengths():
    torch.manual_seed(0)
    logits = torch.randn(2, 30, 6)
    targets = torch.tensor([[1, 2, 3, 4], [5, 1, 0, 0]])
    lengths, target_lengths = torch.tensor([30, 12]), torch.tensor([4, 2])
    batch = ctc_loss(logits, lengths, targets, target_lengths, reduction="none")
    alone = ctc_loss(
        logits[1:, :12],
        torch.tensor([12]),
        targets[1:, :2],
        torch.tensor([2]),
        reduction="none",
    )
    assert torch.allclose(batch[1], alone[0], atol=1e-5)
    # Padded lengths (what the reference does) would give another loss.
    padded = ctc_loss(
        logits[1:],
        torch.tensor([30]),
        targets[1:, :2],
        torch.tensor([2]),
        reduction="none",
    )
    assert not torch.allclose(padded, alone, atol=1e-3)
    mean = ctc_loss(logits, lengths, targets, target_lengths)
    assert torch.allclose(mean, (batch / target_lengths).mean())


def test_greedy_decode_collapses_blanks_and_repeats():
    # blank=0: "a a _ a b b _ c" -> a a b c; padding frames are ignored.
    frames = torch.tensor(
        [[1, 1, 0, 1, 2, 2, 0, 3, 3, 3], [2, 0, 2, 2, 0, 0, 1, 1, 1, 1]]
    )
    logits = F.one_hot(frames, 4).float() * 5 - 2
    hyps = greedy_decode(logits, torch.tensor([10, 6]))
    assert hyps == [[1, 1, 2, 3], [2, 2]]
    vocab = CharVocabulary()
    # "A", "A", "|", "B" collapse to "A|B" -> "A B".
    ids = torch.tensor([[3, 3, 0, 3, 1, 0, 4, 4]])
    assert (
        vocab.decode(
            greedy_decode(F.one_hot(ids, 29).float(), torch.tensor([8]))[0]
        )
        == "AA B"
    )


def test_beam_search_with_char_vocabulary():
    from speechbrain.decoders.ctc import CTCBeamSearcher

    vocab = CharVocabulary()
    searcher = CTCBeamSearcher(
        blank_index=0,
        vocab_list=vocab.ctc_vocab_list(),
        space_token=" ",
        beam_size=5,
    )
    ids = [0] + vocab.encode("HI YO") + [0]
    frames = torch.tensor([[i for i in ids for _ in range(2)]])
    log_probs = torch.log_softmax(F.one_hot(frames, 29).float() * 10, dim=-1)
    hyps = searcher(log_probs)
    assert hyps[0][0].text.upper() == "HI YO"


# ---- Whole model -------------------------------------------------------------
def test_frozen_model_keeps_encoder_eval_and_no_grad():
    torch.manual_seed(0)
    encoder = tiny_encoder()
    model = S3LCTC(
        encoder, CTCHead(16, channels=8, vocab_size=29), freeze_encoder=True
    )
    assert not any(p.requires_grad for p in encoder.parameters())
    model.train()
    assert model.training and model.head.training
    assert not encoder.training
    grad_states = []
    encoder.transf2.register_forward_hook(
        lambda *args: grad_states.append(torch.is_grad_enabled())
    )
    logits, _ = model(torch.randn(2, 120, 16), torch.tensor([120, 80]))
    logits.sum().backward()
    assert grad_states == [False]
    assert all(p.grad is None for p in encoder.parameters())
    assert model.layer_sum.raw_weights.grad is not None
    assert model.head.output.weight.grad is not None


def test_model_outputs_do_not_depend_on_batch():
    torch.manual_seed(0)
    model = S3LCTC(tiny_encoder(), CTCHead(16, channels=8, vocab_size=29))
    model.eval()
    feats = torch.randn(2, 160, 16)
    feats[1, 90:] = 0.0
    batch, lengths = model(feats, torch.tensor([160, 90]))
    alone, alone_len = model(feats[1:, :90], torch.tensor([90]))
    assert lengths[1] == alone_len[0]
    assert torch.allclose(batch[1, : alone_len[0]], alone[0], atol=1e-4)


def test_infeasible_targets_are_counted_and_logged(caplog):
    # 4 frames: "AB" fits, "AAB" needs 4 (a blank between the A's) and
    # fits, "ABCDE" does not: its loss is 0 (zero_infinity) and is logged.
    from s3l_plugin import ctc

    ctc._InfeasibleTargets.count, ctc._InfeasibleTargets.next_warning = 0, 1
    logits = torch.randn(3, 4, 6)
    targets = torch.tensor([[1, 2, 0, 0, 0], [1, 1, 2, 0, 0], [1, 2, 3, 4, 5]])
    with caplog.at_level("WARNING", logger="s3l_plugin.ctc"):
        loss = ctc_loss(
            logits,
            torch.tensor([4, 4, 4]),
            targets,
            torch.tensor([2, 3, 5]),
            reduction="none",
        )
    assert loss[2] == 0 and (loss[:2] > 0).all()
    assert ctc._InfeasibleTargets.count == 1
    assert "1 utterance(s) so far" in caplog.text
