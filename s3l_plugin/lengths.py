"""Lengths and padding masks: one convention for the whole model.

Inside the model every length is an absolute count (``torch.long``, one per
utterance) of valid frames or samples; padding follows them. SpeechBrain's
relative lengths (in (0, 1], the longest 1.0) are converted once, where a
waveform batch enters (``relative_to_absolute``). Masks are ``bool``:
``padding_mask`` is True on padding (the convention of SpeechBrain's and
torch's ``key_padding_mask``), ``valid_mask`` its complement.

Authors
 * S3L contributors 2025
"""

import torch
from speechbrain.dataio.dataio import length_to_mask


def relative_to_absolute(rel_lens, max_len):
    """Absolute lengths from SpeechBrain's relative lengths.

    Rounds ``rel_lens * max_len`` as ``speechbrain.dataio`` does.

    Arguments
    ---------
    rel_lens : torch.Tensor
        (B,) lengths relative to ``max_len``, in (0, 1].
    max_len : int
        Padded length of the batch.

    Returns
    -------
    torch.Tensor
        (B,) long absolute lengths.

    Example
    -------
    >>> relative_to_absolute(torch.tensor([1.0, 0.5, 0.26]), 10)
    tensor([10,  5,  3])
    """
    return torch.round(rel_lens.float() * max_len).long()


def valid_mask(lengths, max_len=None):
    """(B, max_len) bool, True on the first ``lengths[b]`` frames.

    Arguments
    ---------
    lengths : torch.Tensor
        (B,) long absolute lengths.
    max_len : int, optional
        Padded length; defaults to ``lengths.max()``.

    Returns
    -------
    torch.Tensor

    Example
    -------
    >>> valid_mask(torch.tensor([2, 3]), 3).tolist()
    [[True, True, False], [True, True, True]]
    """
    return length_to_mask(lengths, max_len, dtype=torch.bool)


def padding_mask(lengths, max_len=None):
    """(B, max_len) bool, True where the frame is padding.

    Arguments
    ---------
    lengths : torch.Tensor
        (B,) long absolute lengths.
    max_len : int, optional
        Padded length; defaults to ``lengths.max()``.

    Returns
    -------
    torch.Tensor

    Example
    -------
    >>> padding_mask(torch.tensor([3, 1]), 4)
    tensor([[False, False, False,  True],
            [False,  True,  True,  True]])
    """
    if max_len is None:
        max_len = int(lengths.max())
    # Not ~length_to_mask: one comparison instead of three ops, for the
    # ~40 masks of a training step (no negation, no expand).
    frames = torch.arange(max_len, device=lengths.device)
    return frames >= lengths.unsqueeze(-1)


def zero_padding(x, lengths):
    """Zeroes the frames of a (B, T, ...) batch past each utterance's end.

    Arguments
    ---------
    x : torch.Tensor
        (B, T, ...) padded batch.
    lengths : torch.Tensor
        (B,) long valid frames.

    Returns
    -------
    torch.Tensor
        ``x`` with frames ``t >= lengths[b]`` set to 0.

    Example
    -------
    >>> zero_padding(torch.ones(2, 3, 1), torch.tensor([3, 1])).flatten()
    tensor([1., 1., 1., 1., 0., 0.])
    """
    padding = padding_mask(lengths, x.shape[1])
    return x.masked_fill(padding.view(*padding.shape, *[1] * (x.dim() - 2)), 0)


def masked_mean(x, lengths):
    """Each utterance's mean over its valid frames, per channel.

    Arguments
    ---------
    x : torch.Tensor
        (B, T, C) padded batch (padded frames may hold anything).
    lengths : torch.Tensor
        (B,) long valid frames.

    Returns
    -------
    torch.Tensor
        (B, 1, C) means, the same whatever the padding.

    Example
    -------
    >>> x = torch.tensor([[[1.0], [3.0], [9.0]], [[2.0], [4.0], [6.0]]])
    >>> masked_mean(x, torch.tensor([2, 3])).flatten().tolist()
    [2.0, 4.0]
    """
    count = lengths.to(device=x.device, dtype=x.dtype).clamp(min=1)
    return zero_padding(x, lengths).sum(dim=1, keepdim=True) / count.view(
        -1, 1, 1
    )
