#!/usr/bin/env python3
"""Throughput and peak memory of one full pretraining step, S3L vs others.

Every variant trains on the same random waveforms (``--batch`` utterances
of ``--seconds``, default 4 x 15 s) on the same machine, in one run,
interleaved (repeat 1 of every variant and precision, then repeat 2, ...),
after one warm-up step each; the median step time is reported.

Variants
--------
``s3l``
    The S3L step exactly as the recipe runs it: ``s3l_forward`` (features
    of clean and noisy audio in one call, white-noise augmentation,
    SpecAugment, student, random shift, teacher under ``no_grad``),
    ``ContrastiveLoss``, backward, gradient clipping at 10, AdamW (the
    recipe's settings), ``EMATeacher.update``. Attention ``auto`` (FlashAttention
    on CUDA, SDPA elsewhere).
``s3l-all-off``
    S3L with every project optimisation off: ``math`` attention, fp32,
    ``nn.Conv1d`` convolutions everywhere (``conv_impl="direct"``: no
    unfolded matmuls, no FFT positional convolution), AdamW's default
    (foreach) implementation, and a teacher run as a plain forward with
    autograd on (its parameters require gradients, as in a naive copy of
    the student) whose projected output is detached after (projection over
    all frames, then the crop).
``bestrq``
    SpeechBrain's BEST-RQ pretraining step, as its LibriSpeech recipe
    (``BEST-RQ.yaml`` / ``train.py``): ``Fbank(80)``, sentence
    ``InputNormalization``, ``RandomProjectionQuantizer`` targets (16-d
    codes, 8192 entries) on stacked frames, masking (p 0.15, length 4,
    noise N(0, 0.1)), ``ConvolutionFrontEnd`` (2 blocks, x4), conformer
    ``TransformerASR`` through ``EncoderWrapper`` with ``RelPosMHAXL``
    (d 576, 8 heads, pre-LN, GELU), ``Linear(576 -> 8192)`` and
    cross-entropy on the masked frames, clipping at 10, AdamW. Scaled to
    S3L's size with 3 conformer layers and FFN 1536 (the recipe has 12 and
    2048, 94 M parameters); both parameter counts are printed.
``reference`` (``--reference PATH``)
    The authors' S3LSpeech pretraining step (Orange-OpenSource/s3lspeech),
    imported from ``PATH``, never copied here: ``S3LSpeech`` built from its
    own ``S3LSpeechConfig`` (the paper's base size, its own layer code),
    ``pretrain_model(batch, 0)`` (SpecAugment, student and predictor,
    shifted teacher under ``no_grad``, EMA update, negatives sampling and
    contrastive loss) under autocast as Lightning's ``bf16-mixed``, then
    backward, its AdamW and OneCycleLR steps, as Lightning's loop (no
    clipping: the reference sets none). What cannot import here is stubbed
    by ``benchmarks/reference_stubs`` (appended to ``sys.path``: installed
    packages win): flash_attn's ``MHA`` on SDPA, a ``pytorch_lightning``
    whose ``LightningModule`` is a plain module, and empty data-loading
    dependencies. bf16 only: its convolutional front-ends cast their output
    to float16, which fails in fp32 without autocast. Its log-mel features (clean, and noisy with white noise)
    come from its data workers, so they are computed once, untimed, with
    its own feature settings; S3L's timed step includes its features.
``s3l-math``, ``s3l-direct-conv``, ``s3l-teacher-autograd`` (``--ablations``)
    S3L with one optimisation reverted, to measure each on its own.
``s3l-teacher-inference-mode``, ``s3l-foreach-adamw`` (``--ablations``)
    S3L with a candidate optimisation: the teacher under
    ``torch.inference_mode`` (targets cloned; within the noise of no_grad
    here, so not adopted), or AdamW's default foreach implementation instead of the
    recipe's ``fused=True``.

Columns: audio seconds processed per second of step, step time, peak
memory (``benchmarks/benchutils.py``: CUDA allocator peak; on CPU a tracker of
tensor storages, in a separate untimed step) for fp32 and bf16 autocast.
A per-phase breakdown of the S3L step follows (separate timed runs with the
same functions the step uses, ``time.perf_counter`` around each phase,
CUDA synchronised at the boundaries).

Example::

    python benchmarks/train_step.py                   # 4 x 15 s, median of 5
    python benchmarks/train_step.py --ablations
    python benchmarks/train_step.py --tiny            # seconds, for tests

Authors
 * S3L contributors 2025
"""

