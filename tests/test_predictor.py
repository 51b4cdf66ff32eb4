"""Predictor: 'same' conv stack with a linear last layer (METHOD.md 3, 7.4)."""

import torch
from torch import nn

from s3l_plugin.conv import ConvBlock
from s3l_plugin.predictor import Predictor


def test_default_structure():
    predictor = Predictor()
    first, second, last = predictor.layers.layers
    assert isinstance(first, ConvBlock) and isinstance(second, ConvBlock)
    assert [first.conv.kernel_size[0], second.conv.kernel_size[0]] == [5, 5]
    assert type(last) is nn.Conv1d and last.kernel_size == (1,)
    assert last.out_channels == 256
    convs = [m for m in predictor.modules() if isinstance(m, nn.Conv1d)]
    assert len(convs) == 3 and all(conv.bias is None for conv in convs)


def test_last_layer_is_linear():
    torch.manual_seed(0)
    predictor = Predictor(16, (16, 16, 16), (5, 5, 1)).eval()
    x = torch.randn(2, 12, 16)
    lengths = torch.tensor([12, 12])
    y = predictor(x, lengths)
    assert (y < 0).any()  # a final ReLU could not produce this
    # Linear in its input: scaling the last layer scales the output.
    with torch.no_grad():
        predictor.layers.layers[-1].weight.mul_(-2.0)
    torch.testing.assert_close(predictor(x, lengths), -2.0 * y)


def test_same_length_and_batch_invariance():
    torch.manual_seed(0)
    predictor = Predictor(16, (16, 16, 16), (5, 5, 1)).eval()
    x = torch.randn(2, 12, 16)
    x[1, 7:] = 50.0  # garbage padding
    y = predictor(x, torch.tensor([12, 7]))
    assert y.shape == (2, 12, 16)
    assert (y[1, 7:] == 0).all()
    alone = predictor(x[1:2, :7], torch.tensor([7]))
    torch.testing.assert_close(y[1, :7], alone[0], atol=1e-6, rtol=0)


def test_dropout_only_in_training():
    predictor = Predictor(16, (16, 16, 16), (5, 5, 1), dropout=0.5)
    x, lengths = torch.randn(2, 12, 16), torch.tensor([12, 9])
    predictor.eval()
    assert torch.equal(predictor(x, lengths), predictor(x, lengths))
    predictor.train()
    assert not torch.equal(predictor(x, lengths), predictor(x, lengths))
