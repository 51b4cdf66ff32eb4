#!/usr/bin/env python3
"""Speaker identification probe of a frozen S3L encoder (LibriSpeech).

The protocol of the CPC paper's speaker probe (van den Oord et al. 2018):
the speakers of ``train-clean-100``, each speaker's utterances split into
training and test utterances (``test_fraction`` of them, at least one,
drawn per speaker with the seed), a linear classifier trained on frozen
representations. Here the representation is every transformer layer's
statistics pooling (mean and standard deviation over time) combined by
learned softmax layer weights (``s3l_plugin.probe.SpeakerProbe``). Test
accuracy is printed and written with the accuracy on the training
utterances (both in eval mode, after training) and the layer weights to
``<output_folder>/speaker_accuracy.json``.

To run::

    python recipes/LibriSpeech/probe_speaker.py hparams/probe_speaker.yaml \
        --data_folder=/path/to/LibriSpeech --pretrained_path=results/s3l/1986

CPU demo on the synthetic mini corpus, after ``pretrain.py
hparams/s3l_tiny.yaml``::

    python recipes/LibriSpeech/probe_speaker.py \
        hparams/probe_speaker_tiny.yaml --pretrained_path=results/s3l_tiny/1986

Without ``--pretrained_path`` the encoder is randomly initialised (logged):
the baseline the pretrained encoder is compared with.
"""

import csv
import io
import json
import logging
import os
import random
import sys
from collections import defaultdict

import speechbrain as sb
import torch.nn.functional as F
from speechbrain.utils.distributed import if_main_process, run_on_main

from s3l_plugin.config import ConfigError, parse_arguments, run_cli
from s3l_plugin.data.atomic import write_text_atomic
from s3l_plugin.data.audio import SkipBadAudioCollate, make_audio_pipeline
from s3l_plugin.data.batching import (
    eval_loader_kwargs,
    make_train_sampler,
    train_loader_kwargs,
)
from s3l_plugin.data.sources import (
    load_csv_dataset,
    prepare_csvs,
    resolve_data_folder,
)
from s3l_plugin.distributed import unwrap_module
from s3l_plugin.training import S3LBrain, start_experiment

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from librispeech_prepare import prepare_librispeech  # noqa: E402

logger = logging.getLogger(__name__)

RESULT_FILE = "speaker_accuracy.json"


class SpeakerProbeBrain(S3LBrain):
    """Trains ``modules.model`` (a ``SpeakerProbe``) with cross-entropy."""

    def compute_forward(self, batch, stage):
        """Waveforms -> features -> speaker logits."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        model = unwrap_module(self.modules.model)
        feats, feat_lens = model.features(wavs, wav_lens)
        return self.modules.model(feats, feat_lens)

    def compute_objectives(self, predictions, batch, stage):
        """Cross-entropy; counts the correct predictions."""
        speakers = batch.speaker_encoded.data.to(self.device).view(-1)
        loss = F.cross_entropy(predictions.float(), speakers)
        self.correct += int((predictions.argmax(-1) == speakers).sum())
        self.total += len(speakers)
        self.loss_sum += float(loss.detach())
        self.batches += 1
        return loss

    def init_optimizers(self):
        """The optimizer gets the trainable parameters only."""
        trainable = [p for p in self.modules.parameters() if p.requires_grad]
        self.optimizer = self.opt_class(trainable)
        self.optimizers_dict = {"opt_class": self.optimizer}
        self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def on_stage_start(self, stage, epoch=None):
        """Fresh counts."""
        super().on_stage_start(stage, epoch)
        self.correct = self.total = self.batches = 0
        self.loss_sum = 0.0

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the accuracy; checkpoints after each training epoch."""
        super().on_stage_end(stage, stage_loss, epoch)
        stats = {
            "loss": self.loss_sum / max(self.batches, 1),
            "accuracy": 100.0 * self.correct / max(self.total, 1),
        }
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            self.hparams.train_logger.log_stats(
                stats_meta={
                    "epoch": epoch,
                    "skipped_audio": self.skipped_audio,
                },
                train_stats=stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"epoch": epoch}, num_to_keep=1
            )
        else:
            split = getattr(self, "eval_split", "test")
            self.eval_stats[split] = dict(stats, utterances=self.total)
            self.hparams.train_logger.log_stats(
                stats_meta={"evaluated": f"{split} ({self.total} utterances)"},
                test_stats=stats,
            )


