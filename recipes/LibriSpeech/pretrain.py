#!/usr/bin/env python3
"""S3LSpeech self-supervised pretraining on LibriSpeech.

Teacher-student contrastive pretraining (Lugo & Vielzeuf, Interspeech
2024): the student sees noisy, SpecAugmented features and predicts, frame by
frame, the projected outputs of an EMA teacher that sees the clean features
with a random positional shift. InfoNCE with in-utterance negatives.

To run (paper configuration, LibriSpeech 960 h on one GPU)::

    python recipes/LibriSpeech/pretrain.py hparams/s3l.yaml \
        --data_folder=/path/to/LibriSpeech

Without ``--data_folder`` the synthetic mini corpus is used (generated on
first use). ``hparams/s3l_tiny.yaml`` is the CPU demo. Several processes::

    torchrun --nproc_per_node=2 recipes/LibriSpeech/pretrain.py \
        hparams/s3l.yaml --data_folder=...  # --distributed_backend=gloo on CPU

Rerunning an interrupted command resumes from its last checkpoint and ends
with the same parameters as an uninterrupted run; unusable audio and
non-finite steps are skipped and counted; configuration mistakes stop the
run at start-up with one line, ``s3l: error: ...`` (see
``s3l_plugin.training``). The encoder is written to the output folder
(``encoder.ckpt``, ``encoder_config.json``) and, as a SpeechBrain inference
folder, to ``<output_folder>/inference/``
(``speechbrain.inference.encoders.WaveformEncoder.from_hparams``).
"""

import json
import logging
import os
import sys
import time

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process

from s3l_plugin.config import parse_arguments, run_cli
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
    resolve_noise_csv,
)
from s3l_plugin.distributed import rank_and_world_size, unwrap_module
from s3l_plugin.inference import write_encoder_folder
from s3l_plugin.pretrained import save_encoder
from s3l_plugin.pretraining import s3l_forward
from s3l_plugin.training import S3LBrain, start_experiment

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from librispeech_prepare import prepare_librispeech  # noqa: E402

logger = logging.getLogger(__name__)
STAT_KEYS = ("loss", "batches", "accuracy", "frames", "audio", "padded")


