"""Transformer components of the S3L encoder.

A convolutional relative positional embedding (wav2vec 2.0 style), a
post-LN transformer layer and the stack that chains them (METHOD.md 2). Padded
frames are masked everywhere (``s3l_plugin.lengths``).

Authors
 * S3L contributors 2025
"""

import torch
from torch import nn

from s3l_plugin.attention import MultiHeadSelfAttention
from s3l_plugin.fft_conv import fft_conv1d
from s3l_plugin.lengths import padding_mask, zero_padding
from s3l_plugin.runtime import DeviceResolved, check_choice, resolve_conv_impl


def init_bert_linears(module):
    """BERT initialisation of every ``nn.Linear`` in ``module``.

    Weights N(0, 0.02), biases 0; other layers keep their defaults.

    Arguments
    ---------
    module : torch.nn.Module
        Module initialised in place.

    Example
    -------
    >>> layer = nn.Sequential(nn.Linear(512, 512))
    >>> init_bert_linears(layer)
    >>> round(layer[0].weight.std().item(), 2), layer[0].bias.abs().sum().item()
    (0.02, 0.0)
    """
    for submodule in module.modules():
        if isinstance(submodule, nn.Linear):
            nn.init.normal_(submodule.weight, mean=0.0, std=0.02)
            if submodule.bias is not None:
                nn.init.zeros_(submodule.bias)


class ConvPositionalEmbedding(nn.Module):
    """Convolutional relative positional embedding (wav2vec 2.0 style).

    Grouped Conv1d with weight normalisation over the kernel axis, padding
    ``kernel_size // 2`` (the extra last frame of an even kernel dropped),
    then GELU. Padded input frames are zeroed first so that they look like
    the end of the utterance.

    With 128 taps, computing the convolution through real FFTs
    (``fft_conv1d``) is 2-2.6x faster forward + backward on CPU at the
    encoder's lengths, for the same parameters and result (float32
    rounding aside).

    Arguments
    ---------
    d_model : int
        Channels in and out.
    kernel_size : int
        Kernel size.
    groups : int
        Convolution groups; must divide ``d_model``.
    conv_impl : str
        ``"fft"``, ``"direct"`` (``nn.Conv1d``) or ``"auto"``: on CPU, FFT
        when gradients are needed or for up to
        ``runtime.FFT_NO_GRAD_MAX_FRAMES`` frames, direct otherwise; direct
        (cuDNN) on other devices. Resolved for the device of the inputs
        (``s3l_plugin.runtime``).

    Example
    -------
    >>> pos_conv = ConvPositionalEmbedding(16, kernel_size=8, groups=4)
    >>> pos_conv(torch.randn(2, 10, 16), torch.tensor([10, 6])).shape
    torch.Size([2, 10, 16])
    """

    def __init__(
        self, d_model=512, kernel_size=128, groups=16, conv_impl="auto"
    ):
        super().__init__()
        self.conv_impl = check_choice("conv_impl", conv_impl)
        self.conv_plan = DeviceResolved(resolve_conv_impl)
        conv = nn.Conv1d(
            d_model,
            d_model,
            kernel_size,
            padding=kernel_size // 2,
            groups=groups,
        )
        self.conv = nn.utils.parametrizations.weight_norm(
            conv, name="weight", dim=2
        )
        self.drop_last = kernel_size % 2 == 0
        self.activation = nn.GELU()

    def forward(self, x, lengths=None):
        """Computes the positional embedding.

        Arguments
        ---------
        x : torch.Tensor
            (B, T, d_model) inputs.
        lengths : torch.Tensor, optional
            (B,) long valid frames; None means no padding.

        Returns
        -------
        torch.Tensor
            (B, T, d_model) embedding.
        """
        if lengths is not None:
            x = zero_padding(x, lengths)
        if self._use_fft(x):
            y = fft_conv1d(
                x,
                self.conv.weight,
                self.conv.bias,
                self.conv.padding[0],
                self.conv.groups,
            )
        else:
            y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        if self.drop_last:
            y = y[:, :-1]
        return self.activation(y)

    def _use_fft(self, x):
        """Whether this call runs ``fft_conv1d`` (see ``conv_impl``)."""
        plan = self.conv_plan(self.conv_impl, x.device)
        if plan.positional != "fft":
            return False
        if plan.fft_no_grad_max_frames is None:
            return True
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad
            or any(p.requires_grad for p in self.conv.parameters())
        )
        return needs_grad or x.shape[1] <= plan.fft_no_grad_max_frames


