"""Assembly of the S3L teacher-student pretraining step.

The recipe's ``Brain`` and the benchmarks share this code, so what is timed
is what is trained.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from s3l_plugin.lengths import relative_to_absolute


class S3LStudent(nn.Module):
    """The trained half of S3L: encoder, projection and predictor.

    One module so that a single ``forward`` carries the whole student (what
    DistributedDataParallel needs to synchronise its gradients).

    Arguments
    ---------
    encoder : s3l_plugin.encoder.S3LEncoder
        The encoder; its ``proj`` maps its frames to the target space.
    predictor : s3l_plugin.predictor.Predictor
        Maps projected frames to predictions of the teacher's targets.

    Example
    -------
    >>> from s3l_plugin.encoder import S3LEncoder, architecture
    >>> from s3l_plugin.predictor import Predictor
    >>> encoder = S3LEncoder(**architecture("toy"))
    >>> student = S3LStudent(encoder, Predictor(16, (16, 16), (5, 1)))
    >>> feats = torch.randn(2, 120, encoder.config["n_mels"])
    >>> predictions, lengths = student(feats, torch.tensor([120, 80]))
    >>> predictions.shape, lengths.tolist()
    (torch.Size([2, 12, 16]), [12, 7])
    """

    def __init__(self, encoder, predictor):
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor

    def forward(self, feats, feat_lens):
        """Predicts the teacher's targets from (augmented) features.

        Arguments
        ---------
        feats : torch.Tensor
            (B, T, n_mels) features.
        feat_lens : torch.Tensor
            (B,) frame counts.

        Returns
        -------
        predictions : torch.Tensor
            (B, T', proj_dim).
        lengths : torch.Tensor
            (B,) output frame counts.
        """
        projected, lengths = self.encode(feats, feat_lens)
        return self.predict(projected, lengths), lengths

    def encode(self, feats, feat_lens):
        """The encoder's projected frames (the first half of ``forward``).

        Arguments
        ---------
        feats : torch.Tensor
            (B, T, n_mels) features.
        feat_lens : torch.Tensor
            (B,) frame counts.

        Returns
        -------
        projected : torch.Tensor
            (B, T', proj_dim).
        lengths : torch.Tensor
            (B,) output frame counts.
        """
        encoded = self.encoder.encode(feats, feat_lens)
        return self.encoder.proj(encoded.out), encoded.lengths

    def predict(self, projected, lengths):
        """The predictor on projected frames (the second half of ``forward``).

        Arguments
        ---------
        projected : torch.Tensor
            (B, T', proj_dim) from ``encode``.
        lengths : torch.Tensor
            (B,) valid frames.

        Returns
        -------
        torch.Tensor
            (B, T', proj_dim) predictions.
        """
        return self.predictor(projected, lengths)


class S3LOutputs(NamedTuple):
    """What one S3L forward pass produces for the loss and the logs."""

    predictions: torch.Tensor
    targets: torch.Tensor
    lengths: torch.Tensor
    num_samples: torch.Tensor
    # (B, T') bool, the frames whose loss counts; None: every valid frame.
    frame_mask: torch.Tensor = None


class S3LInputs(NamedTuple):
    """Features of one batch for the student and for the teacher."""

    student_feats: torch.Tensor
    clean_feats: torch.Tensor
    feat_lens: torch.Tensor
    num_samples: torch.Tensor
    # (B, T) bool, the student's time-masked feature frames (if asked).
    time_mask: torch.Tensor = None


def masked_output_frames(time_mask, num_frames, unit, offset):
    """Output frames whose input frames are mostly time-masked.

    Output frame ``i`` of the encoder (valid convolutions, ``unit`` input
    frames per output frame) is centred on input frames ``unit * i +
    offset`` onwards; it counts as masked when at least half of those
    ``unit`` frames are.

    Arguments
    ---------
    time_mask : torch.Tensor
        (B, T) bool, True on masked feature frames.
    num_frames : int
        Output frames T'.
    unit : int
        Input frames per output frame (the encoder's down-sampling).
    offset : int
        Input frames before the centre block of output frame 0.

    Returns
    -------
    torch.Tensor
        (B, T') bool.

    Example
    -------
    >>> mask = torch.zeros(1, 40, dtype=torch.bool)
    >>> mask[0, 10:18] = True
    >>> masked_output_frames(mask, 3, unit=8, offset=2).tolist()
    [[False, True, False]]
    """
    batch, length = time_mask.shape
    needed = offset + unit * num_frames
    mask = time_mask[:, offset:needed].float()
    mask = F.pad(mask, (0, needed - offset - mask.shape[1]))
    return mask.reshape(batch, num_frames, unit).mean(-1) >= 0.5


def s3l_inputs(
    features,
    wavs,
    wav_lens,
    noise_augment=None,
    spec_augment=None,
    with_time_mask=False,
):
    """The student's (noisy, masked) and the teacher's (clean) features.

    Both feature sets come from one call of ``features``: clean and noisy
    waveforms are stacked on the batch axis. The first phase of
    ``s3l_forward``.

    Arguments
    ---------
    features : s3l_plugin.features.MelFeatures
        Feature extractor.
    wavs : torch.Tensor
        (B, S) clean waveforms.
    wav_lens : torch.Tensor
        (B,) relative lengths.
    noise_augment, spec_augment : callable, optional
        The student's augmentations; ``None`` skips one.
    with_time_mask : bool
        Also return ``spec_augment``'s time mask (a ``SpecAugment``).

    Returns
    -------
    S3LInputs
        ``(student_feats, clean_feats, feat_lens, num_samples,
        time_mask)``.

    Example
    -------
    >>> from s3l_plugin.features import MelFeatures
    >>> inputs = s3l_inputs(
    ...     MelFeatures(n_mels=16), torch.randn(2, 1600), torch.tensor([1.0, 0.5])
    ... )
    >>> inputs.student_feats is inputs.clean_feats, inputs.feat_lens.tolist()
    (True, [11, 6])
    """
    num_samples = relative_to_absolute(wav_lens, wavs.shape[1])
    batch_size = wavs.shape[0]
    if noise_augment is not None:
        noisy = noise_augment(wavs, wav_lens)
        feats, feat_lens = features(
            torch.cat([wavs, noisy]), torch.cat([wav_lens, wav_lens])
        )
        clean, student_in = feats[:batch_size], feats[batch_size:]
        feat_lens = feat_lens[:batch_size]
    else:
        clean, feat_lens = features(wavs, wav_lens)
        student_in = clean
    time_mask = None
    if spec_augment is not None and with_time_mask:
        student_in, time_mask = spec_augment(
            student_in, feat_lens, return_time_mask=True
        )
    elif spec_augment is not None:
        student_in = spec_augment(student_in, feat_lens)
    return S3LInputs(student_in, clean, feat_lens, num_samples, time_mask)


def s3l_targets(teacher, clean, feat_lens, num_frames, random_shift=None):
    """The teacher's targets, aligned with the student's output frames.

    The clean features get the random positional shift, the teacher
    encodes them without gradient, and its output is cropped back to the
    student's ``num_frames`` frames before the projection (the shifted
    frames need no projection). The second phase of ``s3l_forward``.

    Arguments
    ---------
    teacher : s3l_plugin.teacher.EMATeacher
        The EMA teacher.
    clean : torch.Tensor
        (B, T, n_mels) clean features.
    feat_lens : torch.Tensor
        (B,) frame counts.
    num_frames : int
        Output frames of the student (its predictions' length).
    random_shift : s3l_plugin.augment.RandomShift, optional
        ``None``: no shift.

    Returns
    -------
    torch.Tensor
        (B, num_frames, proj_dim) targets, no gradient.

    Example
    -------
    >>> from s3l_plugin.encoder import S3LEncoder, architecture
    >>> from s3l_plugin.teacher import EMATeacher
    >>> teacher = EMATeacher(S3LEncoder(**architecture("toy")))
    >>> feats = torch.randn(2, 120, 16)
    >>> s3l_targets(teacher, feats, torch.tensor([120, 80]), 12).shape
    torch.Size([2, 12, 16])
    """
    left = 0
    teacher_in, teacher_lens = clean, feat_lens
    if random_shift is not None:
        teacher_in, teacher_lens, left, _ = random_shift.pad(clean, feat_lens)
    targets, _ = teacher.encode_projected(
        teacher_in, teacher_lens, left=left, num_frames=num_frames
    )
    return targets


def s3l_forward(
    student,
    teacher,
    features,
    wavs,
    wav_lens,
    noise_augment=None,
    spec_augment=None,
    random_shift=None,
    masked_frames_only=False,
):
    """Runs student and teacher on one batch, aligned frame by frame.

    The student sees noisy, SpecAugmented features; the teacher sees the
    clean features with a random positional shift, cropped back so that its
    frames align with the student's. Both feature sets come from one call of
    ``features`` (clean and noisy waveforms stacked on the batch axis). The
    phases are ``s3l_inputs``, the student, then ``s3l_targets``.

    Arguments
    ---------
    student : S3LStudent
        The student (possibly DDP-wrapped).
    teacher : s3l_plugin.teacher.EMATeacher
        The EMA teacher.
    features : s3l_plugin.features.MelFeatures
        Feature extractor.
    wavs : torch.Tensor
        (B, S) clean waveforms.
    wav_lens : torch.Tensor
        (B,) relative lengths.
    noise_augment, spec_augment, random_shift : callable, optional
        Augmentations; ``None`` (as in validation) leaves the input as is.
    masked_frames_only : bool
        Predict only the output frames whose input ``spec_augment`` time-
        masked (``frame_mask``; METHOD.md 8.21); without ``spec_augment``
        every valid frame counts.

    Returns
    -------
    S3LOutputs
        Predictions and targets (B, T', D), lengths (B,), the number of
        valid samples (B,) and the frames whose loss counts (or None).

    Example
    -------
    >>> from s3l_plugin.encoder import S3LEncoder, architecture
    >>> from s3l_plugin.predictor import Predictor
    >>> from s3l_plugin.teacher import EMATeacher
    >>> encoder = S3LEncoder(**architecture("toy"))
    >>> student = S3LStudent(encoder, Predictor(16, (16, 16), (5, 1)))
    >>> teacher = EMATeacher(encoder, total_steps=10)
    >>> outputs = s3l_forward(
    ...     student, teacher, encoder.features,
    ...     torch.randn(2, 16000), torch.tensor([1.0, 0.6]),
    ... )
    >>> outputs.predictions.shape == outputs.targets.shape
    True
    """
    inputs = s3l_inputs(
        features,
        wavs,
        wav_lens,
        noise_augment,
        spec_augment,
        with_time_mask=masked_frames_only,
    )
    predictions, lengths = student(inputs.student_feats, inputs.feat_lens)
    targets = s3l_targets(
        teacher,
        inputs.clean_feats,
        inputs.feat_lens,
        predictions.shape[1],
        random_shift,
    )
    frame_mask = None
    if inputs.time_mask is not None:
        encoder = teacher.encoder
        frame_mask = masked_output_frames(
            inputs.time_mask,
            predictions.shape[1],
            encoder.downsampling,
            (encoder.min_input_frames - encoder.downsampling) // 2,
        )
    return S3LOutputs(
        predictions, targets, lengths, inputs.num_samples, frame_mask
    )
