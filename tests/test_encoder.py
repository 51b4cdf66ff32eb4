"""S3LEncoder and its conv stacks: sizes, lengths, masking and x8 alignment."""

import copy

import pytest
import torch
from torch import nn

from s3l_plugin.conv import ConvStack
from s3l_plugin.encoder import S3LEncoder, architecture
from s3l_plugin.transformer import ConvPositionalEmbedding, TransformerStack


def tiny_encoder(**overrides):
    torch.manual_seed(0)
    config = {**architecture("toy", transf2_layers=2), **overrides}
    return S3LEncoder(**config).eval()


def random_feats(lengths, n_mels=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lengths), max(lengths), n_mels, generator=generator)
    lengths = torch.tensor(lengths)
    padding = torch.arange(feats.shape[1]) >= lengths.unsqueeze(1)
    return feats.masked_fill(padding.unsqueeze(-1), 0.0), lengths


def test_default_size_and_layout():
    encoder = S3LEncoder(attention_backend="sdpa")
    num_params = sum(p.numel() for p in encoder.parameters())
    assert 20e6 <= num_params <= 26e6
    assert encoder.proj.weight.shape == (256, 512)
    assert len(encoder.transf1.layers) == len(encoder.transf2.layers) == 2
    assert encoder.downsampling == S3LEncoder.downsampling == 8
    assert encoder.min_input_frames == 29
    assert encoder.features.n_mels == 128


def test_bert_init_of_linears():
    encoder = S3LEncoder(attention_backend="sdpa")
    linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 4 * 4 + 1  # qkv, out, 2 FFN per layer; proj
    for linear in linears:
        assert abs(linear.weight.std().item() - 0.02) < 1e-3
        assert (linear.bias == 0).all()


def test_shapes_and_lengths_from_samples():
    encoder = tiny_encoder()
    wavs = torch.randn(3, 16000)
    rel_lens = torch.tensor([1.0, 0.5, 0.3])
    out, layers = encoder(wavs, rel_lens, return_layers=True)
    # 16000 / 8000 / 4800 samples -> 101 / 51 / 31 frames -> 10 / 3 / 1.
    assert encoder.output_lengths(torch.tensor([101, 51, 31])).tolist() == [
        10,
        3,
        1,
    ]
    assert out.shape == (3, 10, 16)
    assert [layer.shape[1] for layer in layers] == [23, 10, 10]
    feats, feat_lens = encoder.features(wavs, rel_lens)
    encoded = encoder.encode(feats, feat_lens, return_layers=True)
    assert encoded.lengths.tolist() == [10, 3, 1]
    assert [lens.tolist() for lens in encoded.layer_lengths] == [
        [23, 10, 5],
        [10, 3, 1],
        [10, 3, 1],
    ]
    assert torch.equal(encoded.out, out)
    assert (encoded.out[1, 3:] == 0).all() and (encoded.out[2, 1:] == 0).all()
    assert encoder.encode(feats, feat_lens).layers == []


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_outputs_do_not_depend_on_the_batch(backend):
    encoder = tiny_encoder(attention_backend=backend)
    feats, lengths = random_feats([160, 97, 45])
    batched = encoder.encode(feats, lengths, return_layers=True)
    for i, length in enumerate(lengths.tolist()):
        alone = encoder.encode(
            feats[i : i + 1, :length], lengths[i : i + 1], return_layers=True
        )
        n = int(alone.lengths[0])
        assert batched.lengths[i] == n
        torch.testing.assert_close(
            batched.out[i, :n], alone.out[0], atol=1e-5, rtol=0
        )
        assert (batched.out[i, n:] == 0).all()
        for layer_b, layer_a, lens in zip(
            batched.layers, alone.layers, batched.layer_lengths
        ):
            m = int(lens[i])
            assert layer_a.shape[1] == m
            torch.testing.assert_close(
                layer_b[i, :m], layer_a[0], atol=1e-5, rtol=0
            )
            assert (layer_b[i, m:] == 0).all()


def test_waveform_forward_does_not_depend_on_the_batch():
    encoder = tiny_encoder(attention_backend="sdpa")
    wavs = torch.randn(2, 12000)
    wavs[1, 7000:] = 5.0  # garbage padding must not leak
    out = encoder(wavs, torch.tensor([1.0, 7000 / 12000]))
    alone = encoder(wavs[1:, :7000])
    n = alone.shape[1]
    torch.testing.assert_close(out[1, :n], alone[0], atol=1e-5, rtol=0)


def test_prepending_8l_frames_adds_l_output_frames():
    encoder = tiny_encoder(attention_backend="sdpa")
    feats, lengths = random_feats([120, 77])
    base_lengths = encoder.output_lengths(lengths)
    for left, right in [(1, 0), (3, 2), (16, 16)]:
        shifted_lengths = lengths + 8 * (left + right)
        assert torch.equal(
            encoder.output_lengths(shifted_lengths),
            base_lengths + left + right,
        )
        shifted = nn.functional.pad(feats, (0, 0, 8 * left, 8 * right))
        out = encoder.encode(shifted, shifted_lengths)
        assert torch.equal(out.lengths, base_lengths + left + right)


def test_conv_stacks_align_exactly_after_a_x8_shift():
    """Without attention and pos-conv, shifted frames are equal after crop."""
    encoder = tiny_encoder()
    feats, lengths = random_feats([120, 77])

    def convs(x, lens):
        x, lens = encoder.conv1(x, lens)
        return encoder.conv2(x, lens)

    base, base_lengths = convs(feats, lengths)
    left = 3
    shifted = nn.functional.pad(feats, (0, 0, 8 * left, 0))
    out, out_lengths = convs(shifted, lengths + 8 * left)
    assert torch.equal(out_lengths, base_lengths + left)
    for i, n in enumerate(base_lengths.tolist()):
        torch.testing.assert_close(
            out[i, left : left + n], base[i, :n], atol=1e-6, rtol=0
        )


