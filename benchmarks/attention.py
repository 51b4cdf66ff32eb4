#!/usr/bin/env python3
"""Forward + backward time and peak memory of 2-layer transformer stacks.

Compares, at equal size (2 layers, d 512, 8 heads, FFN 2048, post-LN, GELU,
dropout 0.1 by default):

- ``s3l-math``, ``s3l-sdpa``, ``s3l-flash_attn``: our ``TransformerStack``
  (convolutional positional embedding, LayerNorm, 2 ``TransformerLayer``)
  with each attention backend (``flash_attn`` only where a CUDA kernel
  runs);
- ``s3l-<backend>-layers``: the same stack's 2 layers alone, without the
  positional convolution in front;
- ``sb-RelPosMHAXL``, ``sb-regularMHA``, ``sb-RoPEMHA``: SpeechBrain's
  ``TransformerEncoder`` of the same size with each attention type
  (``RelPosEncXL`` relative positions for RelPosMHAXL, the absolute sine
  ``PositionalEncoding`` added to the input for regularMHA, none for RoPE
  which rotates inside the attention), padding given as
  ``src_key_padding_mask``.

The positional modules are inside the timed region of every variant. Our
stack's positional convolution (kernel 128, 2.1 M parameters) is a part of
the S3L architecture that SpeechBrain's stacks do not have; the
``-layers`` rows leave it out and compare layer with layer.

Utterances of 10, 30 and 60 s become 125, 375 and 750 frames at the 80 ms
rate of the encoder's second transformer stack (``--frame-ms 80``, the
default) or twice as many at the 40 ms rate of the first
(``--frame-ms 40``). A batch holds ``--batch`` utterances, the first of the
full duration and the others shorter (``--length-fractions``), padded.

Timing: median of ``--repeats`` interleaved runs after one warm-up each;
the loss is ``(out * r).sum()`` for a fixed random ``r``. Memory: see
``benchmarks/benchutils.py`` (CUDA allocator peak; on CPU a tracker of tensor
storages, in a separate untimed run).

Example::

    python benchmarks/attention.py --repeats 5
    python benchmarks/attention.py --frame-ms 40 --durations 10 30
    python benchmarks/attention.py --tiny   # a few seconds, for tests

Authors
 * S3L contributors 2025
"""

import sys

import torch
from benchutils import (
    autocast,
    benchmark_parser,
    count_parameters,
    describe_device,
    fmt,
    format_table,
    interleaved_medians,
    measure_peak_memory,
    memory_method,
    parse_benchmark_args,
)
from speechbrain.lobes.models.transformer.Transformer import (
    PositionalEncoding,
    TransformerEncoder,
)
from speechbrain.nnet.attention import RelPosEncXL
from torch import nn

from s3l_plugin.attention import flash_kernel_available
from s3l_plugin.lengths import padding_mask
from s3l_plugin.transformer import TransformerStack

HEADERS = [
    "duration_s",
    "frames",
    "variant",
    "params_M",
    "fwd_bwd_ms",
    "speedup_vs_math",
    "peak_MiB",
    "mem_vs_math",
]

SB_ATTENTION = ("RelPosMHAXL", "regularMHA", "RoPEMHA")


def parse_args(argv=None):
    """Command-line options.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
    """
    parser = benchmark_parser(
        __doc__,
        repeats=5,
        precision="device",
        tiny="tiny sizes and 1 repeat, to test the script",
    )
    parser.add_argument(
        "--durations",
        type=float,
        nargs="+",
        default=None,
        help="utterance durations in seconds (default 10 30 60)",
    )
    parser.add_argument(
        "--frame-ms",
        type=int,
        choices=(40, 80),
        default=80,
        help="frame rate: 80 (transf2, default) or 40 (transf1)",
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument(
        "--length-fractions",
        type=float,
        nargs="+",
        default=[1.0, 0.85, 0.7, 0.55],
        help="utterance lengths relative to the longest (cycled)",
    )
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--nhead", type=int, default=8)
    parser.add_argument("--d-ffn", type=int, default=2048)
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        help="dropout and attention dropout (0.1 in training)",
    )
    parser.add_argument("--no-memory", action="store_true")
    args = parse_benchmark_args(parser, argv)
    if args.tiny:
        args.d_model, args.nhead, args.d_ffn = 32, 4, 64
        args.repeats = 1
    if args.durations is None:
        args.durations = [2.0, 4.0] if args.tiny else [10.0, 30.0, 60.0]
    return args


