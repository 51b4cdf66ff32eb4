"""CUDA-only checks: FlashAttention varlen kernels and bf16 autocast.

Skipped where CUDA (or a flash kernel) is unavailable.
"""

import pytest
import torch

import s3l_plugin.attention as attention_module
from s3l_plugin.attention import MultiHeadSelfAttention
from s3l_plugin.encoder import S3LEncoder
from s3l_plugin.features import MelFeatures
from s3l_plugin.lengths import padding_mask as make_padding_mask

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"
)
needs_flash = pytest.mark.skipif(
    not attention_module.flash_kernel_available(),
    reason="needs a FlashAttention varlen kernel (Ampere+ GPU)",
)
DEVICE = "cuda"
LENGTHS = [37, 20, 5, 1]


def relative_error(actual, expected):
    expected = expected.float()
    return ((actual.float() - expected).norm() / expected.norm()).item()


@pytest.fixture
def flash_calls(monkeypatch):
    """Counts calls of the varlen path, to prove it actually ran."""
    calls = []
    original = MultiHeadSelfAttention._flash_attention

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MultiHeadSelfAttention, "_flash_attention", spy)
    return calls


def attention_modules(d_model=64, nhead=4, dropout=0.0):
    torch.manual_seed(0)
    reference = MultiHeadSelfAttention(d_model, nhead, dropout, "math")
    modules = {"math": reference}
    for backend in ("sdpa", "flash_attn"):
        module = MultiHeadSelfAttention(d_model, nhead, dropout, backend)
        module.load_state_dict(reference.state_dict())
        modules[backend] = module
    return {k: m.to(DEVICE).eval() for k, m in modules.items()}


@needs_flash
def test_backends_agree_in_bf16(flash_calls):
    modules = attention_modules()
    lengths = torch.tensor(LENGTHS, device=DEVICE)
    mask = make_padding_mask(lengths, max(LENGTHS))
    x = torch.randn(len(LENGTHS), max(LENGTHS), 64, device=DEVICE)
    weights = torch.randn_like(x) * ~mask.unsqueeze(-1)
    results = {}
    for backend, module in modules.items():
        module.to(torch.bfloat16)
        inputs = x.bfloat16().requires_grad_(True)
        out = module(inputs, mask)
        (out.float() * weights).sum().backward()
        results[backend] = (out, inputs.grad, module.qkv.weight.grad)
    assert flash_calls
    valid = ~mask
    out_ref, dx_ref, dw_ref = results["math"]
    for backend in ("sdpa", "flash_attn"):
        out, dx, dw = results[backend]
        assert torch.isfinite(out).all()
        torch.testing.assert_close(
            out[valid].float(), out_ref[valid].float(), atol=2e-2, rtol=2e-2
        )
        assert relative_error(dx[valid], dx_ref[valid]) < 2e-2
        assert relative_error(dw, dw_ref) < 2e-2


@needs_flash
def test_flash_fp32_inputs_run_in_bf16(flash_calls):
    modules = attention_modules()
    mask = make_padding_mask(torch.tensor(LENGTHS, device=DEVICE))
    x = torch.randn(len(LENGTHS), max(LENGTHS), 64, device=DEVICE)
    out = modules["flash_attn"](x, mask)
    assert flash_calls and out.dtype == torch.float32
    valid = ~mask
    torch.testing.assert_close(
        out[valid], modules["math"](x, mask)[valid], atol=2e-2, rtol=2e-2
    )


@needs_flash
def test_auto_uses_flash_under_autocast_only(flash_calls):
    torch.manual_seed(0)
    module = MultiHeadSelfAttention(64, 4, 0.0, "auto").to(DEVICE).eval()
    x = torch.randn(2, 9, 64, device=DEVICE)
    assert module.backend_plan("auto", x.device) == "flash_attn"
    mask = make_padding_mask(torch.tensor([9, 4], device=DEVICE))
    module(x, mask)
    assert not flash_calls  # float32: exact sdpa, no silent bf16
    with torch.autocast("cuda", dtype=torch.bfloat16):
        module(x, mask)
    assert flash_calls


