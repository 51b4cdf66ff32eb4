"""The S3LSpeech encoder: architecture, assembly and factories (METHOD.md 2).

log-mels (10 ms) -> conv1 (x4 down) -> transf1 -> conv2 (x2 down) -> transf2,
512-d every 80 ms, plus a 512 -> 256 projection kept as ``proj`` for the
pretraining targets. Padding is masked everywhere, so an utterance's outputs
never depend on what else is in its batch.

``EncoderArchitecture`` lists the arguments that fix the parameters and the
function computed (saved as ``encoder_config.json``); the other
``S3LEncoder`` arguments are training (dropout) and runtime
(``attention_backend``, ``conv_impl``, see ``s3l_plugin.runtime``) options.
The building blocks live in ``features``, ``conv`` and ``transformer``;
``s3l_base`` and ``s3l_tiny`` build the paper's size and the CPU demo's.

Authors
 * S3L contributors 2025
"""

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import nn

from s3l_plugin.conv import ConvStack
from s3l_plugin.features import MelFeatures
from s3l_plugin.runtime import check_choice
from s3l_plugin.transformer import TransformerStack, init_bert_linears

CONV1_KERNELS = (5, 5, 1)
CONV1_STRIDES = (2, 2, 1)
CONV2_KERNELS = (5, 1)
CONV2_STRIDES = (2, 1)


@dataclasses.dataclass(frozen=True)
class EncoderArchitecture:
    """What fixes an ``S3LEncoder``'s parameters and function.

    The defaults are the paper's size (about 23 M parameters). Sequences
    become tuples; the last channels of both conv stacks must equal
    ``d_model``.

    Attributes
    ----------
    n_mels : int
        Mel channels of the features.
    d_model : int
        Transformer dimension (the last channels of both conv stacks).
    nhead : int
        Attention heads.
    d_ffn : int
        Feed-forward hidden size.
    conv1_channels : tuple of int
        Channels of conv1's three layers (kernels 5, 5, 1; strides 2, 2, 1).
    conv2_channels : tuple of int
        Channels of conv2's two layers (kernels 5, 1; strides 2, 1).
    transf1_layers : int
        Transformer layers after conv1.
    transf2_layers : int
        Transformer layers after conv2.
    proj_dim : int
        Output size of ``proj``.
    pos_conv_kernel : int
        Kernel of the positional convolutions.
    pos_conv_groups : int
        Groups of the positional convolutions.
    normalize_features : bool
        Per-utterance mean/variance normalisation of the features, per mel
        channel over the valid frames (on by default; off in the reference:
        METHOD.md 8.1). Un-normalised dB features put most of every
        layer's energy into a component constant over time, and CTC
        finetuning then sits on the blank plateau. No parameter depends on
        it, but weights trained with one setting are wrong for the other,
        so it is architecture.

    Example
    -------
    >>> EncoderArchitecture(d_model=16)
    Traceback (most recent call last):
    ...
    ValueError: The last conv1 and conv2 channels must equal d_model (16), ...
    >>> ARCHITECTURES["tiny"].d_model
    128
    """

    n_mels: int = 128
    d_model: int = 512
    nhead: int = 8
    d_ffn: int = 2048
    conv1_channels: tuple = (384, 512, 512)
    conv2_channels: tuple = (1536, 512)
    transf1_layers: int = 2
    transf2_layers: int = 2
    proj_dim: int = 256
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    normalize_features: bool = True

    def __post_init__(self):
        for name in ("conv1_channels", "conv2_channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.d_model != self.conv1_channels[-1] or (
            self.conv2_channels[-1] != self.d_model
        ):
            raise ValueError(
                "The last conv1 and conv2 channels must equal d_model "
                f"({self.d_model}), got {self.conv1_channels} and "
                f"{self.conv2_channels}"
            )

    @classmethod
    def keys(cls):
        """The field names, in order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    def to_dict(self):
        """The fields as a dict (sequences as lists, as JSON keeps them)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }


ARCHITECTURES = {
    # The paper's encoder (METHOD.md 2).
    "base": EncoderArchitecture(),
    # The CPU demo's (hparams/s3l_tiny.yaml): 128-d, 1 + 2 layers.
    "tiny": EncoderArchitecture(
        d_model=128,
        nhead=4,
        d_ffn=256,
        conv1_channels=(96, 128, 128),
        conv2_channels=(256, 128),
        transf1_layers=1,
        transf2_layers=2,
        proj_dim=64,
        pos_conv_kernel=32,
        pos_conv_groups=8,
    ),
    # 16-d, for examples and tests.
    "toy": EncoderArchitecture(
        n_mels=16,
        d_model=16,
        nhead=2,
        d_ffn=32,
        conv1_channels=(16, 16, 16),
        conv2_channels=(32, 16),
        transf1_layers=1,
        transf2_layers=1,
        proj_dim=16,
        pos_conv_kernel=8,
        pos_conv_groups=2,
    ),
}