class TransformerLayer(nn.Module):
    """Post-LN transformer encoder layer.

    ``x = LN(x + dropout(attention(x)))``, then
    ``x = LN(x + dropout(FFN(x)))`` with FFN Linear -> GELU -> dropout
    (``activation_dropout``) -> Linear.

    Arguments
    ---------
    d_model : int
        Model dimension.
    nhead : int
        Attention heads.
    d_ffn : int
        Hidden size of the feed-forward network.
    dropout : float
        Dropout on the attention and FFN outputs.
    attention_dropout : float
        Dropout on the attention probabilities.
    activation_dropout : float
        Dropout after the FFN's GELU (0 in the reference).
    attention_backend : str
        See ``MultiHeadSelfAttention``.

    Example
    -------
    >>> layer = TransformerLayer(16, 4, 32, attention_backend="sdpa")
    >>> layer(torch.randn(2, 5, 16), padding_mask(torch.tensor([5, 2]))).shape
    torch.Size([2, 5, 16])
    """

    def __init__(
        self,
        d_model=512,
        nhead=8,
        d_ffn=2048,
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
        attention_backend="auto",
    ):
        super().__init__()
        self.attention = MultiHeadSelfAttention(
            d_model, nhead, attention_dropout, attention_backend
        )
        self.attention_dropout = nn.Dropout(dropout)
        self.attention_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, d_ffn),
            nn.GELU(),
            nn.Dropout(activation_dropout),
            nn.Linear(d_ffn, d_model),
        )
        self.ffn_dropout = nn.Dropout(dropout)
        self.ffn_norm = nn.LayerNorm(d_model)

    def forward(self, x, key_padding_mask=None):
        """Applies the layer.

        Arguments
        ---------
        x : torch.Tensor
            (B, T, d_model) inputs.
        key_padding_mask : torch.Tensor, optional
            (B, T) bool, True on padding.

        Returns
        -------
        torch.Tensor
            (B, T, d_model) outputs (meaningless on padded frames).
        """
        attended = self.attention(x, key_padding_mask)
        x = self.attention_norm(x + self.attention_dropout(attended))
        return self.ffn_norm(x + self.ffn_dropout(self.ffn(x)))


class TransformerStack(nn.Module):
    """Positional convolution, LayerNorm, dropout, then transformer layers.

    Linear layers get the BERT initialisation. Padded frames of every
    layer output are zeroed.

    Arguments
    ---------
    num_layers : int
        Transformer layers.
    d_model : int
        Model dimension.
    nhead : int
        Attention heads.
    d_ffn : int
        Feed-forward hidden size.
    dropout : float
        Dropout after the input LayerNorm and in each layer.
    attention_dropout : float
        Dropout on the attention probabilities.
    pos_conv_kernel : int
        Kernel of the positional convolution.
    pos_conv_groups : int
        Groups of the positional convolution.
    attention_backend : str
        See ``MultiHeadSelfAttention``.
    activation_dropout : float
        Dropout after each FFN's GELU.
    conv_impl : str
        Positional convolution implementation (``ConvPositionalEmbedding``).

    Example
    -------
    >>> stack = TransformerStack(2, 16, 4, 32, pos_conv_kernel=8, pos_conv_groups=4)
    >>> out, layers = stack(torch.randn(2, 10, 16), torch.tensor([10, 6]))
    >>> out.shape, len(layers), bool((out[1, 6:] == 0).all())
    (torch.Size([2, 10, 16]), 2, True)
    """

    def __init__(
        self,
        num_layers=2,
        d_model=512,
        nhead=8,
        d_ffn=2048,
        dropout=0.1,
        attention_dropout=0.1,
        pos_conv_kernel=128,
        pos_conv_groups=16,
        attention_backend="auto",
        activation_dropout=0.0,
        conv_impl="auto",
    ):
        super().__init__()
        self.pos_conv = ConvPositionalEmbedding(
            d_model, pos_conv_kernel, pos_conv_groups, conv_impl
        )
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(
                d_model,
                nhead,
                d_ffn,
                dropout,
                attention_dropout,
                activation_dropout,
                attention_backend,
            )
            for _ in range(num_layers)
        )
        init_bert_linears(self)

    def forward(self, x, lengths):
        """Encodes a padded batch.

        Arguments
        ---------
        x : torch.Tensor
            (B, T, d_model) inputs.
        lengths : torch.Tensor
            (B,) long valid frames.

        Returns
        -------
        out : torch.Tensor
            (B, T, d_model) last layer's output (the input stage's if
            there are no layers), 0 on padded frames.
        layers : list of torch.Tensor
            Each layer's (B, T, d_model) output, 0 on padded frames.
        """
        x = zero_padding(x, lengths)
        x = self.dropout(self.norm(x + self.pos_conv(x, lengths)))
        key_padding_mask = padding_mask(lengths, x.shape[1])
        frame_padding = key_padding_mask.unsqueeze(-1)
        layers = []
        for layer in self.layers:
            # Zeroing padded frames is not needed for the valid frames
            # (padded keys are masked) but makes every backend agree there.
            x = layer(x, key_padding_mask).masked_fill(frame_padding, 0.0)
            layers.append(x)
        return x.masked_fill(frame_padding, 0.0), layers
