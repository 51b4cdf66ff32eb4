"""The EMA teacher: a frozen copy of the student's encoder, averaged in.

The teacher produces the targets of the contrastive loss. It starts as a copy
of the student's encoder and follows it as an exponential moving average,
``teacher <- m * teacher + (1 - m) * student``, once per optimizer step, with
``m`` rising from 0.995 to 1.0 along a cosine (METHOD.md 3).
"""

import copy
import math

import torch
from torch import nn

from s3l_plugin.distributed import unwrap_module
from s3l_plugin.lengths import zero_padding


def cosine_momentum(step, total_steps, base=0.995, final=1.0):
    """EMA momentum at an optimizer step.

    Step 0 gives 0.0: the first update copies the student. From step 1 the
    momentum follows ``final - (final - base) * (cos(pi * s / S) + 1) / 2``
    (``base`` at s = 0, ``final`` at s = S) and stays at ``final`` after.

    Arguments
    ---------
    step : int
        Number of EMA updates already applied.
    total_steps : int
        Length of the cosine (the pretraining's optimizer steps).
    base : float
        Momentum at the start of the cosine.
    final : float
        Momentum at its end.

    Returns
    -------
    float
        The momentum ``m``.

    Example
    -------
    >>> cosine_momentum(0, 100)
    0.0
    >>> round(cosine_momentum(50, 100), 4)
    0.9975
    >>> cosine_momentum(100, 100), cosine_momentum(500, 100)
    (1.0, 1.0)
    """
    if step <= 0:
        return 0.0
    if step >= total_steps:
        return float(final)
    cosine = (math.cos(math.pi * step / total_steps) + 1) / 2
    return final - (final - base) * cosine


def _clean_name(name):
    # Submodules compiled one by one carry "_orig_mod." in their names.
    return name.replace("_orig_mod.", "")


def _by_clean_name(named_tensors):
    return {_clean_name(name): tensor for name, tensor in named_tensors}