def architecture(size="base", **changes):
    """``S3LEncoder`` architecture arguments of a named size.

    Arguments
    ---------
    size : str
        ``"base"`` (the paper's), ``"tiny"`` (the CPU demo's) or ``"toy"``
        (16-d, for examples and tests).
    **changes
        Fields replacing the size's.

    Returns
    -------
    dict

    Example
    -------
    >>> architecture("toy", transf2_layers=2)["transf2_layers"]
    2
    """
    if size not in ARCHITECTURES:
        raise ValueError(
            f"Unknown encoder size {size!r}; known: {sorted(ARCHITECTURES)}"
        )
    chosen = dataclasses.replace(ARCHITECTURES[size], **changes)
    return dataclasses.asdict(chosen)


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
    dropout : float
        Transformer dropout.
    attention_dropout : float
        Dropout on the attention probabilities.
    activation_dropout : float
        Dropout after each FFN's GELU (0 in the reference).
    conv_dropout : float
        Dropout after each conv block's ReLU (0 in the reference).
    attention_backend : str
        ``"auto"``, ``"flash_attn"``, ``"sdpa"`` or ``"math"``
        (``s3l_plugin.runtime``).
    conv_impl : str
        ``"auto"``, ``"fft"`` or ``"direct"`` (``nn.Conv1d`` everywhere,
        the baseline); same parameters and results either way.
    **architecture
        The fields of ``EncoderArchitecture`` (default: the paper's size),
        kept as ``self.architecture``.

    Example
    -------
    >>> encoder = S3LEncoder(**architecture("toy")).eval()
    >>> out = encoder(torch.randn(2, 8000), torch.tensor([1.0, 0.7]))
    >>> out.shape, bool((out[1, 1:] == 0).all())
    (torch.Size([2, 3, 16]), True)
    >>> encoder.output_lengths(torch.tensor([51, 36])), encoder.min_input_frames
    (tensor([3, 1]), 29)
    """

    downsampling = math.prod(CONV1_STRIDES + CONV2_STRIDES)

    def __init__(
        self,
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
        conv_dropout=0.0,
        attention_backend="auto",
        conv_impl="auto",
        **architecture,
    ):
        super().__init__()
        try:
            arch = EncoderArchitecture(**architecture)
        except TypeError:
            unknown = set(architecture) - set(EncoderArchitecture.keys())
            raise TypeError(
                f"S3LEncoder got unknown arguments {sorted(unknown)}; the "
                f"architecture keys are {list(EncoderArchitecture.keys())}"
            ) from None
        self.architecture = arch
        self.attention_backend = check_choice(
            "attention_backend", attention_backend
        )
        self.conv_impl = check_choice("conv_impl", conv_impl)
        self.features = MelFeatures(
            n_mels=arch.n_mels, normalize=arch.normalize_features
        )
        self.conv1 = ConvStack(
            arch.n_mels,
            arch.conv1_channels,
            CONV1_KERNELS,
            CONV1_STRIDES,
            dropout=conv_dropout,
            conv_impl=conv_impl,
        )
        transformer = {
            "d_model": arch.d_model,
            "nhead": arch.nhead,
            "d_ffn": arch.d_ffn,
            "dropout": dropout,
            "attention_dropout": attention_dropout,
            "pos_conv_kernel": arch.pos_conv_kernel,
            "pos_conv_groups": arch.pos_conv_groups,
            "attention_backend": attention_backend,
            "activation_dropout": activation_dropout,
            "conv_impl": conv_impl,
        }
        self.transf1 = TransformerStack(arch.transf1_layers, **transformer)
        self.conv2 = ConvStack(
            arch.d_model,
            arch.conv2_channels,
            CONV2_KERNELS,
            CONV2_STRIDES,
            dropout=conv_dropout,
            conv_impl=conv_impl,
        )
        self.transf2 = TransformerStack(arch.transf2_layers, **transformer)
        self.proj = nn.Linear(arch.d_model, arch.proj_dim)
        init_bert_linears(self.proj)

    @property
    def config(self):
        """The architecture as a dict (what ``encoder_config.json`` holds)."""
        return self.architecture.to_dict()

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
        >>> encoder = S3LEncoder(**architecture("toy"))
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


def s3l_base(**options):
    """The paper's encoder (about 23 M parameters).

    Arguments
    ---------
    **options
        Non-architecture ``S3LEncoder`` arguments (dropouts,
        ``attention_backend``, ``conv_impl``).

    Returns
    -------
    S3LEncoder

    Example
    -------
    >>> s3l_base().architecture.d_model
    512
    """
    return S3LEncoder(**options, **architecture("base"))


def s3l_tiny(**options):
    """The CPU demo's 128-d encoder (``hparams/s3l_tiny.yaml``).

    Arguments
    ---------
    **options
        Non-architecture ``S3LEncoder`` arguments.

    Returns
    -------
    S3LEncoder

    Example
    -------
    >>> s3l_tiny(conv_impl="direct").architecture.proj_dim
    64
    """
    return S3LEncoder(**options, **architecture("tiny"))
