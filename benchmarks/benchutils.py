"""Shared set-up of the benchmark scripts: options, models, timing, memory.

Options: ``benchmark_parser`` adds the options every script shares
(``--device``, ``--seed``, ``--tiny`` and, where asked, ``--repeats``,
``--warmup``, ``--precision``, ``--model``) and ``parse_benchmark_args``
fills the device-dependent defaults. ``S3LParts`` builds the S3L
pretraining modules as the recipe does and computes the step's loss.

Timing: ``time.perf_counter`` around the measured call, with
``torch.cuda.synchronize`` before each reading on CUDA. Compared variants
are run interleaved (repeat 1 of every variant, then repeat 2, ...) and the
median is reported, so that a slow period of a shared machine hits every
variant alike.

Peak memory (``measure_peak_memory``):

- CUDA: ``torch.cuda.max_memory_allocated`` during the call minus
  ``torch.cuda.memory_allocated`` before it (bytes held by live tensors,
  not the caching allocator's reserve).
- CPU: the same quantity counted by ``TensorMemoryTracker``, a
  ``TorchDispatchMode`` that adds the size of every tensor storage an
  operator creates and subtracts it when the storage is freed (forward,
  backward and optimizer ops all go through the dispatcher). It counts
  tensor memory only: not the allocator's overhead nor kernels' private
  scratch buffers (oneDNN), and tensors created inside a
  ``torch.compile``-d region are invisible to it except for the region's
  outputs. The tracker slows every operator down, so memory is measured
  in its own, untimed, run.

Authors
 * S3L contributors 2025
"""

import argparse
import contextlib
import os
import platform
import statistics
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from s3l_plugin.augment import NoiseAugment, RandomShift, SpecAugment
from s3l_plugin.encoder import S3LEncoder, architecture
from s3l_plugin.loss import ContrastiveLoss
from s3l_plugin.predictor import Predictor
from s3l_plugin.pretraining import S3LStudent, s3l_forward
from s3l_plugin.teacher import EMATeacher

MIB = 2.0**20
PRECISIONS = ("fp32", "bf16", "fp16")
MODELS = ("paper", "toy")


def benchmark_parser(
    doc, repeats=None, warmup=None, precision=None, model=None, tiny=None
):
    """An ``ArgumentParser`` with the options the benchmarks share.

    Arguments
    ---------
    doc : str
        The script's docstring (its first line is the description).
    repeats, warmup : int, optional
        Defaults of ``--repeats`` and ``--warmup``; None: no such option.
    precision : str or list of str, optional
        Default of ``--precision`` (one or more of ``PRECISIONS``):
        ``"device"`` means bf16 on CUDA, fp32 elsewhere; None: no option.
    model : str, optional
        Default of ``--model`` (``"paper"`` or ``"toy"``, the 16-d test
        size); ``"device"``: paper on CUDA, toy elsewhere; None: no option.
    tiny : str, optional
        Help of ``--tiny`` (the script's quick test settings).

    Returns
    -------
    argparse.ArgumentParser
        ``parse_benchmark_args`` resolves its defaults.

    Example
    -------
    >>> parser = benchmark_parser("Demo.", repeats=5, precision="device")
    >>> args = parse_benchmark_args(parser, ["--device", "cpu"])
    >>> args.repeats, args.precision
    (5, ['fp32'])
    """
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.set_defaults(
        default_precision=precision, default_model=model, tiny=False
    )
    parser.add_argument("--device", default=None, help="default: cuda if any")
    parser.add_argument("--seed", type=int, default=0)
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats)
    if warmup is not None:
        parser.add_argument("--warmup", type=int, default=warmup)
    if precision is not None:
        parser.add_argument(
            "--precision",
            nargs="+",
            choices=PRECISIONS,
            default=None,
            help=f"default: {_describe_default(precision)}",
        )
    if model is not None:
        parser.add_argument(
            "--model",
            choices=MODELS,
            default=None,
            help=f"S3L size (default: {_describe_default(model, 'paper')})",
        )
    if tiny is not None:
        parser.add_argument("--tiny", action="store_true", help=tiny)
    return parser


def _describe_default(default, cuda_value="bf16"):
    if default != "device":
        return " ".join(default) if isinstance(default, list) else default
    other = "toy" if cuda_value == "paper" else "fp32"
    return f"{cuda_value} on CUDA, {other} elsewhere"


def parse_benchmark_args(parser, argv=None):
    """Parses ``argv`` and fills the device-dependent defaults.

    Arguments
    ---------
    parser : argparse.ArgumentParser
        From ``benchmark_parser``.
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
        ``device`` set; ``precision`` a list and ``model`` a name where the
        parser has them (``--tiny`` forces the toy model).
    """
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = torch.device(args.device).type == "cuda"
    if args.default_precision is not None and args.precision is None:
        default = args.default_precision
        if default == "device":
            default = ["bf16" if cuda else "fp32"]
        args.precision = [default] if isinstance(default, str) else default
    if args.default_model is not None:
        if args.tiny:
            args.model = "toy"
        elif args.model is None:
            args.model = args.default_model
            if args.model == "device":
                args.model = "paper" if cuda else "toy"
    return args


