"""Stacks of 1-D convolution blocks over padded (B, T, C) sequences.

Each block is Conv1d (no bias) -> LayerNorm over channels -> ReLU ->
dropout, as in the SPIRAL / S3LSpeech conv stacks and the predictor (METHOD.md 2,
3). Padded frames are zeroed before every convolution, so a 'same'-padded
convolution sees zeros past each utterance's end exactly as it would alone.

The convolutions run as one matrix product over unfolded frames unless
``conv_impl`` is ``"direct"`` (``s3l_plugin.runtime``): the inputs are (B, T, C) already, so this skips
the two transposes around ``nn.Conv1d`` and oneDNN's layout conversions;
measured 1.3x faster forward + backward on CPU for the encoder's shapes
(``benchmarks/train_step.py``). The parameters stay ``nn.Conv1d`` ones,
so checkpoints do not depend on the choice.

Authors
 * S3L contributors 2025
"""

import torch
from torch import nn

from s3l_plugin.lengths import zero_padding
from s3l_plugin.runtime import DeviceResolved, check_choice, resolve_conv_impl


def conv1d_frames(x, conv, impl="matmul"):
    """Applies an ``nn.Conv1d`` to a (B, T, C) sequence.

    Arguments
    ---------
    x : torch.Tensor
        (B, T, C_in) inputs.
    conv : torch.nn.Conv1d
        No groups, no dilation; ``"valid"``, ``"same"`` or symmetric
        integer padding.
    impl : str
        ``"matmul"``: frames unfolded to (B, T', C_in * K) and one product
        with the (C_out, C_in * K) weight; ``"direct"``: ``conv`` itself.

    Returns
    -------
    torch.Tensor
        (B, T', C_out).

    Example
    -------
    >>> conv = nn.Conv1d(4, 6, 3, stride=2, bias=False)
    >>> x = torch.randn(2, 9, 4)
    >>> torch.allclose(conv1d_frames(x, conv),
    ...                conv1d_frames(x, conv, "direct"), atol=1e-6)
    True
    """
    if impl == "direct":
        return conv(x.transpose(1, 2)).transpose(1, 2)
    if impl != "matmul":
        raise ValueError(f"impl must be 'matmul' or 'direct', got {impl!r}")
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    weight = conv.weight
    if conv.padding == "same":
        # torch's 'same': the extra zero of an even kernel goes right.
        left, right = (kernel - 1) // 2, kernel // 2
    elif conv.padding == "valid":
        left = right = 0
    else:
        left = right = conv.padding[0]
    if left or right:
        x = nn.functional.pad(x, (0, 0, left, right))
    if kernel == 1:
        frames, weight = x[:, ::stride], weight.squeeze(-1)
    else:
        # (B, T', C_in, K), flattened in the weight's (C_in, K) order.
        frames = x.unfold(1, kernel, stride).flatten(2)
        weight = weight.flatten(1)
    return nn.functional.linear(frames, weight, conv.bias)