class S3LVariant(nn.Module):
    """Our ``TransformerStack`` with one attention backend.

    Arguments
    ---------
    backend : str
        Attention backend.
    args : argparse.Namespace
        Sizes.
    layers_only : bool
        Run only the transformer layers (padding masked as in the stack),
        not the positional convolution, LayerNorm and dropout before them:
        the part comparable to SpeechBrain's layers.
    """

    def __init__(self, backend, args, layers_only=False):
        super().__init__()
        self.layers_only = layers_only
        tiny = args.tiny
        self.stack = TransformerStack(
            args.layers,
            args.d_model,
            args.nhead,
            args.d_ffn,
            dropout=args.dropout,
            attention_dropout=args.dropout,
            pos_conv_kernel=8 if tiny else 128,
            pos_conv_groups=4 if tiny else 16,
            attention_backend=backend,
        )

    def forward(self, x, lengths):
        """Encodes a padded batch; (B, T, d) -> (B, T, d)."""
        if not self.layers_only:
            return self.stack(x, lengths)[0]
        key_padding_mask = padding_mask(lengths, x.shape[1])
        frame_padding = key_padding_mask.unsqueeze(-1)
        for layer in self.stack.layers:
            x = layer(x, key_padding_mask).masked_fill(frame_padding, 0.0)
        return x


class SpeechBrainVariant(nn.Module):
    """SpeechBrain's ``TransformerEncoder`` with one attention type.

    Arguments
    ---------
    attention_type : str
        ``RelPosMHAXL``, ``regularMHA`` or ``RoPEMHA``.
    args : argparse.Namespace
        Sizes.
    max_len : int
        Longest sequence (for the absolute positional encoding).
    """

    def __init__(self, attention_type, args, max_len):
        super().__init__()
        self.attention_type = attention_type
        self.encoder = TransformerEncoder(
            num_layers=args.layers,
            nhead=args.nhead,
            d_ffn=args.d_ffn,
            d_model=args.d_model,
            dropout=args.dropout,
            activation=nn.GELU,
            normalize_before=False,
            attention_type=attention_type,
        )
        self.positions = None
        if attention_type == "RelPosMHAXL":
            self.positions = RelPosEncXL(args.d_model)
        elif attention_type == "regularMHA":
            self.positions = PositionalEncoding(args.d_model, max_len)

    def forward(self, x, lengths):
        """Encodes a padded batch; (B, T, d) -> (B, T, d)."""
        padding = padding_mask(lengths, x.shape[1])
        pos_embs = None
        if self.attention_type == "RelPosMHAXL":
            pos_embs = self.positions(x)
        elif self.attention_type == "regularMHA":
            x = x + self.positions(x)
        out, _ = self.encoder(
            x, src_key_padding_mask=padding, pos_embs=pos_embs
        )
        return out


def build_variants(args, max_len):
    """Every variant that can run here, by name.

    Arguments
    ---------
    args : argparse.Namespace
        Options.
    max_len : int
        Longest sequence.

    Returns
    -------
    dict
        Name -> module (on the device, in train mode).
    """
    backends = ["math", "sdpa"]
    if flash_kernel_available(args.device):
        backends.append("flash_attn")
    variants = {}
    for backend in backends:
        torch.manual_seed(args.seed)
        variants[f"s3l-{backend}"] = S3LVariant(backend, args)
    for backend in backends:
        torch.manual_seed(args.seed)
        variants[f"s3l-{backend}-layers"] = S3LVariant(
            backend, args, layers_only=True
        )
    for attention_type in SB_ATTENTION:
        torch.manual_seed(args.seed)
        variants[f"sb-{attention_type}"] = SpeechBrainVariant(
            attention_type, args, max_len
        )
    return {
        name: module.to(args.device).train()
        for name, module in variants.items()
    }


