"""STUB of ``flash_attn.modules.mha``: ``MHA`` on torch's SDPA.

flash_attn's kernels need CUDA; this keeps ``MHA``'s constructor, its
parameters (``Wqkv``, ``out_proj``) and its self-attention ``forward`` so
that the reference model builds and trains unchanged on any device.
"""

import torch.nn.functional as F
from torch import nn


class MHA(nn.Module):
    """Self-attention with ``flash_attn.modules.mha.MHA``'s interface.

    Arguments
    ---------
    embed_dim : int
        Model dimension.
    num_heads : int
        Attention heads.
    dropout : float
        Attention-weight dropout (training mode only).
    softmax_scale : float, optional
        Scale of the scores (default 1 / sqrt(head dim)).
    causal : bool
        Causal attention.
    qkv_proj_bias, out_proj_bias : bool
        Biases of the projections.
    use_flash_attn : bool
        Ignored (SDPA picks its own kernel).
    **unsupported
        Any other flash_attn option: refused, this stub does not do it.
    """

    def __init__(
        self,
        embed_dim,
        num_heads,
        dropout=0.0,
        softmax_scale=None,
        causal=False,
        qkv_proj_bias=True,
        out_proj_bias=True,
        use_flash_attn=False,
        **unsupported,
    ):
        super().__init__()
        if unsupported:
            raise TypeError(
                f"flash_attn stub: unsupported {sorted(unsupported)}"
            )
        self.num_heads = num_heads
        self.dropout = dropout
        self.softmax_scale = softmax_scale
        self.causal = causal
        self.Wqkv = nn.Linear(embed_dim, 3 * embed_dim, bias=qkv_proj_bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=out_proj_bias)

    def forward(self, x, key_padding_mask=None):
        """Attention of ``x`` (B, T, D); ``key_padding_mask`` True = keep."""
        batch, frames, _ = x.shape
        q, k, v = (
            self.Wqkv(x)
            .view(batch, frames, 3, self.num_heads, -1)
            .permute(2, 0, 3, 1, 4)
        )
        mask = None
        if key_padding_mask is not None:
            mask = key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal,
            scale=self.softmax_scale,
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, frames, -1))
