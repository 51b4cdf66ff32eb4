"""Multi-head self-attention with key padding, on interchangeable kernels.

Every backend computes the same exact attention,
``softmax(Q K^T / sqrt(d_head)) V`` over the valid keys of each utterance:

- ``math``: explicit matmuls and softmax, the reference for tests;
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with a
  broadcast (B, 1, 1, T) key mask, never a dense (B, H, T, T) one, so that
  the fused CPU/GPU kernels stay eligible;
- ``flash_attn``: FlashAttention's variable-length kernels on the unpadded
  tokens (CUDA only), from the ``flash-attn`` package when installed, else
  ``torch.nn.attention.varlen.varlen_attn``;
- ``auto``: ``flash_attn`` on a CUDA device that a kernel supports, else
  ``sdpa``.

The backend is resolved for the device of the inputs, the first time a
module sees that device (``s3l_plugin.runtime``).

Authors
 * S3L contributors 2025
"""

import importlib.util
import math
import warnings
from typing import NamedTuple

import torch
from torch import nn

from s3l_plugin.runtime import DeviceResolved, check_choice


class UnpaddedSequences(NamedTuple):
    """Valid tokens of a padded batch, in the layout of varlen kernels.

    Attributes
    ----------
    tokens : torch.Tensor
        (N, ...) valid tokens, utterance after utterance.
    indices : torch.Tensor
        (N,) long positions of the tokens in the flattened (B * T) batch.
    cu_seqlens : torch.Tensor
        (B + 1,) int32 cumulative lengths (starts with 0).
    max_seqlen : int
        Longest utterance.
    """

    tokens: torch.Tensor
    indices: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int


def unpad_sequences(x, key_padding_mask):
    """Gathers the valid tokens of a padded batch.

    Arguments
    ---------
    x : torch.Tensor
        (B, T, ...) padded batch.
    key_padding_mask : torch.Tensor
        (B, T) bool, True on padding.

    Returns
    -------
    UnpaddedSequences
        Tokens (N, ...), their flat indices, int32 ``cu_seqlens`` and the
        maximum length.

    Example
    -------
    >>> from s3l_plugin.lengths import padding_mask
    >>> x = torch.arange(6.0).view(2, 3, 1)
    >>> unpadded = unpad_sequences(x, padding_mask(torch.tensor([2, 3])))
    >>> unpadded.tokens.flatten().tolist(), unpadded.cu_seqlens.tolist()
    ([0.0, 1.0, 3.0, 4.0, 5.0], [0, 2, 5])
    >>> unpadded.max_seqlen
    3
    """
    valid = ~key_padding_mask
    seqlens = valid.sum(dim=1, dtype=torch.int32)
    cu_seqlens = nn.functional.pad(
        torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0)
    )
    indices = torch.nonzero(valid.flatten()).flatten()
    tokens = x.flatten(0, 1).index_select(0, indices)
    max_seqlen = int(seqlens.max()) if seqlens.numel() else 0
    return UnpaddedSequences(tokens, indices, cu_seqlens, max_seqlen)


def pad_sequences(tokens, indices, batch_size, max_len):
    """Scatters tokens back to a zero-padded batch (inverse of unpadding).

    Arguments
    ---------
    tokens : torch.Tensor
        (N, ...) tokens.
    indices : torch.Tensor
        (N,) their positions in the flattened (batch_size * max_len) batch.
    batch_size : int
        B.
    max_len : int
        T.

    Returns
    -------
    torch.Tensor
        (B, T, ...) batch, zero where no token lands.

    Example
    -------
    >>> from s3l_plugin.lengths import padding_mask
    >>> x = torch.arange(6.0).view(2, 3, 1)
    >>> mask = padding_mask(torch.tensor([2, 3]))
    >>> unpadded = unpad_sequences(x, mask)
    >>> pad_sequences(unpadded.tokens, unpadded.indices, 2, 3).flatten()
    tensor([0., 1., 0., 3., 4., 5.])
    """
    flat = tokens.new_zeros((batch_size * max_len, *tokens.shape[1:]))
    flat = flat.index_copy(0, indices, tokens)
    return flat.view(batch_size, max_len, *tokens.shape[1:])


