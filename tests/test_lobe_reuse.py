"""The pretrained encoder as a lobe of another SpeechBrain recipe.

A small utterance classifier Brain, defined here (not ours), built from a
YAML string: the lobe is ``!new:s3l_plugin.encoder.S3LEncoder`` and its
weights come from a ``Pretrainer``, as the README shows.
"""

import os

import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from s3l_plugin.encoder import S3LEncoder, architecture
from s3l_plugin.pretrained import save_encoder

YAML = """
pretrained_path: !PLACEHOLDER
save_folder: !PLACEHOLDER

encoder: !new:s3l_plugin.encoder.S3LEncoder
    n_mels: 16
    d_model: 16
    nhead: 2
    d_ffn: 32
    conv1_channels: [16, 16, 16]
    conv2_channels: [32, 16]
    transf1_layers: 1
    transf2_layers: 1
    proj_dim: 16
    pos_conv_kernel: 8
    pos_conv_groups: 2

pooling: !new:speechbrain.nnet.pooling.StatisticsPooling
    return_std: False

classifier: !new:torch.nn.Linear
    in_features: 16
    out_features: 2

modules:
    encoder: !ref <encoder>
    classifier: !ref <classifier>

opt_class: !name:torch.optim.Adam
    lr: 0.01

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    collect_in: !ref <save_folder>
    loadables:
        encoder: !ref <encoder>
    paths:
        encoder: !ref <pretrained_path>/encoder.ckpt
    custom_hooks:
        encoder: !name:s3l_plugin.pretrained.transfer_encoder
"""


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster (and far more steadily) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class UtteranceClassifier(sb.Brain):
    """Mean-pools the encoder's valid frames, then a linear classifier."""

    def compute_forward(self, batch, stage):
        wavs, wav_lens, _ = (tensor.to(self.device) for tensor in batch)
        out = self.modules.encoder(wavs, wav_lens)  # padded frames are 0
        pooled = self.hparams.pooling(out, lengths=wav_lens).squeeze(1)
        return torch.log_softmax(self.modules.classifier(pooled), dim=-1)

    def compute_objectives(self, predictions, batch, stage):
        labels = batch[2].to(self.device)
        loss = torch.nn.functional.nll_loss(predictions, labels)
        self.losses.append(loss.item())
        return loss


def test_pretrained_encoder_as_lobe(tmp_path):
    torch.manual_seed(0)
    pretrained = S3LEncoder(**architecture("toy"))
    pretrained_path = str(tmp_path / "pretrained")
    save_encoder(pretrained, pretrained_path)

    hparams = load_hyperpyyaml(
        YAML,
        {
            "pretrained_path": pretrained_path,
            "save_folder": str(tmp_path / "collected"),
        },
    )
    pretrainer = hparams["pretrainer"]
    pretrainer.collect_files()
    pretrainer.load_collected()
    encoder = hparams["encoder"]
    for key, value in pretrained.state_dict().items():
        assert torch.equal(value, encoder.state_dict()[key]), key

    # Two classes: low tone vs. high tone, different lengths (padding).
    time = torch.arange(16000) / 16000.0
    wavs, lens, labels = [], [], []
    for i in range(8):
        label = i % 2
        freq = 300.0 if label == 0 else 2500.0
        length = 1.0 - 0.1 * (i // 2)
        wav = 0.5 * torch.sin(2 * torch.pi * freq * time)
        wav[int(length * 16000) :] = 0.0
        wavs.append(wav)
        lens.append(length)
        labels.append(label)
    data = torch.utils.data.TensorDataset(
        torch.stack(wavs), torch.tensor(lens), torch.tensor(labels)
    )
    loader = torch.utils.data.DataLoader(data, batch_size=8)

    brain = UtteranceClassifier(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": "cpu", "noprogressbar": True},
    )
    brain.losses = []
    brain.fit(range(1, 11), loader)
    assert len(brain.losses) == 10
    assert brain.losses[-1] < 0.5 * brain.losses[0]
    # The pretrained lobe itself was finetuned (it is in ``modules``).
    assert not torch.equal(
        pretrained.transf2.layers[0].ffn[0].weight,
        encoder.transf2.layers[0].ffn[0].weight,
    )
    assert os.path.islink(tmp_path / "collected" / "encoder.ckpt") or (
        os.path.isfile(tmp_path / "collected" / "encoder.ckpt")
    )
