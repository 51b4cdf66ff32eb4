"""CTC speech recognition on top of the S3L encoder (METHOD.md 6).

The representation is a learned, softmax-normalised weighted sum of the last
transformer layers (512-d, 80 ms), minus its utterance mean (METHOD.md 8.2);
a head up-samples it back to 10 ms frames of linear logits over the
vocabulary: ``LinearCTCHead`` (the default) or the paper's convolutional
``CTCHead``. Lengths are absolute frame counts throughout: padding never
enters the loss.

Authors
 * S3L contributors 2025
"""

import logging

import torch
import torch.nn.functional as F
from speechbrain.decoders.ctc import filter_ctc_output
from torch import nn

from s3l_plugin.conv import conv1d_frames
from s3l_plugin.lengths import masked_mean, zero_padding
from s3l_plugin.runtime import DeviceResolved, check_choice, resolve_conv_impl

logger = logging.getLogger(__name__)


class WeightedLayerSum(nn.Module):
    """Learned weighted sum of layer outputs, weights ``softmax(raw)``.

    The weights are positive and sum to 1 whatever the raw parameters (the
    reference divides by their sum, which can be ~0 or negative: METHOD.md 7.5).
    They start equal.

    Arguments
    ---------
    num_layers : int
        Number of layers summed.

    Example
    -------
    >>> layer_sum = WeightedLayerSum(2)
    >>> layer_sum.weights.tolist()
    [0.5, 0.5]
    >>> layer_sum([torch.ones(1, 3, 4), torch.zeros(1, 3, 4)])[0, 0, 0].item()
    0.5
    """

    def __init__(self, num_layers=2):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.raw_weights = nn.Parameter(torch.zeros(num_layers))

    @property
    def weights(self):
        """The (num_layers,) normalised weights."""
        return torch.softmax(self.raw_weights.float(), dim=0)

    def forward(self, layers):
        """Sums the layers.

        Arguments
        ---------
        layers : list of torch.Tensor
            ``num_layers`` tensors of the same shape (B, T, D).

        Returns
        -------
        torch.Tensor
            (B, T, D) weighted sum.
        """
        if len(layers) != self.num_layers:
            raise ValueError(
                f"WeightedLayerSum expects {self.num_layers} layers, got "
                f"{len(layers)}"
            )
        shapes = {tuple(layer.shape) for layer in layers}
        if len(shapes) != 1:
            raise ValueError(
                "Layers with different shapes cannot be summed (layers at "
                f"different frame rates?): {sorted(shapes)}"
            )
        stacked = torch.stack(list(layers), dim=0)
        weights = self.weights.to(stacked.dtype).view(-1, 1, 1, 1)
        return (weights * stacked).sum(dim=0)


class _ConvLNBlock(nn.Module):
    """Conv1d ('same') -> LayerNorm -> ReLU -> dropout, padding masked."""

    def __init__(self, in_channels, out_channels, kernel_size, dropout):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2
        )
        self.norm = nn.LayerNorm(out_channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, lengths, conv_impl):
        """(B, T, C_in) -> (B, T, C_out); padded inputs zeroed first."""
        x = conv1d_frames(zero_padding(x, lengths), self.conv, conv_impl)
        return self.dropout(torch.relu(self.norm(x)))


class _UpsamplingHead(nn.Module):
    """What the CTC heads share: ``upsample`` output frames per input."""

    def output_lengths(self, lengths):
        """Output frames for ``lengths`` input frames (``upsample`` x).

        Arguments
        ---------
        lengths : torch.Tensor
            (B,) long input frame counts.

        Returns
        -------
        torch.Tensor
            (B,) long output frame counts.

        Example
        -------
        >>> LinearCTCHead(16, upsample=8).output_lengths(torch.tensor([3, 1]))
        tensor([24,  8])
        """
        return lengths.long() * self.upsample


