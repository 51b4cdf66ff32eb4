"""The S3LSpeech encoder: a SPIRAL-style conv / transformer stack (SPEC 2).

log-mels (10 ms) -> conv1 (x4 down) -> transf1 -> conv2 (x2 down) -> transf2,
512-d every 80 ms, plus a 512 -> 256 projection kept as ``proj`` for the
pretraining targets. Padding is masked everywhere, so an utterance's outputs
never depend on what else is in its batch.

Authors
 * S3L contributors 2025
"""

import math
from typing import NamedTuple

import torch
from torch import nn

from s3l_plugin.attention import MultiHeadSelfAttention, make_padding_mask
from s3l_plugin.conv import ConvStack, check_conv_impl, zero_padding
from s3l_plugin.features import MelFeatures
from s3l_plugin.fft_conv import fft_conv1d

CONV_IMPLS = ("auto", "fft", "direct")
# Above this many frames the FFT forward alone (the teacher's) stops
# beating oneDNN's direct grouped convolution on CPU; forward + backward
# stays faster up to at least 1500 frames (benchmarks/train_step.py).
FFT_NO_GRAD_MAX_FRAMES = 512


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
        ``"fft"``, ``"direct"`` (``nn.Conv1d``) or ``"auto"``: FFT on CPU
        when gradients are needed or for up to ``FFT_NO_GRAD_MAX_FRAMES``
        frames, direct otherwise and on GPUs (cuDNN; not yet measured).

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
        check_conv_impl(conv_impl, CONV_IMPLS)
        self.conv_impl = conv_impl
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
        if self.conv_impl != "auto":
            return self.conv_impl == "fft"
        if x.device.type != "cpu":
            return False
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad
            or any(p.requires_grad for p in self.conv.parameters())
        )
        return needs_grad or x.shape[1] <= FFT_NO_GRAD_MAX_FRAMES


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
    backend : str
        Attention backend, see ``MultiHeadSelfAttention``.

    Example
    -------
    >>> layer = TransformerLayer(16, 4, 32, backend="sdpa")
    >>> layer(torch.randn(2, 5, 16), make_padding_mask(torch.tensor([5, 2]))).shape
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
        backend="auto",
    ):
        super().__init__()
        self.attention = MultiHeadSelfAttention(
            d_model, nhead, attention_dropout, backend
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
    backend : str
        Attention backend.
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
        backend="auto",
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
                backend,
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
        key_padding_mask = make_padding_mask(lengths, x.shape[1])
        frame_padding = key_padding_mask.unsqueeze(-1)
        layers = []
        for layer in self.layers:
            # Zeroing padded frames is not needed for the valid frames
            # (padded keys are masked) but makes every backend agree there.
            x = layer(x, key_padding_mask).masked_fill(frame_padding, 0.0)
            layers.append(x)
        return x.masked_fill(frame_padding, 0.0), layers


class EncoderOutput(NamedTuple):
    """What ``S3LEncoder.encode`` returns.

    Attributes
    ----------
    out : torch.Tensor
        (B, T', d_model) last layer, 0 on padded frames.
    lengths : torch.Tensor
        (B,) long valid output frames.
    layers : list of torch.Tensor
        Every transformer layer's (B, T_i, d_model) output in order (empty
        unless requested).
    layer_lengths : list of torch.Tensor
        (B,) valid frames of each entry of ``layers``.
    """

    out: torch.Tensor
    lengths: torch.Tensor
    layers: list[torch.Tensor]
    layer_lengths: list[torch.Tensor]


class S3LEncoder(nn.Module):
    """S3LSpeech encoder: features, conv1, transf1, conv2, transf2 (+ proj).

    Valid convolutions down-sample by exactly ``downsampling`` (8):
    prepending ``8 * l`` feature frames prepends exactly ``l`` output
    frames. ``proj`` maps the output to the contrastive space; it is not
    applied by ``forward``/``encode`` (pretraining applies it, finetuning
    uses the ``d_model`` layers).

    Arguments
    ---------
    n_mels : int
        Mel channels of the features.
    d_model : int
        Transformer dimension (the last channels of both conv stacks).
    nhead : int
        Attention heads.
    d_ffn : int
        Feed-forward hidden size.
    conv1_channels : sequence of int
        Channels of conv1's three layers (kernels 5, 5, 1; strides 2, 2, 1).
    conv2_channels : sequence of int
        Channels of conv2's two layers (kernels 5, 1; strides 2, 1).
    transf1_layers : int
        Transformer layers after conv1.
    transf2_layers : int
        Transformer layers after conv2.
    proj_dim : int
        Output size of ``proj``.
    dropout : float
        Transformer dropout.
    attention_dropout : float
        Dropout on the attention probabilities.
    attention_backend : str
        ``"auto"``, ``"flash_attn"``, ``"sdpa"`` or ``"math"``.
    pos_conv_kernel : int
        Kernel of the positional convolutions.
    pos_conv_groups : int
        Groups of the positional convolutions.
    activation_dropout : float
        Dropout after each FFN's GELU (0 in the reference).
    conv_dropout : float
        Dropout after each conv block's ReLU (0 in the reference).
    normalize_features : bool
        Per-utterance mean/variance normalisation of the features (off in
        the reference).
    conv_impl : str
        How convolutions run, same parameters and results either way:
        ``"auto"`` (conv stacks as unfolded matrix products, positional
        convolutions through FFTs on CPU), ``"fft"`` (FFTs on every
        device) or ``"direct"`` (``nn.Conv1d`` everywhere, the baseline).

    Example
    -------
    >>> encoder = S3LEncoder(**S3LEncoder.tiny_config()).eval()
    >>> out = encoder(torch.randn(2, 8000), torch.tensor([1.0, 0.7]))
    >>> out.shape, bool((out[1, 1:] == 0).all())
    (torch.Size([2, 3, 16]), True)
    >>> encoder.output_lengths(torch.tensor([51, 36])), encoder.min_input_frames
    (tensor([3, 1]), 29)
    """

    CONV1_KERNELS = (5, 5, 1)
    CONV1_STRIDES = (2, 2, 1)
    CONV2_KERNELS = (5, 1)
    CONV2_STRIDES = (2, 1)
    downsampling = math.prod(CONV1_STRIDES + CONV2_STRIDES)

    def __init__(
        self,
        n_mels=128,
        d_model=512,
        nhead=8,
        d_ffn=2048,
        conv1_channels=(384, 512, 512),
        conv2_channels=(1536, 512),
        transf1_layers=2,
        transf2_layers=2,
        proj_dim=256,
        dropout=0.1,
        attention_dropout=0.1,
        attention_backend="auto",
        pos_conv_kernel=128,
        pos_conv_groups=16,
        activation_dropout=0.0,
        conv_dropout=0.0,
        normalize_features=False,
        conv_impl="auto",
    ):
        super().__init__()
        check_conv_impl(conv_impl, CONV_IMPLS)
        conv1_channels, conv2_channels = (
            tuple(conv1_channels),
            tuple(conv2_channels),
        )
        if conv1_channels[-1] != d_model or conv2_channels[-1] != d_model:
            raise ValueError(
                "The last conv1 and conv2 channels must equal d_model "
                f"({d_model}), got {conv1_channels} and {conv2_channels}"
            )
        self.config = {
            "n_mels": n_mels,
            "d_model": d_model,
            "nhead": nhead,
            "d_ffn": d_ffn,
            "conv1_channels": conv1_channels,
            "conv2_channels": conv2_channels,
            "transf1_layers": transf1_layers,
            "transf2_layers": transf2_layers,
            "proj_dim": proj_dim,
            "dropout": dropout,
            "attention_dropout": attention_dropout,
            "attention_backend": attention_backend,
            "pos_conv_kernel": pos_conv_kernel,
            "pos_conv_groups": pos_conv_groups,
            "activation_dropout": activation_dropout,
            "conv_dropout": conv_dropout,
            "normalize_features": normalize_features,
            "conv_impl": conv_impl,
        }
        stack_impl = "direct" if conv_impl == "direct" else "matmul"
        self.features = MelFeatures(n_mels=n_mels, normalize=normalize_features)
        self.conv1 = ConvStack(
            n_mels,
            conv1_channels,
            self.CONV1_KERNELS,
            self.CONV1_STRIDES,
            dropout=conv_dropout,
            conv_impl=stack_impl,
        )
        transformer = {
            "d_model": d_model,
            "nhead": nhead,
            "d_ffn": d_ffn,
            "dropout": dropout,
            "attention_dropout": attention_dropout,
            "pos_conv_kernel": pos_conv_kernel,
            "pos_conv_groups": pos_conv_groups,
            "backend": attention_backend,
            "activation_dropout": activation_dropout,
            "conv_impl": conv_impl,
        }
        self.transf1 = TransformerStack(transf1_layers, **transformer)
        self.conv2 = ConvStack(
            d_model,
            conv2_channels,
            self.CONV2_KERNELS,
            self.CONV2_STRIDES,
            dropout=conv_dropout,
            conv_impl=stack_impl,
        )
        self.transf2 = TransformerStack(transf2_layers, **transformer)
        self.proj = nn.Linear(d_model, proj_dim)
        init_bert_linears(self.proj)

    @staticmethod
    def tiny_config():
        """Constructor arguments of a tiny encoder for tests and examples.

        Returns
        -------
        dict
            16 mels, d_model 16, one layer per transformer, proj_dim 16.

        Example
        -------
        >>> S3LEncoder.tiny_config()["proj_dim"]
        16
        """
        return {
            "n_mels": 16,
            "d_model": 16,
            "nhead": 2,
            "d_ffn": 32,
            "conv1_channels": (16, 16, 16),
            "conv2_channels": (32, 16),
            "transf1_layers": 1,
            "transf2_layers": 1,
            "proj_dim": 16,
            "pos_conv_kernel": 8,
            "pos_conv_groups": 2,
        }

    def compile_layers(self, dynamic=True, **compile_kwargs):
        """Compiles the conv and transformer stacks with ``torch.compile``.

        Each of ``conv1``, ``transf1``, ``conv2`` and ``transf2`` is
        compiled in place (``nn.Module.compile``), so parameter names,
        checkpoints and the EMA teacher's matching are unchanged; the
        features, the length check and the projection stay eager. With
        ``dynamic=True`` (the default) one graph serves every batch shape.
        A deep copy (the ``EMATeacher``'s) is not compiled: call this on
        the teacher's encoder too (``compile_s3l`` does both). Raises
        dynamo's ``recompile_limit`` to at least 64: student and teacher,
        training and validation, conv1 and conv2 each need their own graph
        of the same code, and past the limit dynamo silently runs eager.

        Arguments
        ---------
        dynamic : bool
            Dynamic shapes (``torch.compile(dynamic=...)``).
        **compile_kwargs
            Passed to ``torch.compile`` (e.g. ``mode``, ``backend``).

        Returns
        -------
        S3LEncoder
            ``self``.

        Example
        -------
        >>> encoder = S3LEncoder(**S3LEncoder.tiny_config())
        >>> encoder.compile_layers(backend="eager") is encoder
        True
        """
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, 64)
        for module in (self.conv1, self.transf1, self.conv2, self.transf2):
            module.compile(dynamic=dynamic, **compile_kwargs)
        return self

    @property
    def min_input_frames(self):
        """Fewest feature frames giving one output frame (29)."""
        conv2_frames = self.conv2.min_input_length()
        return self.conv1.min_input_length(conv2_frames)

    @property
    def min_input_seconds(self):
        """Shortest waveform, in seconds, giving one output frame."""
        samples = (self.min_input_frames - 1) * self.features.hop_length
        return samples / self.features.sample_rate

    def output_lengths(self, feat_lens):
        """Output frames for ``feat_lens`` feature frames.

        Arguments
        ---------
        feat_lens : torch.Tensor
            (B,) long feature frame counts.

        Returns
        -------
        torch.Tensor
            (B,) long output frame counts.

        Example
        -------
        >>> encoder = S3LEncoder(**S3LEncoder.tiny_config())
        >>> encoder.output_lengths(torch.tensor([29, 36, 37, 101]))
        tensor([ 1,  1,  2, 10])
        """
        return self.conv2.output_lengths(self.conv1.output_lengths(feat_lens))

    def forward(self, wavs, wav_lens=None, return_layers=False):
        """Encodes waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, S) 16 kHz waveforms.
        wav_lens : torch.Tensor, optional
            (B,) relative lengths; None means all full.
        return_layers : bool
            Also return every transformer layer's output.

        Returns
        -------
        out : torch.Tensor
            (B, T', d_model), 0 on padded frames.
        layers : list of torch.Tensor
            Only if ``return_layers``: every layer's output, in order.
        """
        feats, feat_lens = self.features(wavs, wav_lens)
        encoded = self.encode(feats, feat_lens, return_layers=return_layers)
        if return_layers:
            return encoded.out, encoded.layers
        return encoded.out

    def encode(self, feats, feat_lens, return_layers=False):
        """Encodes features.

        Arguments
        ---------
        feats : torch.Tensor
            (B, T, n_mels) features.
        feat_lens : torch.Tensor
            (B,) long valid frames; each at least ``min_input_frames``.
        return_layers : bool
            Fill ``layers`` and ``layer_lengths``.

        Returns
        -------
        EncoderOutput
            ``(out, lengths, layers, layer_lengths)``.
        """
        feat_lens = feat_lens.to(feats.device).long()
        self._check_lengths(feat_lens)
        x, lengths1 = self.conv1(feats, feat_lens)
        x, layers1 = self.transf1(x, lengths1)
        x, lengths2 = self.conv2(x, lengths1)
        out, layers2 = self.transf2(x, lengths2)
        if not return_layers:
            return EncoderOutput(out, lengths2, [], [])
        layer_lengths = [lengths1] * len(layers1) + [lengths2] * len(layers2)
        return EncoderOutput(out, lengths2, layers1 + layers2, layer_lengths)

    def _check_lengths(self, feat_lens):
        """Raises if an utterance is too short for one output frame."""
        shortest = int(feat_lens.min()) if feat_lens.numel() else 0
        if shortest < self.min_input_frames:
            raise ValueError(
                f"S3LEncoder needs at least {self.min_input_frames} feature "
                f"frames ({self.min_input_seconds:.2f} s of audio) per "
                f"utterance for one output frame; got {shortest}. Filter out "
                "shorter utterances."
            )