@needs_flash
def test_torch_varlen_dropout_falls_back_to_sdpa(monkeypatch):
    if attention_module._flash_attn_varlen_func() is not None:
        pytest.skip("flash-attn is installed: its kernel has dropout")
    monkeypatch.setattr(attention_module, "_warned_no_varlen_dropout", False)
    module = MultiHeadSelfAttention(64, 4, 0.1, "flash_attn").to(DEVICE)
    x = torch.randn(2, 9, 64, device=DEVICE, dtype=torch.bfloat16)
    module.to(torch.bfloat16).train()
    with pytest.warns(UserWarning, match="no dropout"):
        out = module(x, make_padding_mask(torch.tensor([9, 4], device=DEVICE)))
    assert torch.isfinite(out).all()


def small_encoder(backend):
    """Attention dropout 0 so that flash_attn also runs in training."""
    torch.manual_seed(0)
    return S3LEncoder(
        n_mels=32,
        d_model=64,
        nhead=4,
        d_ffn=128,
        conv1_channels=(64, 64, 64),
        conv2_channels=(128, 64),
        proj_dim=32,
        pos_conv_kernel=16,
        pos_conv_groups=4,
        attention_dropout=0.0,
        attention_backend=backend,
    ).to(DEVICE)


def random_feats(lengths, n_mels=32):
    torch.manual_seed(1)
    lengths = torch.tensor(lengths, device=DEVICE)
    feats = torch.randn(len(lengths), int(lengths.max()), n_mels, device=DEVICE)
    padding = make_padding_mask(lengths, feats.shape[1]).unsqueeze(-1)
    return feats.masked_fill(padding, 0.0), lengths


@needs_flash
def test_encoder_bf16_autocast_flash_forward_backward(flash_calls):
    flash = small_encoder("flash_attn")
    sdpa = small_encoder("sdpa")
    sdpa.load_state_dict(flash.state_dict())
    feats, lengths = random_feats([300, 180, 64])
    outputs = {}
    for name, encoder in (("flash", flash.eval()), ("sdpa", sdpa.eval())):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            encoded = encoder.encode(feats, lengths)
        outputs[name] = encoded
    assert flash_calls
    assert torch.equal(outputs["flash"].lengths, outputs["sdpa"].lengths)
    # Four bf16 layers deep: a little looser than one attention call.
    assert relative_error(outputs["flash"].out, outputs["sdpa"].out) < 3e-2

    flash_calls.clear()
    flash.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        encoded = flash.encode(feats, lengths)
        loss = flash.proj(encoded.out).float().square().mean()
    loss.backward()
    assert flash_calls
    for name, param in flash.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


@needs_flash
def test_encoder_flash_batch_invariance():
    encoder = small_encoder("flash_attn").eval()
    feats, lengths = random_feats([300, 180, 64])
    with torch.autocast("cuda", dtype=torch.bfloat16):
        batched = encoder.encode(feats, lengths)
        for i, length in enumerate(lengths.tolist()):
            alone = encoder.encode(
                feats[i : i + 1, :length], lengths[i : i + 1]
            )
            n = int(alone.lengths[0])
            assert relative_error(batched.out[i, :n], alone.out[0]) < 3e-2
            assert (batched.out[i, n:] == 0).all()


def test_features_on_cuda_match_cpu():
    features = MelFeatures()
    wavs = torch.randn(2, 16000)
    rel_lens = torch.tensor([1.0, 0.55])
    expected, expected_lens = features(wavs, rel_lens)
    feats, feat_lens = features.to(DEVICE)(wavs.to(DEVICE), rel_lens.to(DEVICE))
    assert torch.equal(feat_lens.cpu(), expected_lens)
    torch.testing.assert_close(feats.cpu(), expected, atol=1e-2, rtol=0)