class LinearCTCHead(_UpsamplingHead):
    """Up-sampling linear CTC head: ``upsample`` frames of logits per frame.

    Dropout, then one Linear ``input_dim -> upsample * vocab_size`` whose
    output is read as ``upsample`` consecutive frames of linear logits
    (80 ms -> 10 ms with ``upsample`` 8). The default head of the recipes
    (METHOD.md 8.2): with the centred representation of :class:`S3LCTC` it
    leaves the CTC blank plateau several times sooner than the paper's
    convolutional :class:`CTCHead` (an 8-utterance overfit check: train
    loss below 1.0 after 12-17 epochs over 3 seeds, against still 2.3-2.7
    after 40 for the convolutional head). Frame-independent, so padding
    never reaches a valid frame.

    Arguments
    ---------
    input_dim : int
        Size of the input frames.
    upsample : int
        Output frames per input frame. Characters need it: at 80 ms, most
        utterances have more characters than frames (CTC cannot align).
    vocab_size : int
        Output classes, blank included.
    dropout : float
        Dropout on the input frames.

    Example
    -------
    >>> head = LinearCTCHead(input_dim=16, upsample=4, vocab_size=5).eval()
    >>> logits, lengths = head(torch.randn(2, 3, 16), torch.tensor([3, 2]))
    >>> logits.shape, lengths.tolist()
    (torch.Size([2, 12, 5]), [12, 8])
    """

    def __init__(self, input_dim=512, upsample=8, vocab_size=29, dropout=0.1):
        super().__init__()
        self.upsample = upsample
        self.vocab_size = vocab_size
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(input_dim, upsample * vocab_size)

    def forward(self, x, lengths):
        """Maps encoder frames to ``upsample`` frames of logits each.

        Arguments
        ---------
        x : torch.Tensor
            (B, T, input_dim) encoder frames.
        lengths : torch.Tensor
            (B,) long valid frames.

        Returns
        -------
        logits : torch.Tensor
            (B, upsample * T, vocab_size) linear logits.
        out_lengths : torch.Tensor
            (B,) long valid output frames (``upsample * lengths``).
        """
        batch, frames, _ = x.shape
        logits = self.output(self.dropout(x))
        # (B, T, upsample * V) -> (B, upsample * T, V): input frame t gives
        # output frames upsample*t ... upsample*t + upsample - 1.
        logits = logits.reshape(batch, frames * self.upsample, self.vocab_size)
        return logits, self.output_lengths(lengths.to(x.device))