class EMATeacher(nn.Module):
    """Exponential moving average of an encoder, frozen and in eval mode.

    The teacher never trains: its parameters do not require gradients and
    it stays in eval mode whatever ``train()`` asks, because SpeechBrain's
    ``Brain`` calls ``modules.train()`` every epoch and dropout on the
    targets is a defect of the reference (METHOD.md 7.2). The number of
    updates applied is a buffer, so it is checkpointed with the weights and
    a resumed run continues the schedule instead of copying the student
    again.

    Arguments
    ---------
    encoder : torch.nn.Module
        The student's encoder (an ``S3LEncoder``); deep-copied. It must have
        ``encode(feats, feat_lens)`` and a ``proj`` layer.
    base_momentum : float
        Momentum of the first averaging step (after the initial copy).
    final_momentum : float
        Momentum at ``total_steps`` and beyond.
    total_steps : int
        Length of the cosine schedule, in updates (optimizer steps).

    Example
    -------
    >>> student = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
    >>> teacher = EMATeacher(student, total_steps=100)
    >>> teacher.update(student), int(teacher.step)
    (0.0, 1)
    >>> round(teacher.momentum(), 4)
    0.995
    >>> _ = teacher.train()
    >>> teacher.encoder[1].training, teacher.encoder[0].weight.requires_grad
    (False, False)
    """

    def __init__(
        self,
        encoder,
        base_momentum=0.995,
        final_momentum=1.0,
        total_steps=12500,
    ):
        super().__init__()
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.encoder = copy.deepcopy(unwrap_module(encoder))
        self.encoder.requires_grad_(False)
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self.total_steps = total_steps
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._step_cache = None  # (_step_key(), value), see _host_step
        self.train(False)

    def train(self, mode=True):
        """Keeps the teacher in eval mode, whatever ``mode`` says.

        Arguments
        ---------
        mode : bool
            Ignored: the targets are computed without dropout.

        Returns
        -------
        EMATeacher
            ``self``.

        Example
        -------
        >>> teacher = EMATeacher(nn.Sequential(nn.Dropout()))
        >>> teacher.train().encoder[0].training
        False
        """
        del mode
        return super().train(False)

    def momentum(self, step=None):
        """The momentum the update at ``step`` applies.

        Arguments
        ---------
        step : int, optional
            Update index; default the teacher's own counter (the next
            update's momentum).

        Returns
        -------
        float

        Example
        -------
        >>> teacher = EMATeacher(nn.Linear(2, 2), total_steps=10)
        >>> teacher.momentum(), teacher.momentum(10)
        (0.0, 1.0)
        """
        if step is None:
            step = self._host_step()
        return cosine_momentum(
            step, self.total_steps, self.base_momentum, self.final_momentum
        )

    @torch.no_grad()
    def update(self, student):
        """One EMA step towards ``student``, then advances the counter.

        Call once per optimizer step, after it.

        Arguments
        ---------
        student : torch.nn.Module
            The student's encoder, or a module holding it as ``.encoder``
            (the ``S3LStudent``); DDP / torch.compile wrappers are unwrapped.

        Returns
        -------
        float
            The momentum applied (0.0: the student was copied).

        Raises
        ------
        ValueError
            If the student's parameters and buffers do not match the
            teacher's by name and shape.

        Example
        -------
        >>> student = nn.Linear(2, 2)
        >>> teacher = EMATeacher(student, total_steps=10)
        >>> _ = student.weight.data.fill_(1.0)
        >>> teacher.update(student)
        0.0
        >>> teacher.encoder.weight.tolist()
        [[1.0, 1.0], [1.0, 1.0]]
        """
        student_params, student_buffers = self._match(student)
        momentum = self.momentum()
        teacher_params = list(self.encoder.parameters())
        if momentum == 0.0:
            torch._foreach_copy_(teacher_params, student_params)
        elif momentum != 1.0:
            # lerp: t + (1 - m) * (s - t) = m * t + (1 - m) * s, one pass.
            torch._foreach_lerp_(teacher_params, student_params, 1 - momentum)
        for teacher_buffer, student_buffer in zip(
            self.encoder.buffers(), student_buffers
        ):
            teacher_buffer.copy_(student_buffer)
        self.step += 1
        self._step_cache = (self._step_key(), self._step_cache[1] + 1)
        return momentum

    def _step_key(self):
        """What changes whenever ``step`` may have: tensor and version."""
        return (id(self.step), self.step.data_ptr(), self.step._version)

    def _host_step(self):
        """``int(self.step)`` without reading the device when unchanged.

        ``step`` lives on the model's device; reading it back would
        synchronise the host with the device once per optimizer step. A
        host copy is kept and trusted while the buffer is the same tensor
        at the same version (``load_state_dict``, ``.to()`` or any in-place
        write change one of them).
        """
        key = self._step_key()
        if self._step_cache is None or self._step_cache[0] != key:
            self._step_cache = (key, int(self.step))
        return self._step_cache[1]

    def _match(self, student):
        """The student's parameters and buffers in the teacher's order."""
        module = unwrap_module(student)
        ours = _tensor_shapes(self.encoder)
        if _tensor_shapes(module) != ours and hasattr(module, "encoder"):
            module = unwrap_module(module.encoder)
        theirs = _tensor_shapes(module)
        if theirs != ours:
            raise ValueError(
                "EMATeacher.update: the student's encoder does not match the "
                f"teacher's. Only in the teacher: {sorted(ours - theirs)[:5]}"
                f"; only in the student: {sorted(theirs - ours)[:5]}."
            )
        params = _by_clean_name(module.named_parameters())
        buffers = _by_clean_name(module.named_buffers())
        ordered_params = [
            params[_clean_name(name)]
            for name, _ in self.encoder.named_parameters()
        ]
        ordered_buffers = [
            buffers[_clean_name(name)]
            for name, _ in self.encoder.named_buffers()
        ]
        return ordered_params, ordered_buffers

    def forward(self, feats, feat_lens, **kwargs):
        """Runs the teacher's encoder without gradient.

        ``torch.no_grad`` rather than ``torch.inference_mode``: the targets
        enter the student's loss, whose backward saves them, and inference
        tensors cannot be saved for backward. ``inference_mode`` plus a
        ``.clone()`` measured no faster (a 2-layer transformer on CPU: equal
        within noise), so the copy is not worth it.

        Arguments
        ---------
        feats : torch.Tensor
            (B, T, n_mels) features.
        feat_lens : torch.Tensor
            (B,) frame counts.
        **kwargs
            Passed to ``encoder.encode`` (e.g. ``return_layers``).

        Returns
        -------
        EncoderOutput
            What ``encoder.encode`` returns.

        Example
        -------
        >>> from s3l_plugin.encoder import S3LEncoder, architecture
        >>> teacher = EMATeacher(S3LEncoder(**architecture("toy")))
        >>> feats = torch.randn(1, 120, teacher.encoder.config["n_mels"])
        >>> teacher(feats, torch.tensor([120])).out.requires_grad
        False
        """
        with torch.no_grad():
            return self.encoder.encode(feats, feat_lens, **kwargs)

    def encode_projected(self, feats, feat_lens, left=0, num_frames=None):
        """The contrastive targets: projected encoder frames, no gradient.

        With ``left`` and ``num_frames`` only the output frames
        ``left .. left + num_frames - 1`` are projected and returned (the
        crop that undoes the random shift), so no projection is spent on
        the frames the crop throws away. The result equals projecting
        everything and cropping after.

        Arguments
        ---------
        feats : torch.Tensor
            (B, T, n_mels) features.
        feat_lens : torch.Tensor
            (B,) frame counts.
        left : int
            Output frames to skip at the front.
        num_frames : int, optional
            Output frames to keep from ``left``; default all the rest.

        Returns
        -------
        targets : torch.Tensor
            (B, num_frames, proj_dim); frames past each utterance's end (in
            the uncropped output) are 0.
        lengths : torch.Tensor
            (B,) output frame counts of the uncropped output.

        Example
        -------
        >>> from s3l_plugin.encoder import S3LEncoder, architecture
        >>> teacher = EMATeacher(S3LEncoder(**architecture("toy")))
        >>> feats = torch.randn(2, 120, teacher.encoder.config["n_mels"])
        >>> targets, lengths = teacher.encode_projected(
        ...     feats, torch.tensor([120, 64])
        ... )
        >>> bool((targets[1, lengths[1] :] == 0).all())
        True
        >>> cropped, _ = teacher.encode_projected(
        ...     feats, torch.tensor([120, 64]), left=2, num_frames=5
        ... )
        >>> torch.allclose(cropped, targets[:, 2:7], atol=1e-6)
        True
        """
        with torch.no_grad():
            encoded = self.encoder.encode(feats, feat_lens)
            out = encoded.out
            if left or num_frames is not None:
                stop = out.shape[1] if num_frames is None else left + num_frames
                out = out[:, left:stop]
            targets = self.encoder.proj(out)
            # The projection's bias would make padded frames non-zero.
            targets = zero_padding(targets, encoded.lengths - left)
        return targets, encoded.lengths


def _tensor_shapes(module):
    """Set of (name, shape) of a module's parameters and buffers."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    return {(_clean_name(name), tuple(value.shape)) for name, value in named}
