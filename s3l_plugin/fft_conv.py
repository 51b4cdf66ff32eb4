"""Grouped 1-D convolution computed with real FFTs.

The positional convolution of each transformer stack (METHOD.md 2: Conv1d
512 -> 512, kernel 128, groups 16) is the most expensive convolution of
the S3L encoder when computed directly: 128 taps per output. Through the
FFT it costs one real FFT per channel and a 32 x 32 complex product per
frequency bin and group. The result is the same linear map (exact in exact
arithmetic; float32 rounding differs by about 1e-6 relative).

The backward pass is written out (instead of differentiating through
``torch.fft``) because autograd's ``rfft`` backward pads to a full complex
spectrum and runs a complex FFT, which made it slower than the direct
convolution. Here, with ``G`` the spectrum of the output gradient:
``grad_x = irfft(G conj(W))``, ``grad_w = irfft(conj(X) G)`` (flipped),
the two circular correlations that are the adjoints of the convolution.

Authors
 * S3L contributors 2025
"""

import torch


def fft_size(length):
    """Smallest 2-3-5-smooth integer >= ``length`` (fast for pocketfft/cuFFT).

    Arguments
    ---------
    length : int
        Minimum size.

    Returns
    -------
    int

    Example
    -------
    >>> fft_size(497), fft_size(500), fft_size(1)
    (500, 500, 1)
    """
    size = max(int(length), 1)
    while True:
        rest = size
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return size
        size += 1


def _group_spectrum(spectrum, groups):
    """(B, F, C) -> (F, groups, B, C // groups), the matmul layout."""
    batch, bins, channels = spectrum.shape
    grouped = spectrum.view(batch, bins, groups, channels // groups)
    return grouped.permute(1, 2, 0, 3)


def _ungroup_spectrum(grouped):
    """(F, groups, B, C_g) -> (B, F, groups * C_g)."""
    bins, groups, batch, channels = grouped.shape
    return grouped.permute(2, 0, 1, 3).reshape(batch, bins, -1)


class _FFTConv1d(torch.autograd.Function):
    """Autograd function of ``fft_conv1d`` (float32 inputs)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, groups):
        """(B, T, C_in) -> (B, T_out, C_out), see ``fft_conv1d``."""
        length = x.shape[1]
        out_channels, group_in, kernel = weight.shape
        out_length = length + 2 * padding - kernel + 1
        size = fft_size(length + kernel - 1)
        # (F, groups, C_g_in, C_g_out) spectrum of the flipped kernels (a
        # convolution with them is torch's cross-correlation), transformed
        # along a leading axis so that no complex tensor needs transposing.
        kernels = weight.flip(-1).view(
            groups, out_channels // groups, group_in, kernel
        )
        kernel_spectrum = torch.fft.rfft(
            kernels.permute(3, 0, 2, 1).contiguous(), n=size, dim=0
        )
        x_spectrum = _group_spectrum(torch.fft.rfft(x, n=size, dim=1), groups)
        y_spectrum = torch.matmul(x_spectrum, kernel_spectrum)
        full = torch.fft.irfft(_ungroup_spectrum(y_spectrum), n=size, dim=1)
        start = kernel - 1 - padding
        y = full[:, start : start + out_length]
        if bias is not None:
            y = y + bias
        else:
            y = y.contiguous()
        ctx.save_for_backward(x_spectrum, kernel_spectrum)
        ctx.shapes = (length, kernel, size, start, groups, bias is not None)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        """Adjoint correlations in the frequency domain."""
        x_spectrum, kernel_spectrum = ctx.saved_tensors
        length, kernel, size, start, groups, has_bias = ctx.shapes
        grad_x = grad_weight = grad_bias = None
        # The output gradient placed where the forward took its frames.
        grad_full = torch.nn.functional.pad(
            grad_y, (0, 0, start, size - start - grad_y.shape[1])
        )
        grad_spectrum = _group_spectrum(
            torch.fft.rfft(grad_full, n=size, dim=1), groups
        )
        if ctx.needs_input_grad[0]:
            # G W^H, as conj(conj(G) W^T): the conjugation and transpose
            # then touch the small gradient, not the kernel spectrum.
            grad_x_spectrum = torch.matmul(
                grad_spectrum.conj(), kernel_spectrum.transpose(-1, -2)
            ).conj()
            grad_x = torch.fft.irfft(
                _ungroup_spectrum(grad_x_spectrum), n=size, dim=1
            )[:, :length]
        if ctx.needs_input_grad[1]:
            # X^H G: (F, groups, C_g_in, C_g_out), back to (K, ...) along
            # the leading axis, then to the (C_out, C_g_in, K) layout.
            grad_kernel_spectrum = torch.matmul(
                x_spectrum.conj().transpose(-1, -2), grad_spectrum
            )
            grad_kernels = torch.fft.irfft(grad_kernel_spectrum, n=size, dim=0)[
                :kernel
            ]
            _, _, group_in, group_out = grad_kernels.shape
            grad_weight = (
                grad_kernels.permute(1, 3, 2, 0)
                .reshape(groups * group_out, group_in, kernel)
                .flip(-1)
            )
        if has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_y.sum(dim=(0, 1))
        return grad_x, grad_weight, grad_bias, None, None


def fft_conv1d(x, weight, bias=None, padding=0, groups=1):
    """``conv1d`` over (B, T, C) inputs, computed with real FFTs.

    Same result as ``torch.nn.functional.conv1d`` on ``x.transpose(1, 2)``
    (zero padding, stride 1, dilation 1), transposed back. Runs in float32
    whatever the autocast state (``torch.fft`` has no bfloat16 kernels on
    CPU); the result has the input's dtype.

    Arguments
    ---------
    x : torch.Tensor
        (B, T, C_in) inputs.
    weight : torch.Tensor
        (C_out, C_in // groups, K) kernels.
    bias : torch.Tensor, optional
        (C_out,) bias.
    padding : int
        Zeros on each side, at most ``K - 1``.
    groups : int
        Channel groups.

    Returns
    -------
    torch.Tensor
        (B, T + 2 * padding - K + 1, C_out).

    Example
    -------
    >>> x, w = torch.randn(2, 20, 8), torch.randn(8, 2, 6)
    >>> direct = torch.nn.functional.conv1d(
    ...     x.transpose(1, 2), w, padding=3, groups=4
    ... ).transpose(1, 2)
    >>> torch.allclose(fft_conv1d(x, w, padding=3, groups=4), direct,
    ...                atol=1e-5)
    True
    """
    kernel = weight.shape[-1]
    if not 0 <= padding < kernel:
        raise ValueError(f"padding must be in [0, {kernel - 1}], got {padding}")
    if x.shape[-1] != weight.shape[1] * groups:
        raise ValueError(
            f"x has {x.shape[-1]} channels, weight expects "
            f"{weight.shape[1] * groups}"
        )
    with torch.autocast(x.device.type, enabled=False):
        y = _FFTConv1d.apply(
            x.float(),
            weight.float(),
            None if bias is None else bias.float(),
            padding,
            groups,
        )
    return y.to(x.dtype)