def test_too_short_input_names_the_minimum_duration():
    encoder = tiny_encoder()
    feats, lengths = random_feats([40, 29])
    assert encoder.encode(feats, lengths).lengths.tolist() == [2, 1]
    with pytest.raises(ValueError, match=r"29 feature frames \(0.28 s"):
        encoder.encode(*random_feats([40, 28]))
    with pytest.raises(ValueError, match="0.28 s"):
        encoder(torch.randn(1, 28 * 160 - 1))


def test_output_lengths_match_outputs():
    encoder = tiny_encoder()
    for length in [29, 36, 37, 44, 45, 100, 131]:
        feats, lengths = random_feats([length])
        encoded = encoder.encode(feats, lengths)
        assert encoded.out.shape[1] == encoded.lengths[0]
        assert encoder.output_lengths(lengths)[0] == encoded.lengths[0]


def test_every_parameter_but_proj_gets_a_gradient():
    encoder = tiny_encoder().train()
    feats, lengths = random_feats([80, 50])
    encoder.encode(feats, lengths).out.square().sum().backward()
    for name, param in encoder.named_parameters():
        if name.startswith("proj."):
            assert param.grad is None
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_dropout_only_in_training():
    encoder = tiny_encoder()
    feats, lengths = random_feats([80, 50])
    assert torch.equal(
        encoder.encode(feats, lengths).out, encoder.encode(feats, lengths).out
    )
    encoder.train()
    assert not torch.equal(
        encoder.encode(feats, lengths).out, encoder.encode(feats, lengths).out
    )


def test_deepcopy_gives_the_same_encoder():
    encoder = tiny_encoder()
    twin = copy.deepcopy(encoder)
    feats, lengths = random_feats([80, 50])
    assert torch.equal(
        encoder.encode(feats, lengths).out, twin.encode(feats, lengths).out
    )
    assert twin.state_dict().keys() == encoder.state_dict().keys()


def test_bf16_autocast_on_cpu():
    encoder = tiny_encoder(attention_backend="sdpa")
    feats, lengths = random_feats([80, 50])
    expected = encoder.encode(feats, lengths).out
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder.encode(feats, lengths).out
    assert torch.isfinite(out).all()
    assert (out.float() - expected).abs().max() < 0.2


def test_pos_conv_is_weight_normed_and_length_preserving():
    pos_conv = ConvPositionalEmbedding(16, kernel_size=8, groups=4)
    assert hasattr(pos_conv.conv.parametrizations, "weight")
    x = torch.randn(2, 10, 16)
    y = pos_conv(x, torch.tensor([10, 6]))
    assert y.shape == x.shape
    # Frame 5 of the short utterance sees zeros past frame 6, not x.
    alone = pos_conv(x[1:2, :6])
    torch.testing.assert_close(y[1, :6], alone[0], atol=1e-6, rtol=0)


def test_transformer_stack_returns_each_layer():
    stack = TransformerStack(
        3,
        16,
        4,
        32,
        pos_conv_kernel=8,
        pos_conv_groups=4,
        attention_backend="math",
    ).eval()
    out, layers = stack(torch.randn(2, 9, 16), torch.tensor([9, 5]))
    assert len(layers) == 3 and torch.equal(out, layers[-1])
    assert not torch.equal(layers[0], layers[1])


def test_conv_stack_lengths_and_same_padding():
    valid = ConvStack(4, (8, 8), (5, 3), (2, 1))
    assert valid.output_lengths(torch.tensor([5, 8, 9, 20])).tolist() == [
        0,
        0,
        1,
        6,
    ]
    assert valid.min_input_length() == 9 and valid.stride == 2
    same = ConvStack(4, (8, 8), (5, 3), padding="same").eval()
    x = torch.randn(2, 12, 4)
    x[1, 6:] = 7.0  # garbage padding
    y, lengths = same(x, torch.tensor([12, 6]))
    assert lengths.tolist() == [12, 6]
    alone, _ = same(x[1:2, :6], torch.tensor([6]))
    torch.testing.assert_close(y[1, :6], alone[0], atol=1e-6, rtol=0)
    assert (y[1, 6:] == 0).all()
    with pytest.raises(ValueError, match="strides"):
        ConvStack(4, (8,), (3,), (2,), padding="same")


@pytest.mark.parametrize(
    "name, size", [("s3l_tiny.yaml", "tiny"), ("s3l.yaml", "base")]
)
def test_named_sizes_are_the_pretraining_configs(name, size):
    """build_encoder(size=...) gives the encoder the YAML pretrains."""
    import os

    from hyperpyyaml import load_hyperpyyaml

    from s3l_plugin.encoder import EncoderArchitecture

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "hparams", name), encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin)
    named = EncoderArchitecture(**architecture(size))
    assert hparams["encoder"].architecture == named


def test_architecture_is_listed_once():
    """The encoder's config is its architecture, runtime knobs aside."""
    from s3l_plugin.encoder import EncoderArchitecture

    encoder = tiny_encoder(conv_impl="direct", attention_backend="math")
    assert tuple(encoder.config) == EncoderArchitecture.keys()
    assert (encoder.conv_impl, encoder.attention_backend) == ("direct", "math")
    with pytest.raises(TypeError, match="unknown arguments.*'d_modle'"):
        S3LEncoder(d_modle=16)