class CTCHead(_UpsamplingHead):
    """Up-sampling convolutional CTC head, the paper's (METHOD.md 6).

    Conv1d ``input_dim -> upsample * channels`` (kernel ``kernel_size``,
    'same'), reshaped to ``upsample`` times more frames (80 ms -> 10 ms),
    LayerNorm, ReLU, dropout; then ``num_conv`` blocks of Conv1d
    (``channels``, 'same') -> LayerNorm -> ReLU -> dropout; then a Linear
    to ``vocab_size`` LINEAR logits (no ReLU: METHOD.md 7.4). Padded frames are
    zeroed before every convolution, so an utterance's logits do not
    depend on its batch.

    Arguments
    ---------
    input_dim : int
        Size of the input frames.
    upsample : int
        Output frames per input frame.
    channels : int
        Channels of the up-sampled frames and the convolutions.
    kernel_size : int
        Kernel of every convolution (odd).
    num_conv : int
        Convolution blocks after the up-sampling.
    dropout : float
        Dropout after each block.
    vocab_size : int
        Output classes, blank included.
    conv_impl : str
        ``"auto"``, ``"fft"`` (both: unfolded matmuls) or ``"direct"``
        (``nn.Conv1d``), see ``s3l_plugin.runtime``.

    Example
    -------
    >>> head = CTCHead(input_dim=16, channels=8, vocab_size=5).eval()
    >>> logits, lengths = head(torch.randn(2, 3, 16), torch.tensor([3, 2]))
    >>> logits.shape, lengths.tolist()
    (torch.Size([2, 24, 5]), [24, 16])
    """

    def __init__(
        self,
        input_dim=512,
        upsample=8,
        channels=512,
        kernel_size=5,
        num_conv=2,
        dropout=0.1,
        vocab_size=29,
        conv_impl="auto",
    ):
        super().__init__()
        self.conv_impl = check_choice("conv_impl", conv_impl)
        self.conv_plan = DeviceResolved(resolve_conv_impl)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.upsample = upsample
        self.channels = channels
        self.vocab_size = vocab_size
        self.upsample_conv = nn.Conv1d(
            input_dim,
            upsample * channels,
            kernel_size,
            padding=kernel_size // 2,
        )
        self.upsample_norm = nn.LayerNorm(channels)
        self.upsample_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            _ConvLNBlock(channels, channels, kernel_size, dropout)
            for _ in range(num_conv)
        )
        self.output = nn.Linear(channels, vocab_size)

    def forward(self, x, lengths):
        """Maps encoder frames to per-10-ms logits.

        Arguments
        ---------
        x : torch.Tensor
            (B, T, input_dim) encoder frames.
        lengths : torch.Tensor
            (B,) long valid frames.

        Returns
        -------
        logits : torch.Tensor
            (B, upsample * T, vocab_size) linear logits.
        out_lengths : torch.Tensor
            (B,) long valid output frames (``upsample * lengths``).
        """
        lengths = lengths.to(x.device).long()
        batch, frames, _ = x.shape
        impl = self.conv_plan(self.conv_impl, x.device).stack
        y = conv1d_frames(zero_padding(x, lengths), self.upsample_conv, impl)
        # (B, T, upsample * C) -> (B, upsample * T, C): input frame t
        # becomes output frames upsample*t ... upsample*t+7.
        y = y.reshape(batch, frames * self.upsample, self.channels)
        y = self.upsample_dropout(torch.relu(self.upsample_norm(y)))
        out_lengths = self.output_lengths(lengths)
        for block in self.blocks:
            y = block(y, out_lengths, impl)
        return self.output(y), out_lengths


class LSTMCTCHead(LinearCTCHead):
    """Bidirectional-LSTM CTC head: an LSTM over the frames, then linear.

    Dropout, ``num_layers`` bidirectional LSTM layers of ``hidden`` units
    per direction over the valid frames (packed: padding never reaches a
    valid frame), then :class:`LinearCTCHead` on the LSTM's output: the
    recurrent downstream model of the SUPERB ASR protocol, small.

    Arguments
    ---------
    input_dim : int
        Size of the input frames.
    upsample : int
        Output frames per input frame.
    hidden : int
        LSTM units per direction.
    num_layers : int
        LSTM layers.
    dropout : float
        Dropout on the LSTM's input and output.
    vocab_size : int
        Output classes, blank included.

    Example
    -------
    >>> head = LSTMCTCHead(input_dim=16, upsample=4, hidden=8,
    ...                    vocab_size=5).eval()
    >>> logits, lengths = head(torch.randn(2, 3, 16), torch.tensor([3, 2]))
    >>> logits.shape, lengths.tolist()
    (torch.Size([2, 12, 5]), [12, 8])
    """

    def __init__(
        self,
        input_dim=512,
        upsample=8,
        hidden=256,
        num_layers=1,
        dropout=0.1,
        vocab_size=29,
    ):
        super().__init__(2 * hidden, upsample, vocab_size, dropout)
        self.lstm = nn.LSTM(
            input_dim,
            hidden,
            num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )

    def forward(self, x, lengths):
        """Maps encoder frames to ``upsample`` frames of logits each.

        Arguments
        ---------
        x : torch.Tensor
            (B, T, input_dim) encoder frames.
        lengths : torch.Tensor
            (B,) long valid frames.

        Returns
        -------
        logits : torch.Tensor
            (B, upsample * T, vocab_size) linear logits.
        out_lengths : torch.Tensor
            (B,) long valid output frames (``upsample * lengths``).
        """
        packed = nn.utils.rnn.pack_padded_sequence(
            self.dropout(x),
            lengths.cpu().clamp(min=1),
            batch_first=True,
            enforce_sorted=False,
        )
        y, _ = nn.utils.rnn.pad_packed_sequence(
            self.lstm(packed)[0], batch_first=True, total_length=x.shape[1]
        )
        return super().forward(y, lengths)