class ConvBlock(nn.Module):
    """Conv1d (no bias) -> LayerNorm(channels) -> ReLU -> dropout.

    Arguments
    ---------
    in_channels : int
        Input channels.
    out_channels : int
        Output channels.
    kernel_size : int
        Kernel size.
    stride : int
        Stride.
    padding : str
        ``"valid"`` or ``"same"`` (stride 1 only).
    dropout : float
        Dropout after the activation.
    conv_impl : str
        ``"auto"``, ``"fft"`` (both: unfolded matmul) or ``"direct"``
        (``nn.Conv1d``), see ``s3l_plugin.runtime``; same parameters and
        result.

    Example
    -------
    >>> block = ConvBlock(4, 8, kernel_size=3, stride=2)
    >>> block(torch.randn(2, 9, 4)).shape
    torch.Size([2, 4, 8])
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding="valid",
        dropout=0.0,
        conv_impl="auto",
    ):
        super().__init__()
        self.conv_impl = check_choice("conv_impl", conv_impl)
        self.conv_plan = DeviceResolved(resolve_conv_impl)
        self.conv = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            bias=False,
        )
        self.norm = nn.LayerNorm(out_channels)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        """Applies the block.

        Arguments
        ---------
        x : torch.Tensor
            (B, T, in_channels) inputs.

        Returns
        -------
        torch.Tensor
            (B, T', out_channels) outputs.
        """
        plan = self.conv_plan(self.conv_impl, x.device)
        x = conv1d_frames(x, self.conv, plan.stack)
        return self.dropout(self.activation(self.norm(x)))


class ConvStack(nn.Module):
    """Convolution blocks over padded sequences, tracking lengths.

    Arguments
    ---------
    input_dim : int
        Input channels.
    channels : sequence of int
        Output channels of each layer.
    kernels : sequence of int
        Kernel size of each layer.
    strides : sequence of int, optional
        Stride of each layer (default all 1); must be 1 with ``"same"``.
    padding : str
        ``"valid"`` (output length ``(L - k) // s + 1``) or ``"same"``.
    dropout : float
        Dropout after each block's activation.
    last_activation : bool
        If False the last layer is a plain, linear Conv1d (no bias, no
        LayerNorm, no ReLU), as the predictor's output must be able to take
        any sign (METHOD.md 7.4).
    conv_impl : str
        ``"auto"``, ``"fft"`` or ``"direct"``, see ``ConvBlock``.

    Example
    -------
    >>> stack = ConvStack(8, (16, 16), (5, 1), (2, 1))
    >>> y, lengths = stack(torch.randn(2, 20, 8), torch.tensor([20, 11]))
    >>> y.shape, lengths
    (torch.Size([2, 8, 16]), tensor([8, 4]))
    >>> bool((y[1, 4:] == 0).all())
    True
    """

    def __init__(
        self,
        input_dim,
        channels,
        kernels,
        strides=None,
        padding="valid",
        dropout=0.0,
        last_activation=True,
        conv_impl="auto",
    ):
        super().__init__()
        self.conv_impl = check_choice("conv_impl", conv_impl)
        self.conv_plan = DeviceResolved(resolve_conv_impl)
        channels, kernels = tuple(channels), tuple(kernels)
        strides = (1,) * len(channels) if strides is None else tuple(strides)
        if not len(channels) == len(kernels) == len(strides) > 0:
            raise ValueError(
                "channels, kernels and strides need one entry per layer, got "
                f"{channels}, {kernels}, {strides}"
            )
        if padding not in ("valid", "same"):
            raise ValueError(
                f"padding must be 'valid' or 'same', got {padding!r}"
            )
        if padding == "same" and any(s != 1 for s in strides):
            raise ValueError("'same' padding needs all strides equal to 1")
        self.kernels = kernels
        self.strides = strides
        self.padding = padding
        self.layers = nn.ModuleList()
        in_channels = input_dim
        for i, (out_channels, kernel, stride) in enumerate(
            zip(channels, kernels, strides)
        ):
            if i == len(channels) - 1 and not last_activation:
                layer = nn.Conv1d(
                    in_channels,
                    out_channels,
                    kernel,
                    stride=stride,
                    padding=padding,
                    bias=False,
                )
            else:
                layer = ConvBlock(
                    in_channels,
                    out_channels,
                    kernel,
                    stride,
                    padding,
                    dropout,
                    conv_impl,
                )
            self.layers.append(layer)
            in_channels = out_channels
        self.output_dim = in_channels

    @property
    def stride(self):
        """Total down-sampling factor (product of the strides)."""
        total = 1
        for stride in self.strides:
            total *= stride
        return total

    def output_lengths(self, lengths):
        """Valid output frames for ``lengths`` valid input frames.

        Arguments
        ---------
        lengths : torch.Tensor
            (B,) long input lengths.

        Returns
        -------
        torch.Tensor
            (B,) long output lengths (0 when an input is too short).

        Example
        -------
        >>> ConvStack(8, (16, 16), (5, 1), (2, 1)).output_lengths(
        ...     torch.tensor([20, 5, 4])
        ... )
        tensor([8, 1, 0])
        """
        lengths = torch.as_tensor(lengths).long()
        for kernel, stride in zip(self.kernels, self.strides):
            lengths = self._layer_lengths(lengths, kernel, stride)
        return lengths

    def min_input_length(self, num_outputs=1):
        """Fewest input frames giving ``num_outputs`` output frames.

        Arguments
        ---------
        num_outputs : int
            Output frames wanted.

        Returns
        -------
        int

        Example
        -------
        >>> ConvStack(8, (16, 16, 16), (5, 5, 1), (2, 2, 1)).min_input_length()
        13
        """
        if self.padding == "same":
            return num_outputs
        frames = num_outputs
        for kernel, stride in zip(
            reversed(self.kernels), reversed(self.strides)
        ):
            frames = (frames - 1) * stride + kernel
        return frames

    def forward(self, x, lengths):
        """Applies the layers, zeroing padded frames before each one.

        Arguments
        ---------
        x : torch.Tensor
            (B, T, input_dim) inputs.
        lengths : torch.Tensor
            (B,) long valid frames per utterance.

        Returns
        -------
        y : torch.Tensor
            (B, T', channels[-1]) outputs, 0 past each output length.
        out_lengths : torch.Tensor
            (B,) long output lengths.
        """
        lengths = lengths.long()
        layers = zip(self.layers, self.kernels, self.strides)
        for layer, kernel, stride in layers:
            x = zero_padding(x, lengths)
            if isinstance(layer, nn.Conv1d):
                plan = self.conv_plan(self.conv_impl, x.device)
                x = conv1d_frames(x, layer, plan.stack)
            else:
                x = layer(x)
            lengths = self._layer_lengths(lengths, kernel, stride)
        return zero_padding(x, lengths), lengths

    def _layer_lengths(self, lengths, kernel, stride):
        """Output lengths of one layer."""
        if self.padding == "same":
            return lengths
        lengths = (lengths - kernel).div(stride, rounding_mode="floor") + 1
        return lengths.clamp(min=0)
