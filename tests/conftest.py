"""Makes the recipe-local modules (``librispeech_prepare``) importable.

Also a session-scoped tiny generated corpus for the recipe tests, and
runners that start the recipes through ``hooked_recipe.py`` (the test
hooks: crash after N steps, dump the final state).
"""

import importlib.util
import os
import sys

import pytest

sys.path.insert(
    0,
    os.path.join(
        os.path.dirname(__file__), os.pardir, "recipes", "LibriSpeech"
    ),
)


# ---- A tiny generated corpus shared by the pretraining recipe's tests -----
# generate_mini_librispeech arguments; the recipe's mini_corpus_* keys of
# the same names (see s3l_plugin.data.sources.MINI_CORPUS_KEYS) ask for
# exactly this corpus, so a run without --data_folder reuses it.
TINY_CORPUS_ARGS = {
    "seed": 0,
    "train_minutes": 1.5,
    "dev_minutes": 0.3,
    "test_minutes": 0.1,
    "train_speakers": 4,
    "dev_speakers": 1,
    "test_speakers": 1,
    "sentences": "grammar",  # as the recipes' YAMLs ask
}


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Folder of a tiny mini LibriSpeech (about 1.5 min of training speech).

    Read-only for the tests: copy what you mean to damage. ``.args`` holds
    the generation arguments.
    """
    from s3l_plugin.data.mini_librispeech import generate_mini_librispeech

    folder = str(tmp_path_factory.mktemp("tiny_corpus") / "mini")
    generate_mini_librispeech(folder, progress=False, **TINY_CORPUS_ARGS)
    return TinyCorpus(folder, dict(TINY_CORPUS_ARGS))


class TinyCorpus(str):
    """A corpus path (a str) that also carries its generation arguments."""

    def __new__(cls, folder, args):
        corpus = super().__new__(cls, folder)
        corpus.args = args
        return corpus


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOOKED_RECIPE = os.path.join(ROOT, "tests", "hooked_recipe.py")
PRETRAIN_RECIPE = os.path.join(ROOT, "recipes", "LibriSpeech", "pretrain.py")
PRETRAIN_TINY_YAML = os.path.join(ROOT, "hparams", "s3l_tiny.yaml")


def load_experiment(name):
    """Imports ``experiments/<name>/run.py`` as the module ``name``."""
    path = os.path.join(ROOT, "experiments", name, "run.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# s3l_tiny.yaml shrunk further for tests: a 64-wide encoder, 10-s batches,
# a log line per optimizer step.
SMALL_PRETRAIN_ARGS = [
    "--noprogressbar",
    "--d_model=64",
    "--encoder={conv1_channels: [32, 64, 64], conv2_channels: [64, 64], "
    "d_ffn: 64, nhead: 2, pos_conv_kernel: 16, pos_conv_groups: 4}",
    "--dynamic_batch_sampler={max_batch_length: 10}",
    "--log_interval=1",
]


class PretrainRunner:
    """Runs the pretraining recipe on the tiny corpus, small model.

    Arguments
    ---------
    corpus : str
        The ``--data_folder``.
    """

    def __init__(self, corpus):
        self.corpus = corpus

    def argv(self, output_folder, *extra, data_folder=True, yaml=None):
        """Recipe arguments: YAML, folders, the small model, ``extra``."""
        argv = [yaml or PRETRAIN_TINY_YAML, f"--output_folder={output_folder}"]
        if data_folder:
            argv.append(f"--data_folder={self.corpus}")
        return argv + SMALL_PRETRAIN_ARGS + list(extra)

    def command(self, output_folder, *extra, **kwargs):
        """The recipe's command line (with the test hooks)."""
        return [sys.executable, HOOKED_RECIPE, PRETRAIN_RECIPE] + self.argv(
            output_folder, *extra, **kwargs
        )

    def run(self, output_folder, *extra, env=None, **kwargs):
        """Runs the recipe in a subprocess; returns CompletedProcess."""
        import subprocess

        full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
        return subprocess.run(
            self.command(output_folder, *extra, **kwargs),
            cwd=ROOT,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=600,
        )


@pytest.fixture(scope="session")
def pretrain_runner(tiny_corpus):
    """A :class:`PretrainRunner` on the session's tiny corpus."""
    return PretrainRunner(tiny_corpus)


# Bad files added to the tiny corpus's CSVs: (id, CSV duration, expected
# reason in the log). The durations lie (as a file replaced after data
# preparation would) so that every file passes the recipe's duration filter;
# the corrupt one's 15 s puts it alone in its batch, which is then empty.
BAD_TRAIN_AUDIO = [
    ("bad-corrupt", 15.0, "unreadable audio"),
    ("bad-empty", 3.0, "empty audio (0 samples)"),
    ("bad-silent", 3.0, "silent (all samples are zero)"),
    ("bad-nan", 3.0, "non-finite (NaN or Inf) samples"),
    ("bad-long", 5.0, "is longer than the maximum 20.0 s"),
    ("bad-short", 2.0, "is shorter than the minimum 1.0 s"),
]
# Fixable files: trained on after a warning.
FIXED_TRAIN_AUDIO = [
    ("fix-stereo", "2 channels, down-mixed to mono"),
    ("fix-8khz", "sample rate 8000 Hz, resampled to 16000 Hz"),
]
BAD_VALID_AUDIO = [("bad-valid-silent", 3.0, "silent (all samples are zero)")]


