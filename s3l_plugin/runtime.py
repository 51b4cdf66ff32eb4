"""Runtime choices: how layers compute, never what they compute.

Two knobs select kernels without changing any parameter or result (float
rounding aside), so they are not part of a saved architecture:

- ``attention_backend``: ``"auto"``, ``"math"``, ``"sdpa"`` or
  ``"flash_attn"`` (see ``s3l_plugin.attention``);
- ``conv_impl``: ``"auto"``, ``"fft"`` or ``"direct"``. Conv stacks (the
  encoder's, the predictor's, the CTC head's) run as one matrix product
  over unfolded frames unless ``"direct"`` (``nn.Conv1d``); the positional
  convolutions run through FFTs with ``"fft"``, ``nn.Conv1d`` with
  ``"direct"``, and with ``"auto"`` through FFTs on CPU, cuDNN elsewhere.

Every layer that has a choice validates the requested value with
``check_choice`` when built and resolves it for the device its inputs are on
the first time it sees that device (``DeviceResolved``), never from whether
the machine has a GPU. ``set_runtime_options`` changes a knob in every
layer of a model at once.

Training precision is SpeechBrain's run option; ``precision: auto`` (the
paper YAML's default) is resolved here once per run by
:func:`resolve_precision`: bf16 on a GPU that supports it, and on a CPU
only where a short probe finds bf16 matrix products faster than fp32.

Authors
 * S3L contributors 2025
"""

import time
from typing import NamedTuple

import torch

ATTENTION_BACKENDS = ("auto", "math", "sdpa", "flash_attn")
CONV_IMPLS = ("auto", "fft", "direct")
KNOBS = {"attention_backend": ATTENTION_BACKENDS, "conv_impl": CONV_IMPLS}
# Above this many frames the FFT forward alone (the teacher's) stops
# beating oneDNN's direct grouped convolution on CPU; forward + backward
# stays faster up to at least 1500 frames (benchmarks/train_step.py).
FFT_NO_GRAD_MAX_FRAMES = 512
# The bf16 probe: a linear layer of the encoder's shape (frames x d_model x
# d_ffn); bf16 must beat fp32 by this factor to be chosen, so that timing
# noise on a loaded machine does not pick the slower one.
_PROBE_SHAPE = (256, 512, 2048)
_PROBE_MARGIN = 1.1


def check_choice(knob, value):
    """Returns ``value`` if it is a valid setting of ``knob``, else raises.

    Arguments
    ---------
    knob : str
        ``"attention_backend"`` or ``"conv_impl"``.
    value : str
        The requested setting.

    Returns
    -------
    str
        ``value``.

    Raises
    ------
    ValueError
        Naming the knob and the valid settings.

    Example
    -------
    >>> check_choice("conv_impl", "winograd")
    Traceback (most recent call last):
    ...
    ValueError: conv_impl must be one of 'auto', 'fft', 'direct'; got 'winograd'
    """
    choices = KNOBS[knob]
    if value not in choices:
        valid = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{knob} must be one of {valid}; got {value!r}")
    return value


class ConvPlan(NamedTuple):
    """How the convolutions of a layer run on one device.

    Attributes
    ----------
    stack : str
        Conv stacks: ``"matmul"`` (unfolded frames) or ``"direct"``.
    positional : str
        Positional convolutions: ``"fft"`` or ``"direct"``.
    fft_no_grad_max_frames : int or None
        If set, a positional convolution without gradients over more
        frames than this runs ``"direct"`` instead of ``"fft"`` (CPU auto).
    """

    stack: str
    positional: str
    fft_no_grad_max_frames: int | None = None


def resolve_conv_impl(conv_impl, device):
    """The ``ConvPlan`` of ``conv_impl`` on ``device``.

    Arguments
    ---------
    conv_impl : str
        One of ``CONV_IMPLS``.
    device : torch.device or str
        Where the inputs are.

    Returns
    -------
    ConvPlan

    Example
    -------
    >>> resolve_conv_impl("auto", "cpu")
    ConvPlan(stack='matmul', positional='fft', fft_no_grad_max_frames=512)
    >>> resolve_conv_impl("auto", "cuda").positional
    'direct'
    """
    check_choice("conv_impl", conv_impl)
    if conv_impl == "direct":
        return ConvPlan("direct", "direct")
    if conv_impl == "fft":
        return ConvPlan("matmul", "fft")
    if torch.device(device).type == "cpu":
        # FFTs measured 2-2.6x faster than oneDNN with 128 taps on CPU.
        return ConvPlan("matmul", "fft", FFT_NO_GRAD_MAX_FRAMES)
    return ConvPlan("matmul", "direct")