class S3LPretrain(S3LBrain):
    """Student (encoder + predictor) against an EMA teacher.

    The teacher is a module (moved to the device, checkpointed) without
    trainable parameters, so SpeechBrain neither optimises nor DDP-wraps
    it; it keeps itself in eval mode whatever ``Brain`` asks. ``main`` sets
    ``noise_augment``.
    """

    def compute_forward(self, batch, stage):
        """Student predictions and teacher targets for one batch."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        train = stage == sb.Stage.TRAIN
        return s3l_forward(
            self.modules.student,
            self.modules.teacher,
            self.modules.teacher.encoder.features,
            wavs,
            wav_lens,
            noise_augment=self.noise_augment if train else None,
            spec_augment=self.hparams.spec_augment if train else None,
            random_shift=self.hparams.random_shift if train else None,
            masked_frames_only=self.hparams.loss_on_masked_frames,
        )

    def compute_objectives(self, outputs, batch, stage):
        """Contrastive loss; accumulates the statistics that are logged."""
        loss, accuracy = self.hparams.contrastive_loss(
            outputs.predictions,
            outputs.targets,
            outputs.lengths,
            frame_mask=outputs.frame_mask,
        )
        # Detached running sums, per log interval and per stage: no host
        # sync until they are logged.
        frames = outputs.lengths.sum()
        if outputs.frame_mask is not None:
            frames = outputs.frame_mask.sum()
        padded = outputs.num_samples.numel() * batch.sig[0].shape[1]
        for stats in (self.interval_stats, self.stage_stats):
            stats["accuracy"] += accuracy.detach() * frames
            stats["frames"] += frames
            stats["audio"] += outputs.num_samples.sum()
            stats["padded"] += padded
            stats["loss"] += loss.detach()
            stats["batches"] += 1
        return loss

    def init_optimizers(self):
        """AdamW over the student only; one-cycle LR stepped per update."""
        params = self.modules.student.parameters()
        self.optimizer = self.opt_class(p for p in params if p.requires_grad)
        self.optimizers_dict = {"optimizer": self.optimizer}
        self.lr_scheduler = self.hparams.lr_scheduler(self.optimizer)
        self.checkpointer.add_recoverable("optimizer", self.optimizer)
        self.checkpointer.add_recoverable("lr_scheduler", self.lr_scheduler)

    def on_total_steps_extended(self, previous):
        """A one-cycle schedule over the new ``total_steps``, at this step.

        The checkpointed scheduler holds the old total (stepping it past
        that fails); the one built here gives the lr the new schedule has
        at ``optimizer_step`` (``last_epoch``, torch's way to resume).
        """
        del previous
        self.lr_scheduler = self.hparams.lr_scheduler(
            self.optimizer, last_epoch=self.optimizer_step - 1
        )
        self.checkpointer.add_recoverable("lr_scheduler", self.lr_scheduler)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """The teacher and the LR follow each optimizer step taken."""
        if not (should_step and self.stepped):
            return
        self.last_momentum = self.modules.teacher.update(self.modules.student)
        self.lr_scheduler.step()
        interval = self.hparams.log_interval
        if interval and self.optimizer_step % interval == 0:
            self.log_progress()

    def log_progress(self):
        """Logs a ``train step {...}`` JSON line for the last interval."""
        if self.distributed_launch:
            self.flush_skipped_audio()
        stats = {k: float(v) for k, v in self.interval_stats.items()}
        elapsed = time.time() - self.interval_start
        audio_seconds = stats["audio"] / self.hparams.sample_rate
        summary = {
            "step": self.optimizer_step,
            # This process's batches (None: all its audio was unusable).
            "loss": round(stats["loss"] / stats["batches"], 4)
            if stats["batches"]
            else None,
            "accuracy": round(stats["accuracy"] / max(stats["frames"], 1), 4),
            "lr": self.optimizer.param_groups[0]["lr"],
            "momentum": round(self.last_momentum, 6),
            "padded_fraction": round(
                1 - stats["audio"] / max(stats["padded"], 1), 4
            ),
            "audio_s_per_s": round(audio_seconds / max(elapsed, 1e-9), 2),
            "skipped_audio": self.skipped_audio,
            "nonfinite_steps": self.nonfinite_steps,
        }
        if if_main_process():
            logger.info("train step " + json.dumps(summary))
        self.interval_stats = self._zero_stats()
        self.interval_start = time.time()

    def _zero_stats(self):
        return {key: torch.zeros((), device=self.device) for key in STAT_KEYS}

    def on_fit_start(self):
        """Recovers the checkpoint; the teacher stays in eval mode."""
        super().on_fit_start()
        # The teacher was deep-copied from the student at construction;
        # after a resume it is the checkpointed teacher, never a new copy.
        self.modules.teacher.eval()
        self.last_momentum = self.modules.teacher.momentum()

    def on_stage_start(self, stage, epoch=None):
        """Resets the stage's running statistics."""
        super().on_stage_start(stage, epoch)
        self.stage_stats = self._zero_stats()
        self.interval_stats = self._zero_stats()
        self.interval_start = time.time()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the stage's figures; checkpoints after validation."""
        super().on_stage_end(stage, stage_loss, epoch)
        stats = {k: float(v) for k, v in self.stage_stats.items()}
        if stage != sb.Stage.TRAIN and stats["batches"]:
            # The mean over the batches evaluated; SpeechBrain's running
            # average would count skipped (all-unusable) batches too.
            stage_loss = stats["loss"] / stats["batches"]
        stage_stats = {
            "loss": stage_loss,
            "accuracy": stats["accuracy"] / max(stats["frames"], 1),
        }
        if stage == sb.Stage.TRAIN:
            self.train_stats = stage_stats
            return
        self.valid_stats = stage_stats
        self.hparams.train_logger.log_stats(
            stats_meta={
                "epoch": epoch,
                "optimizer_step": self.optimizer_step,
                "lr": self.optimizer.param_groups[0]["lr"],
                "momentum": self.last_momentum,
                "skipped_audio": self.skipped_audio,
                "nonfinite_steps": self.nonfinite_steps,
            },
            train_stats=getattr(self, "train_stats", None),
            valid_stats=stage_stats,
        )
        self.checkpointer.save_and_keep_only(
            meta={"loss": stage_loss, "optimizer_step": self.optimizer_step},
            num_to_keep=self.hparams.checkpoints_to_keep,
        )


def dataio_prepare(hparams, data_folder=None):
    """Train and valid datasets with their audio pipeline, and the sampler.

    The sampler is None without ``dynamic_batching`` (fixed-size batches).
    ``$data_root`` in a CSV stands for ``data_folder``.
    """
    pipeline = make_audio_pipeline(
        hparams["sample_rate"],
        max_seconds=hparams["max_duration"],
        min_seconds=hparams["min_duration"],
    )
    datasets = []
    for csv_name in ("train.csv", f"{hparams['dev_splits'][0]}.csv"):
        dataset = load_csv_dataset(
            os.path.join(hparams["csv_folder"], csv_name), data_folder
        )
        dataset = dataset.filtered_sorted(
            key_min_value={"duration": hparams["min_duration"]},
            key_max_value={"duration": hparams["max_duration"]},
            sort_key="duration",
        )
        datasets.append(dataset)
    sb.dataio.dataset.add_dynamic_item(datasets, pipeline)
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig", "audio_error"])
    train, valid = datasets
    return train, valid, make_train_sampler(hparams, train)


def model_card(brain, data_folder):
    """The inference folder's README: data, steps, last validation."""
    hparams = brain.hparams
    valid = getattr(brain, "valid_stats", None)
    measured = (
        f"contrastive loss {valid['loss']:.4f}, accuracy "
        f"{100 * valid['accuracy']:.2f} %"
        if valid
        else "not validated"
    )
    return "\n".join(
        [
            "# Pretrained S3L encoder",
            "",
            "An S3LSpeech student encoder pretrained by "
            "`recipes/LibriSpeech/pretrain.py`. Per-layer features with "
            "SpeechBrain:",
            "",
            "```python",
            "from speechbrain.inference.encoders import WaveformEncoder",
            "",
            'ssl = WaveformEncoder.from_hparams(source="<this folder or '
            'repo id>",',
            '                                   savedir="pretrained_models/'
            's3l")',
            'last = ssl.encode_file("utterance.wav")  # (1, frames, d_model)',
            "out = ssl.encode_batch(wavs, wav_lens)  # dict: every layer",
            "```",
            "",
            f"- Training data: `{data_folder}` "
            f"({', '.join(hparams.train_splits)})",
            f"- Optimizer steps: {brain.optimizer_step}",
            f"- Last validation: {measured}",
            "",
        ]
    )


def main(argv):
    """Runs the recipe; configuration mistakes raise ``ConfigError``.

    Arguments
    ---------
    argv : list of str
        Command-line arguments (YAML file, then options).

    Returns
    -------
    S3LPretrain
        The trained Brain.
    """
    hparams_file, run_opts, overrides, restart = parse_arguments(argv)
    hparams = start_experiment(hparams_file, run_opts, overrides, restart)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    data_folder = resolve_data_folder(hparams)
    noise_csv = resolve_noise_csv(hparams, data_folder)
    prepare_csvs(
        prepare_librispeech,
        data_folder,
        hparams["train_splits"] + hparams["dev_splits"],
        save_folder=hparams["csv_folder"],
        tr_splits=hparams["train_splits"],
        dev_splits=hparams["dev_splits"],
        te_splits=[],
        merge_lst=hparams["train_splits"],
        merge_name="train.csv",
        skip_prep=hparams["skip_prep"],
    )
    train_set, valid_set, sampler = dataio_prepare(hparams, data_folder)

    brain = S3LPretrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    # Every rank reads the noises in its own order; their position is
    # checkpointed so that a resumed run adds the same noises.
    noise_augment = hparams["noise_augment"](
        csv_file=noise_csv, seed=hparams["seed"] + rank_and_world_size()[0]
    )
    if noise_augment.noise_stream is not None:
        brain.checkpointer.add_recoverable(
            "noise_stream", noise_augment.noise_stream, optional_load=True
        )
    brain.noise_augment = noise_augment.to(brain.device)
    # Brain only re-seeds samplers it built itself; without this the
    # dynamic batches would come in the same order every epoch.
    brain.train_sampler = sampler
    brain.start_cost_tracker()  # projected to the paper's pretraining
    collate = SkipBadAudioCollate(empty_batch=True)
    brain.fit(
        brain.hparams.epoch_counter,
        train_set,
        valid_set,
        train_loader_kwargs=train_loader_kwargs(hparams, collate, sampler),
        valid_loader_kwargs=eval_loader_kwargs(
            hparams, collate, hparams["valid_batch_size"]
        ),
    )
    if if_main_process():
        student = unwrap_module(brain.modules.student)
        path = save_encoder(student.encoder, hparams["output_folder"])
        logger.info(
            "Pretrained encoder written to %s (%d optimizer steps, %d "
            "skipped audio files, %d non-finite steps skipped); finetune "
            "with: python recipes/LibriSpeech/finetune.py "
            "hparams/finetune_ctc.yaml --pretrained_path=%s",
            path,
            brain.optimizer_step,
            brain.skipped_audio,
            brain.nonfinite_steps,
            hparams["output_folder"],
        )
        folder = os.path.join(hparams["output_folder"], "inference")
        write_encoder_folder(
            folder, student.encoder, card=model_card(brain, data_folder)
        )
        logger.info(
            "Inference folder written to %s (speechbrain.inference.encoders."
            "WaveformEncoder.from_hparams(source=%r); s3l-extract %s ...)",
            folder,
            folder,
            folder,
        )
    brain.write_cost()
    return brain


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
