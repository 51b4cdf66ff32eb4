"""FFT and matmul convolutions: the same maps and gradients as nn.Conv1d."""

import pytest
import torch
from torch import nn

from s3l_plugin.conv import ConvStack, conv1d_frames
from s3l_plugin.encoder import S3LEncoder, architecture
from s3l_plugin.fft_conv import _FFTConv1d, fft_conv1d, fft_size
from s3l_plugin.predictor import Predictor
from s3l_plugin.runtime import set_runtime_options
from s3l_plugin.transformer import ConvPositionalEmbedding


def direct_conv(x, weight, bias, padding, groups):
    y = nn.functional.conv1d(
        x.transpose(1, 2), weight, bias, padding=padding, groups=groups
    )
    return y.transpose(1, 2)


@pytest.mark.parametrize(
    "length, kernel, padding, groups",
    [(37, 8, 4, 4), (5, 8, 7, 2), (64, 1, 0, 1), (50, 16, 0, 8)],
)
def test_fft_conv_matches_conv1d_with_gradients(
    length, kernel, padding, groups
):
    torch.manual_seed(0)
    x = torch.randn(3, length, 16, requires_grad=True)
    weight = torch.randn(16, 16 // groups, kernel, requires_grad=True)
    bias = torch.randn(16, requires_grad=True)
    grad = torch.randn(3, length + 2 * padding - kernel + 1, 16)
    expected = direct_conv(x, weight, bias, padding, groups)
    expected_grads = torch.autograd.grad(expected, (x, weight, bias), grad)
    got = fft_conv1d(x, weight, bias, padding, groups)
    got_grads = torch.autograd.grad(got, (x, weight, bias), grad)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def test_fft_conv_backward_passes_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 11, 8, dtype=torch.double, requires_grad=True)
    weight = torch.randn(8, 2, 6, dtype=torch.double, requires_grad=True)
    bias = torch.randn(8, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: _FFTConv1d.apply(x, w, b, 3, 4), (x, weight, bias)
    )