def split_speaker_utterances(csv_path, save_folder, test_fraction, seed):
    """Splits each speaker's utterances into training and test utterances.

    Per speaker (the first field of ``spk_id``), the utterances are sorted,
    shuffled with ``seed`` and the speaker, and ``test_fraction`` of them
    (rounded, at least one) are kept for testing. Speakers with fewer than
    two utterances are left out, with a warning.

    Arguments
    ---------
    csv_path : str
        A LibriSpeech CSV (``ID,duration,wav,spk_id,wrd``).
    save_folder : str
        Where ``speaker_train.csv`` and ``speaker_test.csv`` go; both add
        a ``speaker`` column.
    test_fraction : float
        Share of each speaker's utterances tested, in (0, 1).
    seed : int
        Seed of the draw.

    Returns
    -------
    dict
        ``train`` and ``test`` CSV paths.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "all.csv")
    >>> rows = [f"{s}-1-{i},1.0,x.flac,{s}-1,A" for s in (7, 8)
    ...         for i in range(5)]
    >>> _ = open(path, "w").write("ID,duration,wav,spk_id,wrd\\n"
    ...                           + "\\n".join(rows) + "\\n")
    >>> paths = split_speaker_utterances(path, folder, 0.2, seed=1)
    >>> [len(open(p).read().splitlines()) - 1 for p in paths.values()]
    [8, 2]
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1): {test_fraction}")
    with open(csv_path, encoding="utf-8", newline="") as csv_file:
        reader = csv.DictReader(csv_file)
        header = list(reader.fieldnames) + ["speaker"]
        by_speaker = defaultdict(list)
        for row in reader:
            row["speaker"] = row["spk_id"].split("-")[0]
            by_speaker[row["speaker"]].append(row)
    parts = {"train": [], "test": []}
    for speaker, rows in sorted(by_speaker.items()):
        if len(rows) < 2:
            logger.warning(
                "Speaker %s has %d utterance: left out of the probe",
                speaker,
                len(rows),
            )
            continue
        rows.sort(key=lambda row: row["ID"])
        random.Random(f"{seed}:{speaker}").shuffle(rows)
        num_test = min(len(rows) - 1, max(1, round(test_fraction * len(rows))))
        parts["test"].extend(rows[:num_test])
        parts["train"].extend(rows[num_test:])
    os.makedirs(save_folder, exist_ok=True)
    paths = {}
    for name, rows in parts.items():
        text = io.StringIO()
        writer = csv.DictWriter(text, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda row: row["ID"]))
        paths[name] = os.path.join(save_folder, f"speaker_{name}.csv")
        write_text_atomic(paths[name], text.getvalue())
    return paths


def dataio_prepare(hparams, encoder):
    """Training and test datasets and the speaker label encoder.

    Utterances too short for two frames in every layer (a standard
    deviation) or longer than ``max_duration`` are left out.
    """
    paths = {
        name: os.path.join(hparams["csv_folder"], f"speaker_{name}.csv")
        for name in ("train", "test")
    }
    samples_per_frame = encoder.features.hop_length * encoder.downsampling
    min_seconds = encoder.min_input_seconds + samples_per_frame / (
        encoder.features.sample_rate
    )

    def usable(duration):
        return min_seconds <= float(duration) <= hparams["max_duration"]

    datasets = {}
    for name, path in paths.items():
        dataset = load_csv_dataset(path)
        kept = dataset.filtered_sorted(
            key_test={"duration": usable}, sort_key="duration"
        )
        dropped = len(dataset) - len(kept)
        if dropped:
            logger.warning(
                "%s: %d utterances left out (shorter than %.2f s or longer "
                "than %.1f s)",
                path,
                dropped,
                min_seconds,
                hparams["max_duration"],
            )
        datasets[name] = kept
    label_encoder = sb.dataio.encoder.CategoricalEncoder()
    label_encoder.load_or_create(
        os.path.join(hparams["save_folder"], "speakers.txt"),
        from_didatasets=[datasets["train"]],
        output_key="speaker",
    )

    @sb.utils.data_pipeline.takes("speaker")
    @sb.utils.data_pipeline.provides("speaker_encoded")
    def label_pipeline(speaker):
        return label_encoder.encode_sequence_torch([speaker])

    audio = make_audio_pipeline(
        hparams["sample_rate"],
        max_seconds=hparams["max_duration"],
        min_seconds=min_seconds,
    )
    for dataset in datasets.values():
        sb.dataio.dataset.add_dynamic_item([dataset], audio)
        sb.dataio.dataset.add_dynamic_item([dataset], label_pipeline)
        sb.dataio.dataset.set_output_keys(
            [dataset], ["id", "sig", "audio_error", "speaker_encoded"]
        )
    return datasets["train"], datasets["test"], label_encoder


def main(argv):
    """Runs the probe; configuration mistakes raise ``ConfigError``.

    Arguments
    ---------
    argv : list of str
        Command-line arguments (YAML file, then options).

    Returns
    -------
    SpeakerProbeBrain
        The trained and tested Brain (``result``: what the JSON holds).
    """
    hparams_file, run_opts, overrides, restart = parse_arguments(argv)
    hparams = start_experiment(hparams_file, run_opts, overrides, restart)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    data_folder = resolve_data_folder(hparams)
    split = hparams["speaker_split"]
    prepare_csvs(
        prepare_librispeech,
        data_folder,
        [split],
        save_folder=hparams["csv_folder"],
        tr_splits=[split],
        skip_prep=hparams["skip_prep"],
    )
    try:
        run_on_main(
            split_speaker_utterances,
            args=[
                os.path.join(hparams["csv_folder"], f"{split}.csv"),
                hparams["csv_folder"],
                hparams["test_fraction"],
                hparams["seed"],
            ],
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error
    encoder = hparams["encoder"]
    train, test, label_encoder = dataio_prepare(hparams, encoder)

    if hparams["pretrained_path"]:
        run_on_main(hparams["pretrainer"].collect_files)
        hparams["pretrainer"].load_collected()
        init = f"pretrained encoder from {hparams['pretrained_path']}"
    else:
        logger.warning(
            "No pretrained_path: the probe runs on a RANDOMLY INITIALISED "
            "encoder (the baseline). Pass --pretrained_path=<pretraining "
            "output folder> to probe a pretrained S3L encoder."
        )
        init = "random-init encoder"
    num_speakers = len(label_encoder)
    model = hparams["probe"](num_speakers=num_speakers)
    checkpointer = hparams["checkpointer"]
    checkpointer.add_recoverable("model", model)
    brain = SpeakerProbeBrain(
        modules={"model": model},
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=checkpointer,
    )
    sampler = make_train_sampler(hparams, train)
    brain.train_sampler = sampler
    collate = SkipBadAudioCollate(empty_batch=True)
    brain.fit(
        brain.hparams.epoch_counter,
        train,
        train_loader_kwargs=train_loader_kwargs(hparams, collate, sampler),
    )
    # The training utterances too, in eval mode: how well the classifier
    # fits them, against how well it generalises to the test utterances.
    brain.eval_stats = {}
    for split, dataset in (("train", train), ("test", test)):
        brain.eval_split = split
        brain.evaluate(
            dataset,
            test_loader_kwargs=eval_loader_kwargs(
                hparams, collate, hparams["test_batch_size"]
            ),
        )
    result = {
        "test_accuracy": brain.eval_stats["test"]["accuracy"],
        "train_accuracy": brain.eval_stats["train"]["accuracy"],
        "chance_accuracy": 100.0 / num_speakers,
        "speakers": num_speakers,
        "train_utterances": brain.eval_stats["train"]["utterances"],
        "test_utterances": brain.eval_stats["test"]["utterances"],
        "encoder": init,
        "layers": model.layers,
        "layer_weights": [
            round(w, 4) for w in model.layer_sum.weights.tolist()
        ],
        "epochs": brain.hparams.epoch_counter.current,
    }
    if if_main_process():
        write_text_atomic(
            os.path.join(hparams["output_folder"], RESULT_FILE),
            json.dumps(result, indent=2) + "\n",
        )
        line = (
            f"speaker identification accuracy: {result['test_accuracy']:.2f}% "
            f"(test, {num_speakers} speakers, {init}; train "
            f"{result['train_accuracy']:.2f}%, chance "
            f"{result['chance_accuracy']:.2f}%)"
        )
        logger.info(line)
        print(line)
    brain.result = result
    return brain


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