class S3LParts:
    """The modules of an S3L pretraining step, built as the recipe does.

    Arguments
    ---------
    model : str
        ``"paper"`` or ``"toy"`` (16-d).
    device : torch.device or str
        Where the modules go.
    seed : int
        Seeds the initialisation.
    attention_backend, conv_impl : str
        Runtime knobs of every layer (``s3l_plugin.runtime``).
    teacher_class : type
        ``EMATeacher`` or a subclass.

    Example
    -------
    >>> parts = S3LParts("toy", "cpu", seed=0)
    >>> loss = parts.loss(torch.randn(2, 16000), torch.ones(2), "fp32")
    >>> loss.dim()
    0
    """

    def __init__(
        self,
        model,
        device,
        seed,
        attention_backend="auto",
        conv_impl="auto",
        teacher_class=EMATeacher,
    ):
        self.device = torch.device(device)
        torch.manual_seed(seed)
        if model == "toy":
            arch = architecture("toy")
            predictor = Predictor(
                arch["proj_dim"], (16, 16, 16), conv_impl=conv_impl
            )
        else:
            arch = architecture("base")
            predictor = Predictor(conv_impl=conv_impl)
        encoder = S3LEncoder(
            **arch, attention_backend=attention_backend, conv_impl=conv_impl
        )
        self.student = S3LStudent(encoder, predictor).to(self.device).train()
        self.teacher = teacher_class(encoder, total_steps=12500)
        self.teacher.to(self.device)
        self.features = self.teacher.encoder.features
        self.noise = NoiseAugment(prob=0.5).to(self.device).train()
        self.spec_augment = SpecAugment().train()
        self.random_shift = RandomShift()
        self.loss_fn = ContrastiveLoss()

    def loss(self, wavs, wav_lens, precision):
        """The step's loss: ``s3l_forward`` and ``ContrastiveLoss``.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, S) waveforms on the device.
        wav_lens : torch.Tensor
            (B,) relative lengths.
        precision : str
            Autocast precision.

        Returns
        -------
        torch.Tensor
            Scalar loss (not yet backpropagated).
        """
        with autocast(self.device, precision):
            outputs = s3l_forward(
                self.student,
                self.teacher,
                self.features,
                wavs,
                wav_lens,
                noise_augment=self.noise,
                spec_augment=self.spec_augment,
                random_shift=self.random_shift,
            )
            loss, _ = self.loss_fn(
                outputs.predictions, outputs.targets, outputs.lengths
            )
        return loss


def describe_device(device):
    """A short description of the machine the benchmark runs on.

    Arguments
    ---------
    device : torch.device or str
        The device the benchmark runs on.

    Returns
    -------
    str
        E.g. ``"2-core CPU, no GPU"`` or ``"NVIDIA H100 (GPU)"``.

    Example
    -------
    >>> "CPU" in describe_device("cpu")
    True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (GPU)"
    cores = os.cpu_count()
    gpu = "GPU idle" if torch.cuda.is_available() else "no GPU"
    name = platform.processor() or platform.machine()
    return (
        f"{cores}-core CPU, {gpu} ({name}, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__.split('+')[0]})"
    )


def synchronize(device):
    """Waits for the device's queued work (no-op on CPU).

    Arguments
    ---------
    device : torch.device or str
        The device.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device, precision):
    """Autocast context of a precision name.

    Arguments
    ---------
    device : torch.device or str
        The device.
    precision : str
        ``"fp32"`` (autocast off), ``"bf16"`` or ``"fp16"``.

    Returns
    -------
    contextlib.AbstractContextManager

    Example
    -------
    >>> with autocast("cpu", "bf16"):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.bfloat16
    """
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