# ``head_type`` of the finetuning YAMLs -> head class.
CTC_HEADS = {"linear": LinearCTCHead, "conv": CTCHead, "lstm": LSTMCTCHead}


def build_ctc_head(
    head_type,
    input_dim,
    upsample,
    vocab_size,
    dropout,
    channels=512,
    kernel_size=5,
    num_conv=2,
    conv_impl="auto",
):
    """The CTC head that ``head_type`` names, from the YAML's head options.

    HyperPyYAML's overrides merge into a ``!new:`` mapping and cannot
    change its class, so the finetuning YAMLs build their head through
    this function: ``--head_type=conv`` on the command line switches to
    the paper's head.

    Arguments
    ---------
    head_type : str
        ``"linear"`` (:class:`LinearCTCHead`) or ``"conv"``
        (:class:`CTCHead`, the paper's).
    input_dim : int
        Size of the encoder frames.
    upsample : int
        Output frames per encoder frame.
    vocab_size : int
        Output classes, blank included.
    dropout : float
        The head's dropout.
    channels : int
        :class:`CTCHead` only: channels of its convolutions.
    kernel_size : int
        :class:`CTCHead` only: kernel of its convolutions (odd).
    num_conv : int
        :class:`CTCHead` only: convolution blocks after the up-sampling.
    conv_impl : str
        :class:`CTCHead` only: how its convolutions run.

    Returns
    -------
    LinearCTCHead or CTCHead

    Raises
    ------
    ValueError
        For an unknown ``head_type``.

    Example
    -------
    >>> type(build_ctc_head("conv", 16, 4, 5, 0.1, channels=8)).__name__
    'CTCHead'
    >>> build_ctc_head("rnn", 16, 4, 5, 0.1)
    Traceback (most recent call last):
    ...
    ValueError: head_type must be one of 'linear', 'conv', 'lstm'; got 'rnn'
    """
    if head_type not in CTC_HEADS:
        choices = ", ".join(repr(name) for name in CTC_HEADS)
        raise ValueError(
            f"head_type must be one of {choices}; got {head_type!r}"
        )
    options = {
        "input_dim": input_dim,
        "upsample": upsample,
        "vocab_size": vocab_size,
        "dropout": dropout,
    }
    if head_type == "conv":
        options.update(
            channels=channels,
            kernel_size=kernel_size,
            num_conv=num_conv,
            conv_impl=conv_impl,
        )
    elif head_type == "lstm":
        options.update(hidden=channels, num_layers=num_conv)
    return CTC_HEADS[head_type](**options)


