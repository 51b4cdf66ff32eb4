"""The log-mel floor of the frozen probes: features in place of an encoder.

A frozen probe of a pretrained encoder says something only next to the same
probe on the features the encoder reads: ``LogMelFrames`` stacks the
normalised log-mels of S3L's front end, 8 frames (80 ms, the encoder's
frame rate) per vector, so that the finetuning recipe's head, up-sampling
and decoding are the probe's, unchanged. It has no parameters: with
``freeze_encoder`` it is what a linear CTC layer gets from the audio
without any learned representation (docs/EXPERIMENTS.md, "Probe floors").

    PYTHONPATH=experiments/real_speech python recipes/LibriSpeech/finetune.py \
        hparams/finetune_ctc_tiny.yaml --data_folder=SPLIT \
        --train_splits=[train-1h] --freeze_encoder=True \
        --num_summed_layers=1 --encoder=!new:logmel_floor.LogMelFrames

Example
-------
>>> import torch
>>> floor = LogMelFrames()
>>> feats, lens = floor.features(torch.randn(2, 16000))
>>> encoded = floor.encode(feats, lens, return_layers=True)
>>> encoded.out.shape, encoded.lengths.tolist()
(torch.Size([2, 12, 1024]), [12, 12])
"""

from types import SimpleNamespace

from torch import nn

from s3l_plugin.encoder import EncoderOutput, S3LEncoder
from s3l_plugin.features import MelFeatures
from s3l_plugin.lengths import zero_padding


class LogMelFrames(nn.Module):
    """Normalised log-mels, ``stack`` frames per output vector.

    Arguments
    ---------
    n_mels : int
        Mel bands (S3L's tiny and base encoders read 128).
    stack : int
        Feature frames per output frame (the encoder's down-sampling).
    """

    def __init__(self, n_mels=128, stack=S3LEncoder.downsampling):
        super().__init__()
        self.features = MelFeatures(n_mels=n_mels, normalize=True)
        self.stack = stack
        # What the recipe's YAML reads of an encoder (its output width).
        self.architecture = SimpleNamespace(d_model=n_mels * stack)

    @property
    def min_input_seconds(self):
        """Shortest waveform, in seconds, giving one output frame."""
        samples = (self.stack - 1) * self.features.hop_length
        return samples / self.features.sample_rate

    def output_lengths(self, feat_lens):
        """Whole stacks in ``feat_lens`` feature frames."""
        return feat_lens // self.stack

    def encode(self, feats, feat_lens, return_layers=False):
        """Stacks ``feats`` (B, T, n_mels) into (B, T // stack, D) frames.

        Arguments
        ---------
        feats : torch.Tensor
            (B, T, n_mels) features.
        feat_lens : torch.Tensor
            (B,) long valid frames.
        return_layers : bool
            Report the stacked frames as the one "layer".

        Returns
        -------
        EncoderOutput
            ``(out, lengths, layers, layer_lengths)``.
        """
        lengths = self.output_lengths(feat_lens.to(feats.device).long())
        frames = feats.shape[1] // self.stack
        out = zero_padding(
            feats[:, : frames * self.stack].reshape(feats.shape[0], frames, -1),
            lengths,
        )
        if not return_layers:
            return EncoderOutput(out, lengths, [], [])
        return EncoderOutput(out, lengths, [out], [lengths])
