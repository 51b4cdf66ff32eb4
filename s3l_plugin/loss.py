"""Frame-level InfoNCE with negatives from the same utterance (METHOD.md 3).

For each valid student frame, the positive is the aligned teacher frame and
the negatives are other teacher frames of the same utterance, drawn
uniformly with replacement. Padding is never a negative and never counted
(METHOD.md 7.1).
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from s3l_plugin.lengths import valid_mask


def sample_negatives(lengths, max_len, num_negatives, generator=None):
    """Indices of negative frames, drawn within each utterance.

    For frame ``t`` of an utterance of ``n`` frames, each index is uniform
    over ``{0, ..., n - 1} \\ {t}`` (with replacement): ``u`` is drawn in
    ``[0, n - 2]`` and shifted past ``t``. Padded query frames get indices
    of valid frames; utterances of one frame (no possible negative) get
    index 0. Both are excluded from the loss.

    Arguments
    ---------
    lengths : torch.Tensor
        (B,) long frame counts.
    max_len : int
        Padded length T.
    num_negatives : int
        Negatives per frame, N.
    generator : torch.Generator, optional
        Source of randomness (on ``lengths``'s device); default the global
        one.

    Returns
    -------
    torch.Tensor
        (B, T, N) long indices into the time axis.

    Example
    -------
    >>> gen = torch.Generator().manual_seed(0)
    >>> negatives = sample_negatives(torch.tensor([3, 2]), 3, 4, gen)
    >>> negatives.shape
    torch.Size([2, 3, 4])
    >>> bool((negatives[0, 0] != 0).all()), negatives[1, :2].tolist()
    (True, [[1, 1, 1, 1], [0, 0, 0, 0]])
    """
    device = lengths.device
    lengths = lengths.long().clamp(0, max_len).view(-1, 1, 1)
    # Candidates per utterance: every frame but the positive (at least one
    # so that degenerate utterances still index validly).
    choices = (lengths - 1).clamp(min=1)
    draws = torch.rand(
        (lengths.shape[0], max_len, num_negatives),
        generator=generator,
        device=device,
    )
    # rand < 1, but rand * n can round up to n in float32.
    offsets = torch.minimum((draws * choices).long(), choices - 1)
    frames = torch.arange(max_len, device=device).view(1, -1, 1)
    indices = offsets + (offsets >= frames).long()
    return torch.minimum(indices, (lengths - 1).clamp(min=0))


@functools.lru_cache(maxsize=8)
def _key_weights(num_inputs, num_keys, device):
    # Integer weights small enough that every float64 partial sum of
    # 16-bit values times weights stays an integer below 2**52: the
    # matrix product is then exact, whatever its summation order.
    bits = 52 - 16 - math.ceil(math.log2(num_inputs))
    if bits < 16:
        raise ValueError(f"Vectors too long to fingerprint: {num_inputs}")
    generator = torch.Generator().manual_seed(0)
    weights = torch.randint(
        1, 2**bits, (num_inputs, num_keys), generator=generator
    )
    return weights.double().to(device)


def frame_keys(frames, num_keys=2):
    """Fingerprints of vectors: equal vectors get exactly equal keys.

    The float32 bits of each vector, cut in 16-bit halves, are combined by
    fixed random integer weights in float64 arithmetic, which is exact here.
    Equal vectors (``-0.0`` counted equal to ``0.0``) therefore always get
    equal keys; two different vectors share all keys with probability below
    ``2 ** (-27 * num_keys)`` for 256-d vectors. Unlike ``torch.unique`` it
    needs no host synchronisation, and unlike a distance it is not subject
    to rounding.

    Arguments
    ---------
    frames : torch.Tensor
        (..., D) vectors (compared as float32).
    num_keys : int
        Independent fingerprints per vector.

    Returns
    -------
    torch.Tensor
        (..., num_keys) float64 keys.

    Example
    -------
    >>> frames = torch.tensor([[1.0, -0.0], [1.0, 0.0], [1.0, 1e-7]])
    >>> keys = frame_keys(frames)
    >>> bool((keys[0] == keys[1]).all()), bool((keys[0] == keys[2]).all())
    (True, False)
    """
    # + 0.0 turns -0.0 into 0.0, which == treats as equal.
    bits = (frames.float() + 0.0).contiguous().view(torch.int32)
    halves = torch.stack((bits & 0xFFFF, (bits >> 16) & 0xFFFF), dim=-1)
    halves = halves.flatten(-2).double()
    return halves @ _key_weights(halves.shape[-1], num_keys, frames.device)


class ContrastiveLoss(nn.Module):
    """InfoNCE over frames, with in-utterance negatives and padding masked.

    Logits are cosine similarities divided by ``temperature``; the positive
    is at index 0. A negative whose target vector equals the positive's
    gets ``-inf`` (it is not a negative). The similarities are computed
    once per utterance as a (T, T) matrix and the negatives' logits
    gathered from it, so the (B, T, N, D) tensor of negative vectors is
    never built. Computed in float32 with autocast off.

    Utterances of a single frame have no possible negative; their frames
    are left out of the average (and of the accuracy) rather than counted
    with a zero loss, which would bias it down. A batch with no valid frame
    gives loss 0 (with a graph) and accuracy 0.

    Arguments
    ---------
    num_negatives : int
        Negatives per frame.
    temperature : float
        Divides the cosine similarities.

    Example
    -------
    >>> loss_fn = ContrastiveLoss(num_negatives=10)
    >>> targets = torch.randn(2, 20, 8)
    >>> predictions = targets.clone().requires_grad_()
    >>> loss, accuracy = loss_fn(predictions, targets, torch.tensor([20, 12]))
    >>> loss.backward()
    >>> float(accuracy)
    1.0
    """

    def __init__(self, num_negatives=100, temperature=0.5):
        super().__init__()
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1: {num_negatives}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0: {temperature}")
        self.num_negatives = num_negatives
        self.temperature = temperature

    def logits(self, predictions, targets, lengths, generator=None):
        """Logits of every frame's positive and negatives.

        Arguments
        ---------
        predictions : torch.Tensor
            (B, T, D) student predictions.
        targets : torch.Tensor
            (B, T, D) teacher targets, aligned frame by frame; detached.
        lengths : torch.Tensor
            (B,) valid frames per utterance.
        generator : torch.Generator, optional
            For drawing the negatives (on the predictions' device).

        Returns
        -------
        logits : torch.Tensor
            (B, T, 1 + N) float32, positive first.
        valid : torch.Tensor
            (B, T) bool: frames that count (inside an utterance of at
            least two frames).

        Example
        -------
        >>> loss_fn = ContrastiveLoss(num_negatives=3)
        >>> frames = torch.randn(1, 4, 8)
        >>> logits, valid = loss_fn.logits(frames, frames, torch.tensor([3]))
        >>> logits.shape, valid.tolist()
        (torch.Size([1, 4, 4]), [[True, True, True, False]])
        >>> round(float(logits[0, 0, 0]), 4)  # cos = 1, / 0.5
        2.0
        """
        if predictions.shape != targets.shape:
            raise ValueError(
                "predictions and targets must have the same shape, got "
                f"{tuple(predictions.shape)} and {tuple(targets.shape)}"
            )
        max_len = predictions.shape[1]
        lengths = lengths.to(predictions.device).long().clamp(max=max_len)
        targets = targets.detach()
        with torch.autocast(predictions.device.type, enabled=False):
            predicted = F.normalize(predictions.float(), dim=-1)
            target = F.normalize(targets.float(), dim=-1)
            # similarity[b, t, j]: student frame t against teacher frame j.
            similarity = torch.bmm(predicted, target.transpose(1, 2))
        negatives = sample_negatives(
            lengths, max_len, self.num_negatives, generator
        )
        positive = similarity.diagonal(dim1=1, dim2=2).unsqueeze(-1)
        negative = similarity.gather(2, negatives)
        negative = negative.masked_fill(
            _same_as_positive(targets, negatives), float("-inf")
        )
        logits = torch.cat((positive, negative), dim=-1) / self.temperature
        valid = valid_mask(lengths, max_len) & (lengths >= 2).unsqueeze(1)
        return logits, valid

    def forward(
        self, predictions, targets, lengths, generator=None, frame_mask=None
    ):
        """Mean InfoNCE loss and accuracy over the valid frames.

        Arguments
        ---------
        predictions : torch.Tensor
            (B, T, D) student predictions.
        targets : torch.Tensor
            (B, T, D) teacher targets (no gradient flows into them).
        lengths : torch.Tensor
            (B,) valid frames per utterance.
        generator : torch.Generator, optional
            For drawing the negatives.
        frame_mask : torch.Tensor, optional
            (B, T) bool: only these frames are predicted (their loss and
            accuracy count); negatives still come from every valid frame.

        Returns
        -------
        loss : torch.Tensor
            Scalar float32, cross-entropy with the positive as the class.
        accuracy : torch.Tensor
            Scalar, fraction of valid frames whose positive logit is
            strictly the largest (ties count as wrong).

        Example
        -------
        >>> loss_fn = ContrastiveLoss(num_negatives=5)
        >>> predictions = torch.randn(2, 6, 4, requires_grad=True)
        >>> loss, accuracy = loss_fn(
        ...     predictions, torch.randn(2, 6, 4), torch.tensor([6, 3])
        ... )
        >>> loss.shape, bool(loss > 0), 0 <= float(accuracy) <= 1
        (torch.Size([]), True, True)
        """
        logits, valid = self.logits(predictions, targets, lengths, generator)
        if frame_mask is not None:
            valid = valid & frame_mask.to(valid.device)
        frame_loss = torch.logsumexp(logits, dim=-1) - logits[..., 0]
        count = valid.sum().clamp(min=1)
        loss = torch.where(valid, frame_loss, 0.0).sum() / count
        with torch.no_grad():
            correct = logits[..., 0] > logits[..., 1:].amax(dim=-1)
            accuracy = (correct & valid).sum() / count
        return loss, accuracy


def _same_as_positive(targets, negatives):
    """(B, T, N) bool: negative target vector equal to the positive's."""
    keys = frame_keys(targets)
    batch, max_len, num_negatives = negatives.shape
    flat = negatives.view(batch, max_len * num_negatives)
    same = None
    for key in keys.unbind(-1):
        equal = key.gather(1, flat).view(negatives.shape) == key.unsqueeze(-1)
        same = equal if same is None else same & equal
    return same