import importlib
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from benchutils import (
    PhaseTimer,
    S3LParts,
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
    time_call,
)
from speechbrain.dataio.batch import PaddedData
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.BESTRQ import compute_mask
from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
from speechbrain.lobes.models.transformer.TransformerASR import (
    EncoderWrapper,
    TransformerASR,
)
from speechbrain.nnet.linear import Linear
from speechbrain.nnet.quantisers import RandomProjectionQuantizer
from speechbrain.processing.features import (
    STFT,
    Filterbank,
    InputNormalization,
    spectral_magnitude,
)
from torch import nn

from s3l_plugin.lengths import relative_to_absolute, zero_padding
from s3l_plugin.pretraining import s3l_inputs, s3l_targets
from s3l_plugin.teacher import EMATeacher

HEADERS = [
    "variant",
    "params_M",
    "fp32_audio_s_per_s",
    "fp32_step_s",
    "fp32_peak_MiB",
    "bf16_audio_s_per_s",
    "bf16_step_s",
    "bf16_peak_MiB",
]
BREAKDOWN_HEADERS = ["phase", "fp32_s", "fp32_share", "bf16_s", "bf16_share"]
PHASES = (
    "features + augment",
    "student forward",
    "teacher forward",
    "predictor + loss",
    "backward",
    "optimizer + EMA",
)
MAX_GRAD_NORM = 10.0


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
        warmup=1,
        precision=["fp32", "bf16"],
        model="paper",
        tiny="toy models, 2 x 1.5 s, 1 repeat: to test the script",
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=[],
        choices=("flash_attn", "sdpa", "math"),
        help="also time S3L with each of these attention backends",
    )
    parser.add_argument(
        "--conv-impls",
        nargs="+",
        default=[],
        choices=("fft", "direct"),
        help="also time S3L with each of these conv_impl values",
    )
    parser.add_argument(
        "--project",
        action="store_true",
        help="print each variant's time for the paper's 12,500 x 4 "
        "micro-batches of 1080 s",
    )
    parser.add_argument("--ablations", action="store_true")
    parser.add_argument("--no-bestrq", action="store_true")
    parser.add_argument(
        "--reference",
        metavar="PATH",
        help="also time the authors' step, imported from this checkout of "
        "Orange-OpenSource/s3lspeech",
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--brq-layers", type=int, default=3)
    parser.add_argument("--brq-ffn", type=int, default=1536)
    args = parse_benchmark_args(parser, argv)
    if args.tiny:
        args.batch, args.seconds, args.repeats = 2, 1.5, 1
    return args


# ---------------------------------------------------------------- S3L ----


class AutogradTeacher(EMATeacher):
    """The teacher of ``s3l-all-off``: a plain forward with autograd on.

    Its parameters require gradients (a naive copy of the student), it
    runs outside ``no_grad``, projects every output frame and the result
    is detached after the crop. Still eval mode and still an EMA: only the
    wasted work differs.
    """

    def __init__(self, encoder, **kwargs):
        super().__init__(encoder, **kwargs)
        self.encoder.requires_grad_(True)

    def encode_projected(self, feats, feat_lens, left=0, num_frames=None):
        """Projected frames of a graph-building forward, detached after."""
        encoded = self.encoder.encode(feats, feat_lens)
        targets = zero_padding(self.encoder.proj(encoded.out), encoded.lengths)
        stop = targets.shape[1] if num_frames is None else left + num_frames
        return targets[:, left:stop].detach(), encoded.lengths


class InferenceModeTeacher(EMATeacher):
    """A teacher under ``torch.inference_mode``, its targets cloned.

    Inference tensors cannot be saved for the student's backward, hence
    the clone; measured against ``no_grad`` (what ``EMATeacher`` uses).
    """

    def encode_projected(self, feats, feat_lens, left=0, num_frames=None):
        """``EMATeacher.encode_projected`` under inference mode, cloned."""
        with torch.inference_mode():
            targets, lengths = super().encode_projected(
                feats, feat_lens, left, num_frames
            )
        return targets.clone(), lengths.clone()


class S3LStep(S3LParts):
    """One S3L pretraining step, as the recipe runs it.

    Arguments
    ---------
    args : argparse.Namespace
        Options.
    attention : str
        Attention backend.
    teacher : str
        ``"no_grad"`` (``EMATeacher``), ``"autograd"`` (``AutogradTeacher``)
        or ``"inference_mode"`` (``InferenceModeTeacher``).
    fused_adamw : bool
        ``AdamW(fused=True)`` as the recipe (False: the foreach default).
    conv_impl : str
        ``conv_impl`` of every layer (``"direct"``: ``nn.Conv1d``).
    """

    def __init__(
        self,
        args,
        attention="auto",
        teacher="no_grad",
        fused_adamw=True,
        conv_impl="auto",
    ):
        teacher_class = {
            "no_grad": EMATeacher,
            "autograd": AutogradTeacher,
            "inference_mode": InferenceModeTeacher,
        }[teacher]
        super().__init__(
            args.model,
            args.device,
            args.seed,
            attention_backend=attention,
            conv_impl=conv_impl,
            teacher_class=teacher_class,
        )
        self.optimizer = torch.optim.AdamW(
            self.student.parameters(),
            lr=3e-4,
            betas=(0.9, 0.98),
            weight_decay=0.01,
            fused=True if fused_adamw else None,
        )
        self.params = count_parameters(self.student)

    def __call__(self, wavs, wav_lens, precision):
        """One full step: forward, loss, backward, optimizer, EMA."""
        loss = self.loss(wavs, wav_lens, precision)
        loss.backward()
        self._optimizer_step()
        return loss

    def _optimizer_step(self):
        nn.utils.clip_grad_norm_(self.student.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.teacher.update(self.student)

    def phased(self, wavs, wav_lens, precision, timer):
        """The same step split into the phases of the breakdown.

        The same functions as ``s3l_forward`` (``s3l_inputs``,
        ``S3LStudent.encode``, ``s3l_targets``, ``S3LStudent.predict``);
        the predictor runs after the teacher here, which changes no result.
        """
        with autocast(self.device, precision):
            with timer.phase("features + augment"):
                inputs = s3l_inputs(
                    self.features,
                    wavs,
                    wav_lens,
                    self.noise,
                    self.spec_augment,
                )
            with timer.phase("student forward"):
                projected, lengths = self.student.encode(
                    inputs.student_feats, inputs.feat_lens
                )
            with timer.phase("teacher forward"):
                targets = s3l_targets(
                    self.teacher,
                    inputs.clean_feats,
                    inputs.feat_lens,
                    projected.shape[1],
                    self.random_shift,
                )
            with timer.phase("predictor + loss"):
                predictions = self.student.predict(projected, lengths)
                loss, _ = self.loss_fn(predictions, targets, lengths)
        with timer.phase("backward"):
            loss.backward()
        with timer.phase("optimizer + EMA"):
            self._optimizer_step()


# ------------------------------------------------------------ BEST-RQ ----


class BestRQStep:
    """SpeechBrain's BEST-RQ pretraining step (its LibriSpeech recipe).

    Arguments
    ---------
    args : argparse.Namespace
        Options.
    """

    def __init__(self, args):
        self.device = torch.device(args.device)
        torch.manual_seed(args.seed)
        tiny = args.model == "toy"
        self.n_mels = 80
        self.divisible_by = 4
        d_model = 32 if tiny else 576
        vocab = 64 if tiny else 8192
        self.fbank = Fbank(sample_rate=16000, n_fft=400, n_mels=self.n_mels)
        self.normalize = InputNormalization(norm_type="sentence")
        self.cnn = ConvolutionFrontEnd(
            input_shape=(8, 10, self.n_mels),
            num_blocks=2,
            num_layers_per_block=1,
            out_channels=(128, 32),
            kernel_sizes=(3, 3),
            strides=(2, 2),
            residuals=(False, False),
        )
        transformer = TransformerASR(
            input_size=640,
            tgt_vocab=2048,
            d_model=d_model,
            nhead=4 if tiny else 8,
            num_encoder_layers=1 if tiny else args.brq_layers,
            num_decoder_layers=0,
            d_ffn=64 if tiny else args.brq_ffn,
            dropout=0.1,
            activation=nn.GELU,
            conformer_activation=nn.GELU,
            encoder_module="conformer",
            attention_type="RelPosMHAXL",
            normalize_before=True,
            causal=False,
        )
        self.wrapper = EncoderWrapper(transformer)
        self.quantizer = RandomProjectionQuantizer(
            self.n_mels * self.divisible_by, 16, vocab
        )
        self.linear = Linear(input_size=d_model, n_neurons=vocab)
        self.modules = nn.ModuleDict(
            {
                "CNN": self.cnn,
                "wrapper": self.wrapper,
                "Quantizer": self.quantizer,
                "normalize": self.normalize,
                "linear": self.linear,
            }
        ).to(self.device)
        self.modules.train()
        self.optimizer = torch.optim.AdamW(
            self.modules.parameters(),
            lr=8e-4,
            betas=(0.9, 0.98),
            eps=1e-9,
            weight_decay=0.01,
        )
        self.params = count_parameters(self.modules)
        self.mask = None

    def make_mask(self, wavs, wav_lens):
        """The collate function's mask (built in data workers: untimed)."""
        samples = relative_to_absolute(wav_lens, wavs.shape[1]).cpu()
        frames = (samples // 160 + 1).tolist()
        batch_frames = max(frames)
        self.mask = compute_mask(
            (wavs.shape[0], batch_frames, self.n_mels), frames, 0.15, 4
        ).to(self.device)

    def __call__(self, wavs, wav_lens, precision):
        """One full step, as ``BestRQBrain.compute_forward`` + ``fit_batch``."""
        if self.mask is None:
            self.make_mask(wavs, wav_lens)
        mask = self.mask
        with autocast(self.device, precision):
            feats = self.fbank(wavs)
            feats = self.normalize(feats, wav_lens, epoch=0)
            feats = _pad_feats(feats, self.divisible_by)
            mask_idx = mask[::4] // 4
            batch, frames, channels = feats.shape
            targets = self.quantizer(
                feats.view(batch, frames // self.divisible_by, -1)[
                    :, mask_idx, :
                ]
            )
            noise = torch.normal(
                mean=0.0,
                std=0.1,
                size=(batch, mask.shape[0], channels),
                device=self.device,
            )
            feats[:, mask, :] = noise
            src = self.cnn(feats)
            enc_out = self.wrapper(src, wav_lens)
            logits = self.linear(enc_out)[:, mask_idx, :]
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
            )
        loss.backward()
        nn.utils.clip_grad_norm_(self.modules.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def _pad_feats(feats, divisible_by):
    """Right-pads the time axis to a multiple (the recipe's ``pad_feats``)."""
    missing = (divisible_by - feats.shape[1] % divisible_by) % divisible_by
    return F.pad(feats, (0, 0, 0, missing))


# ---------------------------------------------------------- reference ----

REFERENCE_STUBS = os.path.join(os.path.dirname(__file__), "reference_stubs")


def load_reference(path):
    """Imports the reference's ``models.ssl`` and ``config.s3lspeech``.

    Arguments
    ---------
    path : str
        Root of a checkout of the authors' repository.

    Returns
    -------
    ssl, config : module
        Its model module and its configuration module.
    """
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "models", "ssl.py")):
        print(
            f"s3l: error: {path}: not a checkout of the S3LSpeech reference "
            "(no models/ssl.py)",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.path.insert(0, path)
    if REFERENCE_STUBS not in sys.path:
        sys.path.append(REFERENCE_STUBS)  # last: installed packages win
    ssl = importlib.import_module("models.ssl")
    return ssl, importlib.import_module("config.s3lspeech")


class ReferenceStep:
    """The authors' pretraining step, driven as Lightning's loop does.

    Arguments
    ---------
    args : argparse.Namespace
        Options (``args.reference``: the checkout's path).
    """

    def __init__(self, args):
        self.device = torch.device(args.device)
        ssl, config_module = load_reference(args.reference)
        torch.manual_seed(args.seed)
        self.config = config_module.S3LSpeechConfig()
        self.model = ssl.S3LSpeech(self.config).to(self.device)
        self.model.train()
        optimizers = self.model.pretrain_optimizers()
        self.optimizer = optimizers["optimizer"]
        self.scheduler = optimizers["lr_scheduler"]["scheduler"]
        self.model.stub_optimizers = self.optimizer
        self.params = count_parameters(self.model.student) + count_parameters(
            self.model.predictor
        )
        self.batch = None

    def make_batch(self, wavs, wav_lens):
        """Its data workers' log-mels of clean and noisy audio (untimed)."""
        config = self.config
        stft = STFT(
            sample_rate=config.sample_rate,
            win_length=config.win_length,
            hop_length=config.hop_length,
            n_fft=config.n_fft,
        ).to(self.device)
        fbank = Filterbank(
            n_mels=config.n_mels, log_mel=config.log_mel, n_fft=config.n_fft
        ).to(self.device)
        generator = torch.Generator().manual_seed(0)
        noise = 0.05 * torch.randn(wavs.shape, generator=generator)
        with torch.no_grad():
            clean = fbank(spectral_magnitude(stft(wavs)))
            noisy = fbank(spectral_magnitude(stft(wavs + noise.to(wavs))))
        self.batch = ReferenceBatch(
            PaddedData(clean, wav_lens), PaddedData(noisy, wav_lens)
        )

    def __call__(self, wavs, wav_lens, precision):
        """``training_step``, backward, optimizer and scheduler steps."""
        if self.batch is None:
            self.make_batch(wavs, wav_lens)
        with autocast(self.device, precision):
            loss = self.model.pretrain_model(self.batch, 0)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.model.global_step += 1
        return loss


class ReferenceBatch:
    """The fields of the reference's ``PaddedBatch`` that its step reads."""

    def __init__(self, signal, signal_noise):
        self.signal = signal
        self.signal_noise = signal_noise


# ---------------------------------------------------------------- run ----


def build_variants(args):
    """The variants to run: name -> (step, precisions).

    Arguments
    ---------
    args : argparse.Namespace
        Options.

    Returns
    -------
    dict
    """
    both = tuple(args.precision)
    variants = {"s3l": (S3LStep(args), both)}
    for backend in args.backends:
        variants[f"s3l-{backend}"] = (S3LStep(args, attention=backend), both)
    for conv_impl in args.conv_impls:
        variants[f"s3l-conv-{conv_impl}"] = (
            S3LStep(args, conv_impl=conv_impl),
            both,
        )
    variants["s3l-all-off"] = (
        S3LStep(
            args,
            attention="math",
            teacher="autograd",
            conv_impl="direct",
            fused_adamw=False,
        ),
        ("fp32",),
    )
    if args.ablations:
        variants["s3l-math"] = (S3LStep(args, attention="math"), both)
        variants["s3l-direct-conv"] = (
            S3LStep(args, conv_impl="direct"),
            both,
        )
        variants["s3l-teacher-autograd"] = (
            S3LStep(args, teacher="autograd"),
            both,
        )
        variants["s3l-teacher-inference-mode"] = (
            S3LStep(args, teacher="inference_mode"),
            both,
        )
        variants["s3l-foreach-adamw"] = (
            S3LStep(args, fused_adamw=False),
            both,
        )
    if not args.no_bestrq:
        variants["bestrq"] = (BestRQStep(args), both)
    if args.reference:
        # Its conv front-ends cast their outputs to float16
        # (modules/external.py), which only a mixed-precision autocast
        # turns back into the weights' type: it cannot run in fp32.
        mixed = tuple(p for p in args.precision if p != "fp32")
        variants["reference"] = (ReferenceStep(args), mixed)
    return variants


def make_batch(args):
    """Random waveforms of the benchmark's utterances.

    Arguments
    ---------
    args : argparse.Namespace
        Options.

    Returns
    -------
    wavs : torch.Tensor
        (B, S) on the device.
    wav_lens : torch.Tensor
        (B,) relative lengths (all 1).
    """
    generator = torch.Generator().manual_seed(args.seed)
    samples = int(args.seconds * 16000)
    wavs = 0.1 * torch.randn(args.batch, samples, generator=generator)
    wav_lens = torch.ones(args.batch)
    return wavs.to(args.device), wav_lens.to(args.device)


def run(args):
    """Runs every variant, prints and returns the tables.

    Arguments
    ---------
    args : argparse.Namespace
        Options.

    Returns
    -------
    rows : list of list
        Main table.
    breakdown : list of list
        S3L phase table (empty with ``--no-breakdown``).
    speedups : dict
        Ratios of step times (the issue's targets).
    """
    device = torch.device(args.device)
    wavs, wav_lens = make_batch(args)
    audio_seconds = args.batch * args.seconds
    variants = build_variants(args)
    runs = [
        (name, precision)
        for name, (_, precisions) in variants.items()
        for precision in precisions
    ]

    def call(name, precision):
        return lambda: variants[name][0](wavs, wav_lens, precision)

    timed = interleaved_medians(
        {key: call(*key) for key in runs}, args.repeats, device, args.warmup
    )
    medians = {key: median for key, (median, _) in timed.items()}
    times = {key: values for key, (_, values) in timed.items()}
    memory = {}
    if not args.no_memory:
        for key in runs:
            memory[key] = measure_peak_memory(call(*key), device)

    rows = []
    for name, (step, _) in variants.items():
        row = [name, fmt(step.params / 1e6)]
        for precision in ("fp32", "bf16"):
            seconds = medians.get((name, precision))
            row += [
                fmt(None if seconds is None else audio_seconds / seconds),
                fmt(seconds, 3),
                fmt(memory.get((name, precision)), 0),
            ]
        rows.append(row)

    speedups = {}
    for s3l_precision in ("bf16", "fp32"):
        s3l = medians.get(("s3l", s3l_precision))
        for name, precision in (("bestrq", "bf16"), ("s3l-all-off", "fp32")):
            other = medians.get((name, precision))
            if s3l is not None and other is not None:
                key = f"s3l {s3l_precision} vs {name} {precision}"
                speedups[key] = other / s3l

    # The targets: each variant at its own best precision.
    best = {}
    for name in variants:
        timed_here = [
            (medians[(name, p)], p)
            for p in args.precision
            if (name, p) in medians
        ]
        if timed_here:
            best[name] = min(timed_here)
    for name in ("reference", "bestrq"):
        if "s3l" in best and name in best:
            (s3l, s3l_precision), (other, precision) = best["s3l"], best[name]
            key = f"s3l best ({s3l_precision}) vs {name} best ({precision})"
            speedups[key] = other / s3l

    breakdown = []
    if not args.no_breakdown:
        breakdown = run_breakdown(args, variants["s3l"][0], wavs, wav_lens)
    return rows, breakdown, speedups, times


def gemm_precision_ratio(args):
    """One FFN-sized GEMM in fp32 and bf16: a line for the report.

    Arguments
    ---------
    args : argparse.Namespace
        Options (device, batch, seconds).

    Returns
    -------
    str
    """
    device = torch.device(args.device)
    rows = max(1, int(args.batch * args.seconds * 1000 / 40))
    x = torch.randn(rows, 512, device=device)
    weight = torch.randn(2048, 512, device=device)
    seconds = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = x.to(dtype), weight.to(dtype)
        times = [
            time_call(lambda a=a, b=b: F.linear(a, b), device)
            for _ in range(args.repeats + 2)
        ]
        seconds[name] = statistics.median(times[2:] or times)
    return (
        f"GEMM ({rows} x 512) @ (512 x 2048): fp32 "
        f"{seconds['fp32'] * 1e3:.2f} ms, bf16 {seconds['bf16'] * 1e3:.2f} "
        f"ms, bf16 speed-up {seconds['fp32'] / seconds['bf16']:.2f}x"
    )


def run_breakdown(args, step, wavs, wav_lens):
    """Median time of each phase of the S3L step, per precision.

    Arguments
    ---------
    args : argparse.Namespace
        Options.
    step : S3LStep
        The S3L step (already warmed up).
    wavs, wav_lens : torch.Tensor
        The batch.

    Returns
    -------
    list of list
        One row per phase, then the total.
    """
    phase_times = {p: {phase: [] for phase in PHASES} for p in args.precision}
    for precision in args.precision:  # warm-up of this code path
        step.phased(wavs, wav_lens, precision, PhaseTimer(args.device))
    for _ in range(args.repeats):
        for precision in args.precision:
            timer = PhaseTimer(args.device)
            step.phased(wavs, wav_lens, precision, timer)
            for phase in PHASES:
                phase_times[precision][phase].append(timer.times[phase])
    medians = {
        p: {ph: statistics.median(v) for ph, v in d.items()}
        for p, d in phase_times.items()
    }
    totals = {p: sum(m.values()) for p, m in medians.items()}
    rows = []
    for phase in PHASES + ("total (sum of medians)",):
        row = [phase]
        for precision in ("fp32", "bf16"):
            if precision not in medians:
                row += ["n/a", "n/a"]
                continue
            if phase in medians[precision]:
                seconds = medians[precision][phase]
            else:
                seconds = totals[precision]
            row += [
                fmt(seconds, 3),
                f"{100 * seconds / totals[precision]:.0f}%",
            ]
        rows.append(row)
    return rows


def main(argv=None):
    """Entry point: parses ``argv``, runs, prints the tables.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    tuple
        ``(rows, breakdown, speedups)``.
    """
    args = parse_args(argv)
    print(
        f"# One pretraining step on {args.batch} x {args.seconds:g} s of "
        f"random audio ({args.model} S3L; BEST-RQ scaled to match), "
        f"median of {args.repeats} interleaved steps after {args.warmup} "
        "warm-up"
    )
    print(f"# device: {describe_device(args.device)}")
    print(f"# memory: {memory_method(args.device)}")
    rows, breakdown, speedups, times = run(args)
    if "bf16" in args.precision:
        # Whether bf16 autocast can pay at all here: the encoder is mostly
        # GEMMs, so their bf16 / fp32 speed bounds what bf16 can give.
        print(f"# {gemm_precision_ratio(args)}")
    print(format_table(HEADERS, rows))
    for name, ratio in speedups.items():
        print(f"speedup {name}: {ratio:.2f}x (step time ratio)")
    if args.project:
        # 12,500 optimizer steps x 4 micro-batches of 1080 s padded audio.
        scale = 12500 * 4 * 1080 / (args.batch * args.seconds)
        for (name, precision), values in times.items():
            hours = statistics.median(values) * scale / 3600
            print(f"projected pretraining {name} {precision}: {hours:.1f} h")
    if breakdown:
        print("\n# S3L step breakdown (median per phase; separate runs)")
        print(format_table(BREAKDOWN_HEADERS, breakdown))
    print("\n# every timed step (s):")
    for (name, precision), values in times.items():
        print(
            f"#   {name} {precision}: " + " ".join(f"{v:.3f}" for v in values)
        )
    sys.stdout.flush()
    return rows, breakdown, speedups


if __name__ == "__main__":
    main()
