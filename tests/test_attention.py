"""MultiHeadSelfAttention: backends agree, padding is masked, errors are clear."""

import pytest
import torch
from torch import nn

import s3l_plugin.attention as attention_module
from s3l_plugin.attention import (
    MultiHeadSelfAttention,
    pad_sequences,
    unpad_sequences,
)
from s3l_plugin.lengths import padding_mask as make_padding_mask
from s3l_plugin.runtime import set_runtime_options

CPU_BACKENDS = ["math", "sdpa"]
D_MODEL, NHEAD = 16, 4
LENGTHS = torch.tensor([7, 4, 1])


def make_attention(backend, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return MultiHeadSelfAttention(D_MODEL, NHEAD, dropout, backend).eval()


def make_inputs(seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, D_MODEL, generator=generator)
    return x, make_padding_mask(LENGTHS, 7)


def test_matches_torch_multihead_attention():
    """The fused qkv layout and the key mask mean what torch means."""
    attention = make_attention("math")
    reference = nn.MultiheadAttention(D_MODEL, NHEAD, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(attention.qkv.weight)
        reference.in_proj_bias.copy_(attention.qkv.bias)
        reference.out_proj.weight.copy_(attention.out.weight)
        reference.out_proj.bias.copy_(attention.out.bias)
    x, mask = make_inputs()
    expected, _ = reference(x, x, x, key_padding_mask=mask, need_weights=False)
    torch.testing.assert_close(
        attention(x, mask), expected, atol=1e-5, rtol=1e-5
    )


def test_cpu_backends_agree_on_outputs_and_gradients():
    x, mask = make_inputs()
    weights = torch.randn(3, 7, D_MODEL) * ~mask.unsqueeze(-1)
    results = {}
    for backend in CPU_BACKENDS:
        attention = make_attention(backend)
        inputs = x.clone().requires_grad_(True)
        out = attention(inputs, mask)
        (out * weights).sum().backward()
        grads = {n: p.grad for n, p in attention.named_parameters()}
        results[backend] = (out, inputs.grad, grads)
    (out_a, dx_a, g_a), (out_b, dx_b, g_b) = results.values()
    valid = ~mask
    torch.testing.assert_close(out_a[valid], out_b[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(dx_a, dx_b, atol=1e-5, rtol=0)
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_padded_keys_are_ignored_and_no_nan(backend):
    attention = make_attention(backend)
    x, mask = make_inputs()
    out = attention(x, mask)
    assert torch.isfinite(out).all()  # padded query rows included
    scrambled = torch.where(mask.unsqueeze(-1), 1e3 * torch.randn_like(x), x)
    valid = ~mask
    torch.testing.assert_close(
        attention(scrambled, mask)[valid], out[valid], atol=1e-5, rtol=0
    )
    alone = attention(x[1:2, :4])
    torch.testing.assert_close(out[1, :4], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_attention_dropout_only_in_training(backend):
    attention = make_attention(backend, dropout=0.5)
    x, mask = make_inputs()
    assert torch.equal(attention(x, mask), attention(x, mask))
    attention.train()
    torch.manual_seed(0)
    first = attention(x, mask)
    assert not torch.allclose(first, attention(x, mask))


def test_unpad_pad_round_trip():
    x, mask = make_inputs()
    x.requires_grad_(True)
    unpadded = unpad_sequences(x, mask)
    assert unpadded.tokens.shape == (int(LENGTHS.sum()), D_MODEL)
    assert unpadded.cu_seqlens.dtype == torch.int32
    assert unpadded.cu_seqlens.tolist() == [0, 7, 11, 12]
    assert unpadded.max_seqlen == 7
    assert torch.equal(unpadded.tokens[7:11], x[1, :4])
    padded = pad_sequences(unpadded.tokens, unpadded.indices, 3, 7)
    assert torch.equal(padded, x.masked_fill(mask.unsqueeze(-1), 0.0))
    padded.sum().backward()
    assert torch.equal(x.grad, (~mask).unsqueeze(-1).expand_as(x).float())


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0):
    """CPU stand-in for flash_attn_varlen_func: one SDPA per sequence."""
    outputs = []
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        q_i, k_i, v_i = (t[start:end].transpose(0, 1) for t in (q, k, v))
        out = nn.functional.scaled_dot_product_attention(q_i, k_i, v_i)
        outputs.append(out.transpose(0, 1))
    return torch.cat(outputs)


def test_flash_path_wiring_with_stand_in_kernel(monkeypatch):
    """Unpad -> (N, H, Dh) kernel call -> bf16 round trip -> pad."""
    monkeypatch.setattr(
        attention_module, "_flash_attn_varlen_func", lambda: reference_varlen
    )
    attention = make_attention("math")
    x, mask = make_inputs()
    batch, time = mask.shape
    qkv = attention.qkv(x).view(batch, time, 3, NHEAD, -1)
    context = attention._flash_attention(qkv, mask, dropout_p=0.0)
    assert context.dtype == torch.float32  # cast back from the bf16 kernel
    assert (context[mask] == 0).all()
    valid = ~mask
    torch.testing.assert_close(
        attention.out(context)[valid],
        attention(x, mask)[valid],
        atol=5e-2,
        rtol=0,
    )


def test_backend_is_resolved_from_the_input_device(monkeypatch):
    """A GPU on the machine does not choose the backend of CPU inputs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        attention_module,
        "flash_kernel_available",
        lambda device=None: torch.device(device).type == "cuda",
    )
    x, mask = make_inputs()
    auto = MultiHeadSelfAttention(D_MODEL, NHEAD, 0.0, "auto").eval()
    assert auto.attention_backend == "auto"
    auto.load_state_dict(make_attention("sdpa").state_dict())
    torch.testing.assert_close(auto(x, mask), make_attention("sdpa")(x, mask))
    assert auto.backend_plan.key == ("auto", x.device)
    assert auto.backend_plan.plan == "sdpa"
    resolve = attention_module.resolve_attention_backend
    assert resolve("auto", "cuda") == "flash_attn"
    assert resolve("flash_attn", "cuda") == "flash_attn"


def test_explicit_flash_refuses_a_device_without_kernel():
    """Built anywhere; running on a device without a kernel says what to do."""
    x, mask = make_inputs()
    explicit = MultiHeadSelfAttention(D_MODEL, NHEAD, 0.0, "flash_attn")
    with pytest.raises(ValueError, match="attention_backend='sdpa'"):
        explicit(x, mask)
    set_runtime_options(explicit, attention_backend="sdpa")
    assert explicit(x, mask).shape == x.shape


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(ValueError, match="'math', 'sdpa', 'flash_attn'"):
        MultiHeadSelfAttention(D_MODEL, NHEAD, attention_backend="xformers")


def test_make_padding_mask_is_true_on_padding():
    mask = make_padding_mask(torch.tensor([2, 0, 3]), 3)
    assert mask.tolist() == [
        [False, False, True],
        [True, True, True],
        [False, False, False],
    ]