def test_fft_conv_keeps_dtype_and_computes_in_float32_under_autocast():
    torch.manual_seed(0)
    x = torch.randn(2, 30, 8)
    weight = torch.randn(8, 4, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fft_conv1d(x, weight, padding=2, groups=2)
    assert y.dtype == torch.float32
    torch.testing.assert_close(
        y, direct_conv(x, weight, None, 2, 2), atol=1e-4, rtol=1e-4
    )
    assert fft_conv1d(x.bfloat16(), weight, padding=2, groups=2).dtype == (
        torch.bfloat16
    )


def test_fft_conv_rejects_bad_arguments():
    x = torch.randn(1, 10, 8)
    with pytest.raises(ValueError, match="padding"):
        fft_conv1d(x, torch.randn(8, 8, 3), padding=3)
    with pytest.raises(ValueError, match="channels"):
        fft_conv1d(x, torch.randn(8, 3, 3), groups=2)


def test_fft_size_is_smooth_and_large_enough():
    for length in range(1, 600):
        size = fft_size(length)
        assert size >= length
        rest = size
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        assert rest == 1


@pytest.mark.parametrize(
    "kernel, stride, padding", [(5, 2, "valid"), (1, 1, 0), (4, 1, "same")]
)
def test_matmul_conv_matches_conv1d_with_gradients(kernel, stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 10, kernel, stride=stride, padding=padding)
    x = torch.randn(3, 23, 6, requires_grad=True)
    expected = conv1d_frames(x, conv, "direct")
    got = conv1d_frames(x, conv, "matmul")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(got)
    params = (x, conv.weight, conv.bias)
    for g, e in zip(
        torch.autograd.grad(got, params, grad),
        torch.autograd.grad(expected, params, grad),
    ):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_bad_conv_impl_is_rejected():
    with pytest.raises(ValueError, match="conv_impl"):
        ConvStack(4, (4,), (3,), conv_impl="winograd")
    with pytest.raises(ValueError, match="conv_impl"):
        S3LEncoder(**architecture("toy"), conv_impl="winograd")


def test_pos_conv_auto_uses_fft_only_where_it_pays(monkeypatch):
    torch.manual_seed(0)
    pos_conv = ConvPositionalEmbedding(16, kernel_size=8, groups=4)
    calls = []
    import s3l_plugin.transformer as transformer_module
    from s3l_plugin.runtime import FFT_NO_GRAD_MAX_FRAMES

    def counting_fft_conv1d(*args, **kwargs):
        calls.append(args[0].shape[1])
        return fft_conv1d(*args, **kwargs)

    monkeypatch.setattr(transformer_module, "fft_conv1d", counting_fft_conv1d)
    long = torch.randn(1, FFT_NO_GRAD_MAX_FRAMES + 1, 16)
    pos_conv(long)  # training: gradients wanted -> FFT
    with torch.no_grad():
        pos_conv(long)  # no gradient, long -> direct
        pos_conv(long[:, :100])  # no gradient, short -> FFT
    assert calls == [long.shape[1], 100]


@pytest.mark.parametrize("conv_impl", ["fft", "direct"])
def test_encoder_conv_impls_agree(conv_impl):
    torch.manual_seed(0)
    auto = S3LEncoder(**architecture("toy")).train()
    other = S3LEncoder(**architecture("toy"), conv_impl=conv_impl).train()
    other.load_state_dict(auto.state_dict())
    wavs, wav_lens = torch.randn(3, 16000), torch.tensor([1.0, 0.6, 0.35])
    torch.manual_seed(1)
    out_auto = auto(wavs, wav_lens)
    out_auto.square().sum().backward()
    torch.manual_seed(1)
    out_other = other(wavs, wav_lens)
    out_other.square().sum().backward()
    torch.testing.assert_close(out_other, out_auto, atol=1e-4, rtol=1e-4)
    for (name, p_auto), p_other in zip(
        auto.named_parameters(), other.parameters()
    ):
        if p_auto.grad is not None:
            torch.testing.assert_close(
                p_other.grad, p_auto.grad, atol=1e-3, rtol=1e-3, msg=name
            )


def test_predictor_same_padding_matmul_matches_direct():
    torch.manual_seed(0)
    predictor = Predictor(8, (8, 8, 8), (5, 4, 1)).eval()
    x, lengths = torch.randn(2, 12, 8), torch.tensor([12, 7])
    expected = predictor(x, lengths)
    set_runtime_options(predictor, conv_impl="direct")
    assert {
        layer.conv_impl
        for layer in predictor.modules()
        if hasattr(layer, "conv_impl")
    } == {"direct"}
    torch.testing.assert_close(
        predictor(x, lengths), expected, atol=1e-5, rtol=1e-5
    )


def test_direct_reaches_every_conv_of_the_models(monkeypatch):
    """``conv_impl="direct"`` (all off) runs every convolution as
    ``nn.Conv1d``: encoder, predictor and CTC head alike."""
    from s3l_plugin.ctc import CTCHead

    calls = []
    original = nn.Conv1d._conv_forward

    def counting_conv(self, *args):
        calls.append(self)
        return original(self, *args)

    monkeypatch.setattr(nn.Conv1d, "_conv_forward", counting_conv)
    encoder = S3LEncoder(**architecture("toy"), conv_impl="direct")
    predictor = Predictor(16, (16, 16), (5, 1), conv_impl="direct")
    head = CTCHead(16, channels=8, vocab_size=5, conv_impl="direct")
    convs = [
        m
        for model in (encoder, predictor, head)
        for m in model.modules()
        if isinstance(m, nn.Conv1d)
    ]
    with torch.no_grad():
        out = encoder(torch.randn(2, 8000))
        predictor(out, torch.tensor([3, 3]))
        head(out, torch.tensor([3, 3]))
    assert {id(m) for m in calls} == {id(m) for m in convs}


def test_ctc_head_matmul_matches_direct():
    from s3l_plugin.ctc import CTCHead

    torch.manual_seed(0)
    head = CTCHead(16, channels=8, vocab_size=5).eval()
    x, lengths = torch.randn(2, 6, 16), torch.tensor([6, 3])
    logits, _ = head(x, lengths)
    set_runtime_options(head, conv_impl="direct")
    torch.testing.assert_close(
        head(x, lengths)[0], logits, atol=1e-5, rtol=1e-5
    )