def _flash_attn_varlen_func():
    """flash-attn's ``flash_attn_varlen_func`` if installed, else None."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:  # installed but broken (e.g. CUDA mismatch)
        return None
    return flash_attn_varlen_func


def _torch_varlen_attn():
    """``torch.nn.attention.varlen.varlen_attn`` if this torch has it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def flash_kernel_available(device=None):
    """Whether a variable-length FlashAttention kernel can run on ``device``.

    Needs a CUDA device of the Ampere generation or newer and either the
    ``flash-attn`` package or ``torch.nn.attention.varlen``.

    Arguments
    ---------
    device : torch.device or str, optional
        The device; None means the current CUDA device.

    Returns
    -------
    bool

    Example
    -------
    >>> flash_kernel_available("cpu")
    False
    """
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability(device) < (8, 0):
        return False
    return (
        _flash_attn_varlen_func() is not None
        or _torch_varlen_attn() is not None
    )


def resolve_attention_backend(backend, device):
    """The kernel that ``backend`` runs on ``device``.

    Arguments
    ---------
    backend : str
        One of ``runtime.ATTENTION_BACKENDS``.
    device : torch.device or str
        Where the inputs are.

    Returns
    -------
    str
        ``"math"``, ``"sdpa"`` or ``"flash_attn"``.

    Raises
    ------
    ValueError
        Unknown backend, or ``"flash_attn"`` on a device where no kernel
        can run.

    Example
    -------
    >>> resolve_attention_backend("auto", "cpu")
    'sdpa'
    """
    check_choice("attention_backend", backend)
    if backend == "auto":
        return "flash_attn" if flash_kernel_available(device) else "sdpa"
    if backend == "flash_attn" and not flash_kernel_available(device):
        raise ValueError(
            "attention backend 'flash_attn' needs a CUDA GPU (Ampere or "
            "newer) and either the flash-attn package or "
            f"torch.nn.attention.varlen; none is usable on {device}. Use "
            "attention_backend='sdpa' (or 'auto', which picks flash_attn "
            "only where it can run)."
        )
    return backend


_warned_no_varlen_dropout = False