class DeviceResolved:
    """Resolves a layer's runtime choice once per (choice, device).

    A plain object holding no tensors, so that layers deep-copy (the EMA
    teacher) and pickle as usual; the layer keeps the requested choice as
    a plain attribute that ``set_runtime_options`` may change.

    Arguments
    ---------
    resolve : callable
        ``resolve(choice, device)`` -> plan, a module-level function.

    Example
    -------
    >>> conv_plan = DeviceResolved(resolve_conv_impl)
    >>> conv_plan("direct", torch.device("cpu")).stack
    'direct'
    """

    def __init__(self, resolve):
        self.resolve = resolve
        self.key = None
        self.plan = None

    def __call__(self, choice, device):
        """The plan of ``choice`` on ``device``, resolved on first use."""
        if (choice, device) != self.key:
            self.plan = self.resolve(choice, device)
            self.key = (choice, device)
        return self.plan


def set_runtime_options(model, attention_backend=None, conv_impl=None):
    """Sets a runtime knob in every layer of ``model`` that has it.

    Arguments
    ---------
    model : torch.nn.Module
        Any model (encoder, student, CTC model, ...).
    attention_backend : str, optional
        New attention backend; None leaves it.
    conv_impl : str, optional
        New convolution implementation; None leaves it.

    Returns
    -------
    torch.nn.Module
        ``model``.

    Example
    -------
    >>> from s3l_plugin.predictor import Predictor
    >>> predictor = set_runtime_options(Predictor(8, (8, 8), (3, 1)),
    ...                                 conv_impl="direct")
    >>> predictor.layers.conv_impl
    'direct'
    """
    changes = {"attention_backend": attention_backend, "conv_impl": conv_impl}
    changes = {k: check_choice(k, v) for k, v in changes.items() if v}
    for module in model.modules():
        for knob, value in changes.items():
            if hasattr(module, knob):
                setattr(module, knob, value)
    return model


def _linear_seconds(autocast_bf16, repeats=5):
    """Best time of the probe's linear layer on the CPU, in fp32 or under
    bf16 autocast (which also pays for casting inputs and weights, as a
    training step does)."""
    rows, inner, cols = _PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(rows, inner, generator=generator)
    weight = torch.randn(cols, inner, generator=generator)
    best = float("inf")
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast_bf16):
        torch.nn.functional.linear(inputs, weight)  # kernel selection
        for _ in range(repeats):
            start = time.perf_counter()
            torch.nn.functional.linear(inputs, weight)
            best = min(best, time.perf_counter() - start)
    return best


def cpu_bf16_speedup():
    """How much faster a linear layer runs under bf16 autocast on this CPU.

    Returns
    -------
    float
        fp32 time / bf16 time of the probe (above 1: bf16 faster; 3.3 on
        a CPU with AMX, about 0.5 on AVX512 CPUs without bf16 units).

    Example
    -------
    >>> cpu_bf16_speedup() > 0
    True
    """
    return _linear_seconds(False) / _linear_seconds(True)


def resolve_precision(precision, device, cpu_speedup=None):
    """The training precision ``precision`` means on ``device``.

    ``"fp32"``, ``"fp16"`` and ``"bf16"`` stay as given. ``"auto"`` is
    bf16 on a CUDA device that supports it (fp32 on one that does not: fp16
    would need loss scaling, which is not chosen silently), and on a CPU
    bf16 only if :func:`cpu_bf16_speedup` finds it clearly faster.

    Arguments
    ---------
    precision : str
        ``"auto"``, ``"fp32"``, ``"fp16"`` or ``"bf16"``.
    device : torch.device or str
        The training device.
    cpu_speedup : float, optional
        A :func:`cpu_bf16_speedup` already measured (None: probe now).

    Returns
    -------
    str
        ``"fp32"``, ``"fp16"`` or ``"bf16"``.

    Example
    -------
    >>> resolve_precision("fp32", "cuda")
    'fp32'
    >>> resolve_precision("auto", "cpu", cpu_speedup=0.5)
    'fp32'
    >>> resolve_precision("auto", "cpu", cpu_speedup=2.0)
    'bf16'
    """
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return "bf16" if supported else "fp32"
    if device.type == "cpu":
        if cpu_speedup is None:
            cpu_speedup = cpu_bf16_speedup()
        return "bf16" if cpu_speedup > _PROBE_MARGIN else "fp32"
    return "fp32"