def _write_bad_audio(folder, source):
    """Writes the bad and fixable files; returns {id: path}."""
    import numpy
    import soundfile
    import torch
    import torchaudio

    speech, rate = soundfile.read(source, dtype="float32")
    paths = {}

    def path(utt_id, ext="wav"):
        paths[utt_id] = os.path.join(folder, f"{utt_id}.{ext}")
        return paths[utt_id]

    with open(path("bad-corrupt", "flac"), "wb") as f:
        f.write(numpy.random.default_rng(0).bytes(4096))
    soundfile.write(path("bad-empty"), numpy.zeros(0), rate)
    soundfile.write(path("bad-silent"), numpy.zeros(3 * rate), rate)
    nan = speech[: 3 * rate].copy()
    nan[100] = numpy.nan
    soundfile.write(path("bad-nan"), nan, rate, subtype="FLOAT")
    soundfile.write(path("bad-long"), numpy.tile(speech, 30)[: 25 * rate], rate)
    soundfile.write(path("bad-short"), speech[: rate // 5], rate)
    soundfile.write(path("bad-valid-silent"), numpy.zeros(3 * rate), rate)
    stereo = numpy.stack([speech, 0.5 * speech], axis=1)
    soundfile.write(path("fix-stereo", "flac"), stereo, rate)
    low = torchaudio.functional.resample(torch.from_numpy(speech), rate, 8000)
    soundfile.write(path("fix-8khz", "flac"), low.numpy(), 8000)
    return paths


@pytest.fixture(scope="session")
def bad_audio_csvs(tiny_corpus, tmp_path_factory):
    """A CSV folder: the tiny corpus's train and dev CSVs plus bad audio.

    Run the recipe with ``--csv_folder=<it> --skip_prep=True``. The
    files are damaged after "preparation", as at training time.
    """
    import csv

    from librispeech_prepare import prepare_librispeech

    folder = str(tmp_path_factory.mktemp("bad_audio_csvs"))
    prepare_librispeech(
        tiny_corpus,
        folder,
        tr_splits=["train-clean-100"],
        dev_splits=["dev-clean"],
        merge_lst=["train-clean-100"],
        merge_name="train.csv",
    )
    with open(os.path.join(folder, "train.csv"), encoding="utf-8") as f:
        first = next(csv.DictReader(f))
    paths = _write_bad_audio(folder, first["wav"])

    def append(csv_name, rows):
        with open(os.path.join(folder, csv_name), "a", encoding="utf-8") as f:
            for utt_id, duration in rows:
                f.write(f"{utt_id},{duration},{paths[utt_id]},bad,BAD\n")

    append("train.csv", [(u, d) for u, d, _ in BAD_TRAIN_AUDIO])
    append("train.csv", [(u, 2.5) for u, _ in FIXED_TRAIN_AUDIO])
    append("dev-clean.csv", [(u, d) for u, d, _ in BAD_VALID_AUDIO])
    return folder


# ---- The finetuning recipe on the tiny corpus -------------------------------
FINETUNE_RECIPE = os.path.join(ROOT, "recipes", "LibriSpeech", "finetune.py")
FINETUNE_TINY_YAML = os.path.join(ROOT, "hparams", "finetune_ctc_tiny.yaml")


@pytest.fixture(scope="session")
def tiny_pretrained_encoder(tmp_path_factory):
    """A pretraining output folder holding a random tiny S3L encoder."""
    import torch

    from s3l_plugin.encoder import S3LEncoder, architecture
    from s3l_plugin.pretrained import save_encoder

    torch.manual_seed(0)
    encoder = S3LEncoder(**architecture("toy", transf2_layers=2))
    folder = str(tmp_path_factory.mktemp("tiny_pretrained"))
    save_encoder(encoder, folder)
    return folder


class FinetuneRunner(PretrainRunner):
    """Runs the finetuning recipe on the tiny corpus and a tiny encoder.

    Arguments
    ---------
    corpus : str
        The ``--data_folder``.
    pretrained : str
        The ``--pretrained_path``.
    """

    def __init__(self, corpus, pretrained):
        super().__init__(corpus)
        self.pretrained = pretrained

    def argv(self, output_folder, *extra, data_folder=True, yaml=None):
        """Recipe arguments: YAML, folders, no test set, greedy decoding."""
        argv = [
            yaml or FINETUNE_TINY_YAML,
            f"--output_folder={output_folder}",
            f"--pretrained_path={self.pretrained}",
            "--noprogressbar",
            "--beam_search=False",
            "--test_splits=[]",
        ]
        if data_folder:
            argv.append(f"--data_folder={self.corpus}")
        return argv + list(extra)

    def command(self, output_folder, *extra, **kwargs):
        """The recipe's command line (with the test hooks)."""
        return [sys.executable, HOOKED_RECIPE, FINETUNE_RECIPE] + self.argv(
            output_folder, *extra, **kwargs
        )


@pytest.fixture(scope="session")
def finetune_runner(tiny_corpus, tiny_pretrained_encoder):
    """A :class:`FinetuneRunner` on the session's tiny corpus."""
    return FinetuneRunner(tiny_corpus, tiny_pretrained_encoder)