class S3LCTC(nn.Module):
    """Encoder + weighted sum of its last layers + CTC head, one module.

    One module so that DistributedDataParallel sees the whole forward pass.
    The encoder's contrastive projection ``proj`` is unused and frozen.
    With ``freeze_encoder`` the encoder takes no gradient
    (``requires_grad`` False), runs under ``no_grad`` and stays in eval mode
    whatever ``train()`` asks (SpeechBrain calls ``train()`` every epoch).

    Arguments
    ---------
    encoder : s3l_plugin.encoder.S3LEncoder
        The (pretrained) encoder.
    head : CTCHead
        The CTC head; its ``input_dim`` is the encoder's ``d_model``.
    num_layers : int
        How many of the last transformer layers are summed.
    freeze_encoder : bool
        Train only the layer weights and the head.
    center : bool
        Subtract each utterance's mean over its valid frames from the
        representation before the head (METHOD.md 8.2). A component that
        is constant over time offers CTC's first "all blank" solution an
        easy path; without it the encoder's features collapse over time
        and training sits on the blank plateau far longer.

    Example
    -------
    >>> from s3l_plugin.encoder import S3LEncoder, architecture
    >>> encoder = S3LEncoder(**dict(architecture("toy"), transf2_layers=2))
    >>> model = S3LCTC(encoder, CTCHead(16, channels=8, vocab_size=5),
    ...                freeze_encoder=True)
    >>> logits, lengths = model(torch.randn(2, 101, 16), torch.tensor([101, 60]))
    >>> logits.shape, lengths.tolist()
    (torch.Size([2, 80, 5]), [80, 32])
    >>> model.train().encoder.training
    False
    """

    def __init__(
        self, encoder, head, num_layers=2, freeze_encoder=False, center=True
    ):
        super().__init__()
        self.encoder = encoder
        self.center = center
        self.layer_sum = WeightedLayerSum(num_layers)
        self.head = head
        self.freeze_encoder = freeze_encoder
        # The contrastive projection is not used here; frozen, it takes no
        # optimizer state and DDP needs no find_unused_parameters.
        if hasattr(self.encoder, "proj"):
            self.encoder.proj.requires_grad_(False)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    @property
    def features(self):
        """The encoder's feature extractor (waveforms -> log-mels)."""
        return self.encoder.features

    def train(self, mode=True):
        """Sets the mode; a frozen encoder stays in eval mode.

        Arguments
        ---------
        mode : bool
            Training mode.

        Returns
        -------
        S3LCTC
            self.
        """
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, feats, feat_lens):
        """Logits for every 10 ms frame.

        Arguments
        ---------
        feats : torch.Tensor
            (B, T, n_mels) features (possibly SpecAugmented).
        feat_lens : torch.Tensor
            (B,) long valid feature frames.

        Returns
        -------
        logits : torch.Tensor
            (B, T_out, vocab_size) linear logits.
        lengths : torch.Tensor
            (B,) long valid output frames.
        """
        if self.freeze_encoder:
            with torch.no_grad():
                encoded = self.encoder.encode(
                    feats, feat_lens, return_layers=True
                )
        else:
            encoded = self.encoder.encode(feats, feat_lens, return_layers=True)
        x, lengths = _sum_last_layers(encoded, self.layer_sum)
        if self.center:
            x = zero_padding(x - masked_mean(x, lengths), lengths)
        return self.head(x, lengths)


def _sum_last_layers(encoded, layer_sum):
    """Weighted sum of the last ``layer_sum.num_layers`` layers."""
    num = layer_sum.num_layers
    if num > len(encoded.layers):
        raise ValueError(
            f"Summing the last {num} layers of an encoder that has only "
            f"{len(encoded.layers)} transformer layers"
        )
    lengths = encoded.layer_lengths[-num:]
    if any(not torch.equal(lens, lengths[-1]) for lens in lengths):
        raise ValueError(
            f"The last {num} encoder layers run at different frame rates "
            "(some belong to transf1): sum fewer layers"
        )
    return layer_sum(encoded.layers[-num:]), lengths[-1]


