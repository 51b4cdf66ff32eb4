"""The CTC finetuning recipe, end to end on a tiny generated corpus."""

import os
import re
import subprocess
import sys

import pytest
import torch
from hooked_recipe import load_recipe
from hyperpyyaml import load_hyperpyyaml

from s3l_plugin.config import ConfigError, check_ctc_config
from s3l_plugin.data.mini_librispeech import generate_mini_librispeech
from s3l_plugin.encoder import S3LEncoder, architecture
from s3l_plugin.pretrained import save_encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "LibriSpeech", "finetune.py")
TINY_YAML = os.path.join(ROOT, "hparams", "finetune_ctc_tiny.yaml")


finetune = load_recipe(RECIPE)


def load_hparams(overrides):
    with open(TINY_YAML, encoding="utf-8") as fin:
        return load_hyperpyyaml(fin, overrides)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster (and far more steadily) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("corpus") / "mini")
    generate_mini_librispeech(
        folder,
        seed=3,
        train_minutes=0.6,
        dev_minutes=0.15,
        test_minutes=0.15,
        train_speakers=2,
        dev_speakers=1,
        test_speakers=1,
        with_noise=False,
        progress=False,
    )
    return folder


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.manual_seed(0)
    encoder = S3LEncoder(**architecture("toy", transf2_layers=2))
    folder = str(tmp_path_factory.mktemp("pretrained"))
    save_encoder(encoder, folder)
    return encoder, folder


def _args(corpus, pretrained_folder, output_folder, *extra):
    return [
        TINY_YAML,
        f"--data_folder={corpus}",
        f"--pretrained_path={pretrained_folder}",
        f"--output_folder={output_folder}",
        "--noprogressbar",
        *extra,
    ]


def test_architecture_comes_from_the_checkpoint(tmp_path, pretrained):
    encoder, folder = pretrained
    hparams = load_hparams(
        {"pretrained_path": folder, "output_folder": str(tmp_path)}
    )
    assert hparams["encoder"].config == encoder.config
    assert hparams["head"].output.in_features == 16
    # Without a pretrained encoder: the YAML's named size.
    scratch = load_hparams({"output_folder": str(tmp_path)})
    assert scratch["head"].output.in_features == 128


def test_missing_pretrained_encoder_is_a_config_error(tmp_path, corpus):
    args = _args(corpus, tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ConfigError, match="encoder_config.json"):
        finetune.main(args)


def test_nonpositive_max_grad_norm_is_rejected(tmp_path, corpus, pretrained):
    args = _args(corpus, pretrained[1], tmp_path, "--max_grad_norm=0")
    with pytest.raises(ConfigError, match="max_grad_norm"):
        finetune.main(args)


def test_frozen_encoder_stays_frozen(tmp_path, corpus, pretrained):
    encoder, folder = pretrained
    brain = finetune.main(
        _args(
            corpus,
            folder,
            tmp_path / "frozen",
            "--freeze_encoder=True",
            "--total_steps=3",
            "--number_of_epochs=1",
            "--test_splits=[]",
        )
    )
    model = brain.modules.model
    assert brain.optimizer_step == 3
    assert set(brain.optimizers_dict) == {"head_optimizer"}
    in_optimizer = {
        id(p)
        for opt in brain.optimizers_dict.values()
        for group in opt.param_groups
        for p in group["params"]
    }
    assert not any(id(p) in in_optimizer for p in model.encoder.parameters())
    assert all(not p.requires_grad for p in model.encoder.parameters())
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, model.encoder.state_dict()[key]), key
    # The head and the layer weights did train.
    assert (model.layer_sum.raw_weights != 0).any()
    fresh = load_hparams(
        {
            "pretrained_path": folder,
            "output_folder": str(tmp_path / "x"),
        }
    )
    assert not torch.equal(
        fresh["head"].output.weight, model.head.output.weight
    )


def test_warm_start_trains_the_encoder_only_after_its_steps(
    tmp_path, corpus, pretrained
):
    encoder, folder = pretrained
    brains = {}
    for steps in (2, 3):
        brains[steps] = finetune.main(
            _args(
                corpus,
                folder,
                tmp_path / str(steps),
                "--freeze_encoder_steps=2",
                f"--total_steps={steps}",
                "--number_of_epochs=1",
                "--test_splits=[]",
            )
        )
    warm = brains[2].modules.model
    assert brains[2].optimizer_step == 2
    assert set(brains[2].optimizers_dict) == {
        "head_optimizer",
        "encoder_optimizer",
    }
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, warm.encoder.state_dict()[key]), key
    # The gradients it computed meanwhile were dropped, not piled up.
    assert all(p.grad is None for p in warm.encoder.parameters())
    assert (warm.layer_sum.raw_weights != 0).any()
    # From step 3 on the encoder trains.
    trained = brains[3].modules.model.encoder.state_dict()
    changed = [
        key
        for key, value in encoder.state_dict().items()
        if not torch.equal(value, trained[key])
    ]
    assert any(key.startswith("transf") for key in changed), changed


def test_tiny_finetune_lowers_loss_and_writes_wer(tmp_path, corpus, pretrained):
    output = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, RECIPE]
        + _args(
            corpus,
            pretrained[1],
            output,
            "--total_steps=40",
            "--number_of_epochs=8",
            # 30 s batches: 5-10 optimizer steps per epoch of this corpus
            # (its quantile duration buckets each end in a partial batch).
            "--max_batch_length=30",
            "--lr_head=0.02",
            "--beam_size=4",
            "--tune_lm_weights=[0.5, 2.0]",
            "--tune_word_scores=[0.0]",
        ),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"test-clean WER: (\d+\.\d\d)%", result.stdout)
    assert match, result.stdout[-2000:]
    wer_file = output / "wer_test-clean.txt"
    assert wer_file.is_file()
    assert "%WER" in wer_file.read_text()
    assert (output / "wer_beam_test-clean.txt").is_file()
    assert "lexicon + n-gram beam search" in match.string
    assert "dev-clean WER" in result.stdout  # decoded first, for tuning
    assert (output / "lm" / "lm_3gram.arpa").is_file()
    assert "Decoder tuned on dev-clean" in (output / "log.txt").read_text()
    log = (output / "train_log.txt").read_text()
    losses = [float(x) for x in re.findall(r"train loss: ([\d.e+-]+)", log)]
    steps = [int(x) for x in re.findall(r"optimizer_step: (\d+)", log)]
    assert steps[-1] == 40 and len(losses) == len(steps) >= 4, log
    assert losses[-1] < 0.75 * losses[0], losses


def test_sentencepiece_vocabulary_is_trained_and_checked(tmp_path):
    lines = ["ID,duration,wav,spk_id,wrd"] + [
        f"u{i},1.0,x.flac,1-1,THE CAT SAT ON THE MAT NUMBER {i % 3}"
        for i in range(30)
    ]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    hparams = load_hparams(
        {
            "output_folder": str(tmp_path / "out"),
            "csv_folder": str(tmp_path),
            "vocab": "sentencepiece",
            "sp_vocab_size": 18,
        }
    )
    vocab = finetune.build_vocabulary(hparams)
    assert len(vocab) == 19
    model = os.path.join(
        hparams["save_folder"], "tokenizer", "18_unigram.model"
    )
    assert os.path.isfile(model)
    assert vocab.decode(vocab.encode("the cat sat")) == "THE CAT SAT"
    with pytest.raises(ConfigError, match="--output_neurons=19"):
        check_ctc_config(hparams, len(vocab))