class PhaseTimer:
    """Accumulates wall-clock time of named phases, synchronising the device.

    Arguments
    ---------
    device : torch.device or str
        Device synchronised before each reading.

    Example
    -------
    >>> timer = PhaseTimer("cpu")
    >>> with timer.phase("a"):
    ...     _ = torch.ones(3).sum()
    >>> list(timer.times)
    ['a']
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.times = {}

    @contextlib.contextmanager
    def phase(self, name):
        """Times the ``with`` block under ``name`` (seconds, added up).

        Arguments
        ---------
        name : str
            Phase name.

        Yields
        ------
        None
        """
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            elapsed = time.perf_counter() - start
            self.times[name] = self.times.get(name, 0.0) + elapsed


def time_call(fn, device):
    """Wall-clock seconds of one call of ``fn``, device work included.

    Arguments
    ---------
    fn : callable
        Called without arguments.
    device : torch.device or str
        Synchronised before and after.

    Returns
    -------
    float
        Seconds.

    Example
    -------
    >>> time_call(lambda: torch.ones(3).sum(), "cpu") >= 0.0
    True
    """
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(variants, repeats, device, warmup=1):
    """Median time of each variant, the variants run interleaved.

    Arguments
    ---------
    variants : dict
        Name -> callable without arguments.
    repeats : int
        Timed calls of each variant.
    device : torch.device or str
        Synchronised around each call.
    warmup : int
        Untimed calls of each variant first.

    Returns
    -------
    dict
        Name -> (median seconds, list of every timed call's seconds).

    Example
    -------
    >>> medians = interleaved_medians({"sum": lambda: torch.ones(3).sum()}, 3, "cpu")
    >>> len(medians["sum"][1])
    3
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(time_call(fn, device))
    return {
        name: (statistics.median(values), values)
        for name, values in times.items()
    }


class TensorMemoryTracker(TorchDispatchMode):
    """Live and peak bytes of the tensor storages created while active.

    Every operator output whose storage is new (not one of the operator's
    inputs' storages: views and in-place results are not new memory) is
    counted until Python frees the storage. Storages that existed before
    the tracker started are not counted, so ``peak`` is the high-water mark
    of memory allocated on top of what was already there.

    Example
    -------
    >>> with TensorMemoryTracker() as tracker:
    ...     x = torch.ones(1024)  # 4 KiB
    ...     y = x * 2  # 4 KiB more
    ...     del x, y
    ...     z = torch.ones(256)
    >>> tracker.peak, tracker.live
    (8192, 1024)
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Runs ``func``, then counts the new storages of its outputs."""
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            _storage_key(t)
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            key = _storage_key(tensor)
            if key is None or key in inputs or key in self._seen:
                continue
            storage = tensor.untyped_storage()
            size = storage.nbytes()
            self._seen.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, size)
        return out

    def _free(self, key, size):
        self._seen.discard(key)
        self.live -= size


def _storage_key(tensor):
    """Identity of a tensor's storage (None for storage-less tensors)."""
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    return (storage.device.type, storage.data_ptr(), id(storage))


def measure_peak_memory(fn, device):
    """Peak memory allocated by one call of ``fn``, above what was live.

    See the module docstring for how it is measured on each device.

    Arguments
    ---------
    fn : callable
        Called once without arguments.
    device : torch.device or str
        The device whose memory is measured.

    Returns
    -------
    float
        Peak in MiB.

    Example
    -------
    >>> round(measure_peak_memory(lambda: torch.ones(2**18), "cpu"), 3)
    1.0
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / MIB
    with TensorMemoryTracker() as tracker:
        fn()
    return tracker.peak / MIB


def memory_method(device):
    """One line saying how ``measure_peak_memory`` measures on ``device``.

    Arguments
    ---------
    device : torch.device or str
        The device.

    Returns
    -------
    str
    """
    if torch.device(device).type == "cuda":
        return (
            "peak = torch.cuda.max_memory_allocated during the call minus "
            "memory_allocated before it"
        )
    return (
        "peak = high-water mark of tensor storages created during the call "
        "(TorchDispatchMode tracker, separate untimed run; tensor memory "
        "only, no allocator overhead or oneDNN scratch)"
    )


def format_table(headers, rows):
    """A plain-text table with right-aligned columns.

    Arguments
    ---------
    headers : sequence of str
        Column titles.
    rows : sequence of sequence
        Cells (converted with ``str``).

    Returns
    -------
    str

    Example
    -------
    >>> print(format_table(["a", "bb"], [[1, 2.5]]))
    a   bb
    -  ---
    1  2.5
    """
    cells = [[str(c) for c in row] for row in rows]
    widths = [
        max([len(h)] + [len(row[i]) for row in cells])
        for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    return "\n".join(line.rstrip() for line in lines)


def fmt(value, digits=2):
    """Formats a float (``"n/a"`` for None).

    Arguments
    ---------
    value : float or None
        The number.
    digits : int
        Decimals.

    Returns
    -------
    str

    Example
    -------
    >>> fmt(1.234), fmt(None)
    ('1.23', 'n/a')
    """
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}"


def count_parameters(module, trainable_only=True):
    """Number of (trainable) parameters of a module.

    Arguments
    ---------
    module : torch.nn.Module
        The module.
    trainable_only : bool
        Count only parameters that require gradients.

    Returns
    -------
    int

    Example
    -------
    >>> count_parameters(torch.nn.Linear(3, 2))
    8
    """
    return sum(
        p.numel()
        for p in module.parameters()
        if p.requires_grad or not trainable_only
    )