def ctc_loss(
    logits, lengths, targets, target_lengths, blank=0, reduction="mean"
):
    """CTC loss with absolute (true, unpadded) lengths.

    Log-softmax is taken in float32 (also under bf16 autocast). Padded
    frames and padded targets never enter the loss: an utterance's loss is
    the same alone or padded in a batch. An infeasible target (more
    tokens, plus a blank between repeats, than frames) would give an
    infinite loss; it gives 0 instead (``zero_infinity``), and the
    utterances concerned are counted and logged (a warning with the running
    count, at the first and then at each doubling): at 80 ms frames without
    an up-sampling head, character targets of ordinary speech are all
    infeasible and the loss would silently be 0.0.

    Arguments
    ---------
    logits : torch.Tensor
        (B, T, V) linear logits.
    lengths : torch.Tensor
        (B,) long valid frames.
    targets : torch.Tensor
        (B, L) token ids, padded.
    target_lengths : torch.Tensor
        (B,) long valid tokens.
    blank : int
        Blank index.
    reduction : str
        ``"mean"`` (each loss divided by its target length, then averaged
        over the batch: torch's convention), ``"sum"`` or ``"none"``.

    Returns
    -------
    torch.Tensor
        Scalar, or (B,) for ``"none"``.

    Example
    -------
    >>> logits = torch.randn(2, 10, 5)
    >>> targets = torch.tensor([[1, 2, 3], [4, 0, 0]])
    >>> loss = ctc_loss(logits, torch.tensor([10, 6]), targets,
    ...                 torch.tensor([3, 1]), reduction="none")
    >>> alone = ctc_loss(logits[1:, :6], torch.tensor([6]), targets[1:, :1],
    ...                  torch.tensor([1]), reduction="none")
    >>> torch.allclose(loss[1], alone[0])
    True
    """
    _count_infeasible(lengths, targets, target_lengths)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return F.ctc_loss(
        log_probs.transpose(0, 1),
        targets.long(),
        lengths.long(),
        target_lengths.long(),
        blank=blank,
        reduction=reduction,
        zero_infinity=True,
    )


class _InfeasibleTargets:
    """Running count of infeasible CTC targets, for the warnings."""

    count = 0
    next_warning = 1


def _count_infeasible(lengths, targets, target_lengths):
    """Counts (and logs) utterances whose targets cannot fit their frames."""
    target_lengths = target_lengths.long().to(targets.device)
    positions = torch.arange(1, targets.shape[1], device=targets.device)
    repeats = (targets[:, 1:] == targets[:, :-1]) & (
        positions < target_lengths.unsqueeze(1)
    )
    needed = target_lengths + repeats.sum(dim=1)
    infeasible = int((needed > lengths.to(needed.device)).sum())
    if not infeasible:
        return
    _InfeasibleTargets.count += infeasible
    if _InfeasibleTargets.count >= _InfeasibleTargets.next_warning:
        _InfeasibleTargets.next_warning = 2 * _InfeasibleTargets.count
        logger.warning(
            "CTC: %d utterance(s) so far have more target tokens than output "
            "frames (loss 0 for them, nothing learned): use an up-sampling "
            "head (LinearCTCHead) or subword units",
            _InfeasibleTargets.count,
        )


def ctc_feasible(tokens, frames):
    """Whether a CTC alignment of ``tokens`` fits in ``frames`` frames.

    Each token needs a frame, and a repeated token a blank between.

    Arguments
    ---------
    tokens : list of int
        Target ids.
    frames : int
        Output frames.

    Returns
    -------
    bool

    Example
    -------
    >>> ctc_feasible([1, 1, 2], 3), ctc_feasible([1, 1, 2], 4)
    (False, True)
    """
    repeats = sum(a == b for a, b in zip(tokens, tokens[1:]))
    return len(tokens) + repeats <= frames


def greedy_decode(logits, lengths, blank=0):
    """Best-path CTC decoding: argmax, collapse repeats, drop blanks.

    Over each utterance's valid frames only; the collapsing is
    SpeechBrain's ``filter_ctc_output``.

    Arguments
    ---------
    logits : torch.Tensor
        (B, T, V) logits or log-probabilities.
    lengths : torch.Tensor
        (B,) long valid frames.
    blank : int
        Blank index.

    Returns
    -------
    list of list of int
        Token ids per utterance.

    Example
    -------
    >>> ids = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 0]])
    >>> logits = F.one_hot(ids, 3).float()
    >>> greedy_decode(logits, torch.tensor([8])), greedy_decode(logits, [4])
    ([[1, 1, 2]], [[1, 1]])
    """
    best = logits.detach().argmax(dim=-1).cpu().tolist()
    return [
        filter_ctc_output(path[:length], blank_id=blank)
        for path, length in zip(best, torch.as_tensor(lengths).tolist())
    ]
