"""One length and mask convention (s3l_plugin.lengths)."""

import torch
from speechbrain.dataio.dataio import relative_time_to_absolute

from s3l_plugin.lengths import (
    padding_mask,
    relative_to_absolute,
    valid_mask,
    zero_padding,
)


def test_relative_to_absolute_rounds_as_speechbrain():
    batch = torch.zeros(4, 16003)
    rel = torch.tensor([1.0, 0.5, 0.2501, 1 / 3])
    expected = relative_time_to_absolute(batch, rel, rate=1).long()
    assert torch.equal(relative_to_absolute(rel, 16003), expected)


def test_masks_are_complements_and_bool():
    lengths = torch.tensor([3, 0, 5])
    valid, padding = valid_mask(lengths, 5), padding_mask(lengths, 5)
    assert valid.dtype == padding.dtype == torch.bool
    assert torch.equal(valid, ~padding)
    assert valid.sum(1).tolist() == [3, 0, 5]
    assert padding_mask(lengths).shape == (3, 5)


def test_zero_padding_any_trailing_dims():
    x = torch.ones(2, 4, 3, 2)
    out = zero_padding(x, torch.tensor([4, 1]))
    assert out[0].eq(1).all() and out[1, :1].eq(1).all()
    assert out[1, 1:].eq(0).all()
    assert zero_padding(torch.ones(2, 3), torch.tensor([1, 3])).tolist() == [
        [1.0, 0.0, 0.0],
        [1.0, 1.0, 1.0],
    ]