def _warn_no_varlen_dropout():
    """Warns once per process that torch's varlen kernel has no dropout."""
    global _warned_no_varlen_dropout
    if not _warned_no_varlen_dropout:
        _warned_no_varlen_dropout = True
        warnings.warn(
            "torch.nn.attention.varlen.varlen_attn has no dropout; "
            "attention with dropout > 0 in training runs on the 'sdpa' "
            "backend instead. Install flash-attn to keep varlen kernels "
            "with dropout.",
            stacklevel=3,
        )


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention over a padded batch, masking padded keys.

    One fused Q/K/V projection and one output projection. Queries at
    padded positions attend to the valid keys (never NaN); their outputs
    are meaningless and the caller masks them. With ``flash_attn`` they are
    0 before the output projection.

    Arguments
    ---------
    d_model : int
        Model dimension.
    nhead : int
        Number of heads; must divide ``d_model``.
    dropout : float
        Dropout on the attention probabilities (training only).
    attention_backend : str
        ``"auto"``, ``"math"``, ``"sdpa"`` or ``"flash_attn"``. ``auto`` resolves to ``flash_attn`` on a
        CUDA device with a kernel, else ``sdpa``, and still runs ``sdpa``
        on inputs ``flash_attn`` cannot take (float32, or dropout without
        the flash-attn package); an explicit ``flash_attn`` raises on a
        device without a kernel and runs float32 inputs in bfloat16.

    Example
    -------
    >>> from s3l_plugin.lengths import padding_mask
    >>> attention = MultiHeadSelfAttention(16, 4, 0.0, "sdpa")
    >>> x = torch.randn(2, 5, 16)
    >>> attention(x, padding_mask(torch.tensor([5, 3]), 5)).shape
    torch.Size([2, 5, 16])
    """

    def __init__(
        self, d_model=512, nhead=8, dropout=0.1, attention_backend="auto"
    ):
        super().__init__()
        if d_model % nhead != 0:
            raise ValueError(
                f"d_model ({d_model}) must be divisible by nhead ({nhead})"
            )
        self.d_model = d_model
        self.nhead = nhead
        self.head_dim = d_model // nhead
        self.dropout = dropout
        self.attention_backend = check_choice(
            "attention_backend", attention_backend
        )
        self.backend_plan = DeviceResolved(resolve_attention_backend)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x, key_padding_mask=None):
        """Attends each frame to the valid frames of its utterance.

        Arguments
        ---------
        x : torch.Tensor
            (B, T, d_model) inputs.
        key_padding_mask : torch.Tensor, optional
            (B, T) bool, True on padding; None means no padding.

        Returns
        -------
        torch.Tensor
            (B, T, d_model) outputs.
        """
        batch_size, max_len, _ = x.shape
        if key_padding_mask is None:
            key_padding_mask = torch.zeros(
                batch_size, max_len, dtype=torch.bool, device=x.device
            )
        dropout_p = self.dropout if self.training else 0.0
        qkv = self.qkv(x).view(batch_size, max_len, 3, self.nhead, -1)
        backend = self._backend_for(qkv, dropout_p)
        if backend == "flash_attn":
            context = self._flash_attention(qkv, key_padding_mask, dropout_p)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, Dh)
            if backend == "math":
                context = _math_attention(q, k, v, key_padding_mask, dropout_p)
            else:
                context = _sdpa_attention(q, k, v, key_padding_mask, dropout_p)
            context = context.transpose(1, 2).reshape(batch_size, max_len, -1)
        return self.out(context)

    def _backend_for(self, qkv, dropout_p):
        """The backend of this call (``flash_attn`` may not take it)."""
        backend = self.backend_plan(self.attention_backend, qkv.device)
        if backend != "flash_attn":
            return backend
        half = qkv.dtype in (torch.float16, torch.bfloat16)
        if self.attention_backend == "auto" and not half:
            # Casting would silently lower float32 runs to bfloat16.
            return "sdpa"
        if dropout_p > 0 and _flash_attn_varlen_func() is None:
            _warn_no_varlen_dropout()
            return "sdpa"
        return "flash_attn"

    def _flash_attention(self, qkv, key_padding_mask, dropout_p):
        """Variable-length attention on the unpadded tokens."""
        batch_size, max_len = key_padding_mask.shape
        unpadded = unpad_sequences(qkv, key_padding_mask)
        in_dtype = unpadded.tokens.dtype
        tokens = unpadded.tokens
        # The kernels take fp16/bf16 only: float32 inputs run in bfloat16
        # and the result is cast back.
        if in_dtype not in (torch.float16, torch.bfloat16):
            tokens = tokens.to(torch.bfloat16)
        # Each (N, H, Dh); contiguous copies, as kernels expect dense rows.
        q, k, v = (t.contiguous() for t in tokens.unbind(1))
        seqs = (unpadded.cu_seqlens, unpadded.cu_seqlens)
        lens = (unpadded.max_seqlen, unpadded.max_seqlen)
        flash_varlen = _flash_attn_varlen_func()
        if flash_varlen is not None:
            context = flash_varlen(q, k, v, *seqs, *lens, dropout_p=dropout_p)
        else:  # dropout_p == 0 here, see _backend_for
            context = _torch_varlen_attn()(q, k, v, *seqs, *lens)
        context = context.reshape(context.shape[0], -1).to(in_dtype)
        return pad_sequences(context, unpadded.indices, batch_size, max_len)


def _math_attention(q, k, v, key_padding_mask, dropout_p):
    """Explicit softmax attention; q, k, v (B, H, T, Dh)."""
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(
        key_padding_mask[:, None, None, :], float("-inf")
    )
    probs = torch.softmax(scores, dim=-1)
    probs = nn.functional.dropout(probs, p=dropout_p, training=dropout_p > 0)
    return torch.matmul(probs, v)


def _sdpa_attention(q, k, v, key_padding_mask, dropout_p):
    """Torch's fused attention with a broadcast key mask (True = attend).

    On CPU a dropout_p > 0 sends SDPA to its unfused math kernel: dropout
    costs speed there, not correctness.
    """
    attend = ~key_padding_mask[:, None, None, :]
    return nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=attend, dropout_p=dropout_p
    )