def make_step(module, x, lengths, grad_seed, args, precision):
    """One forward + backward of ``module`` as a closure.

    Arguments
    ---------
    module : torch.nn.Module
        A variant.
    x : torch.Tensor
        (B, T, d) inputs.
    lengths : torch.Tensor
        (B,) valid frames.
    grad_seed : torch.Tensor
        (B, T, d) weights of the scalar loss.
    args : argparse.Namespace
        Options.
    precision : str
        Autocast precision.

    Returns
    -------
    callable
    """

    def step():
        for param in module.parameters():
            param.grad = None
        with autocast(args.device, precision):
            out = module(x, lengths)
        (out.float() * grad_seed).sum().backward()

    return step


def frames_of(duration, frame_ms):
    """Encoder frames of an utterance (125 per 10 s at 80 ms)."""
    return int(round(duration * 1000 / frame_ms))


def run(args):
    """Runs the benchmark and prints its table.

    Arguments
    ---------
    args : argparse.Namespace
        Options.

    Returns
    -------
    list of list
        The table's rows.
    """
    device = torch.device(args.device)
    max_frames = max(frames_of(d, args.frame_ms) for d in args.durations)
    variants = build_variants(args, max_frames)
    params = {
        name: count_parameters(
            module.stack.layers
            if getattr(module, "layers_only", False)
            else module
        )
        / 1e6
        for name, module in variants.items()
    }
    rows = []
    for precision in args.precision:
        for duration in args.durations:
            frames = frames_of(duration, args.frame_ms)
            fractions = [
                args.length_fractions[i % len(args.length_fractions)]
                for i in range(args.batch)
            ]
            lengths = torch.tensor(
                [max(1, round(frames * f)) for f in fractions],
                device=device,
            )
            generator = torch.Generator(device=device).manual_seed(args.seed)
            shape = (args.batch, frames, args.d_model)
            x = torch.randn(shape, generator=generator, device=device)
            grad_seed = torch.randn(shape, generator=generator, device=device)
            steps = {
                name: make_step(module, x, lengths, grad_seed, args, precision)
                for name, module in variants.items()
            }
            medians = interleaved_medians(steps, args.repeats, device)
            memory = {
                name: None
                if args.no_memory
                else measure_peak_memory(step, device)
                for name, step in steps.items()
            }
            base_time = medians["s3l-math"][0]
            base_memory = memory["s3l-math"]
            for name in steps:
                seconds = medians[name][0]
                peak = memory[name]
                rows.append(
                    [
                        f"{duration:g}"
                        + ("" if len(args.precision) == 1 else f" {precision}"),
                        frames,
                        name,
                        fmt(params[name]),
                        fmt(seconds * 1e3, 1),
                        fmt(base_time / seconds),
                        fmt(peak, 1),
                        fmt(None if peak is None else peak / base_memory),
                    ]
                )
    return rows


def main(argv=None):
    """Entry point: parses ``argv``, runs, prints the table.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    list of list
        The table's rows.
    """
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    print(
        f"# Transformer stack forward+backward: {args.layers} layers, "
        f"d {args.d_model}, {args.nhead} heads, FFN {args.d_ffn}, dropout "
        f"{args.dropout}, batch {args.batch} padded to the longest "
        f"(lengths x{args.length_fractions}), {args.frame_ms} ms frames "
        f"({'transf2' if args.frame_ms == 80 else 'transf1'} rate), "
        f"precision {'/'.join(args.precision)}"
    )
    print(f"# device: {describe_device(args.device)}")
    print(
        f"# time: median of {args.repeats} interleaved runs after 1 warm-up"
        f"; speedup_vs_math = time(s3l-math) / time; {memory_method(args.device)}"
        "; mem_vs_math = peak / peak(s3l-math)"
    )
    rows = run(args)
    print(format_table(HEADERS, rows))
    sys.stdout.flush()
    return rows


if __name__ == "__main__":
    main()
