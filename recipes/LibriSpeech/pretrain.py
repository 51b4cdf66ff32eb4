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

Reliability:

- Rerunning an interrupted command resumes from its last checkpoint
  (intra-epoch ones with ``--ckpt_interval_steps`` or
  ``--ckpt_interval_minutes``) and ends with the same parameters as an
  uninterrupted run: models, optimizer, scheduler, EMA step, data and noise
  positions and random generators are all checkpointed.
- Unusable audio is skipped, logged with its path and reason, and counted
  (``skipped_audio`` in the logs).
- An optimizer step whose loss or gradient is not finite is skipped and
  counted; more than ``--nonfinite_patience`` in a row stop the run.
- Configuration mistakes stop the run at start-up with one line,
  ``s3l: error: ...``, and exit status 2.

Test hooks (environment variables, for the test suite only):
``S3L_TEST_CRASH_AFTER_STEPS=N`` ends the process abruptly (as ``kill -9``
would) right after optimizer step N; ``S3L_TEST_DUMP_DIR=DIR`` makes every
process write its final student and teacher and the ids of its batches to
``DIR/rank<R>.pt``.
"""

import json
import logging
import os
import sys
import time

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process, run_on_main

from s3l_plugin.checkpointing import AtomicCheckpointer, NoiseStream
from s3l_plugin.data.audio import SkipBadAudioCollate, make_audio_pipeline
from s3l_plugin.pretrained import save_encoder
from s3l_plugin.pretraining import s3l_forward
from s3l_plugin.recipe_utils import (  # noqa: F401 (re-exported test hooks)
    CRASH_ENV,
    CRASH_EXIT_CODE,
    DUMP_ENV,
    ConfigError,
    GuardedTrainingMixin,
    NonFiniteError,  # noqa: F401 (raised by the Brain; re-exported)
    check_run_options,
    eval_loader_kwargs,
    load_yaml,
    make_train_sampler,
    prepare_resume,
    resolve_checkpoint_interval,
    resolve_data_folder,
    resolve_noise_csv,
    run_cli,
    seed_rank,
    train_loader_kwargs,
)
from s3l_plugin.teacher import unwrap_module

logger = logging.getLogger(__name__)


class S3LPretrain(GuardedTrainingMixin, sb.Brain):
    """Brain for S3L pretraining: student (encoder + predictor) and teacher.

    The teacher is a module (moved to the device, checkpointed) but has no
    trainable parameter, so SpeechBrain neither optimises nor DDP-wraps it;
    it keeps itself in eval mode whatever ``Brain`` asks.

    ``fit_batch`` (:class:`GuardedTrainingMixin`) steps the optimizer only
    when it can do good: a window of micro-batches whose audio was all
    unusable, or whose loss or gradient is not finite, leaves the student,
    the teacher, the LR schedule and the step count untouched.
    """

    def compute_forward(self, batch, stage):
        """Student predictions and teacher targets for one batch."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        train = stage == sb.Stage.TRAIN
        hp = self.hparams
        noise_stream = getattr(self, "noise_stream", None)
        if train and noise_stream is not None:
            # All the batch's noises in one read (see NoiseStream).
            noise_stream.batch_size = wavs.shape[0]
        return s3l_forward(
            self.modules.student,
            self.modules.teacher,
            self.features,
            wavs,
            wav_lens,
            noise_augment=self.noise_augment if train else None,
            spec_augment=hp.spec_augment if train else None,
            random_shift=hp.random_shift if train else None,
        )

    def compute_objectives(self, outputs, batch, stage):
        """Contrastive loss; accumulates the statistics that are logged."""
        loss, accuracy = self.hparams.contrastive_loss(
            outputs.predictions, outputs.targets, outputs.lengths
        )
        # Detached running sums, per log interval and per stage: no host
        # sync until they are logged.
        frames = outputs.lengths.sum()
        batch_samples = outputs.num_samples.numel() * batch.sig[0].shape[1]
        for stats in (self.interval_stats, self.stage_stats):
            stats["accuracy"] += accuracy.detach() * frames
            stats["frames"] += frames
            stats["audio_samples"] += outputs.num_samples.sum()
            stats["padded_samples"] += batch_samples
            stats["loss"] += loss.detach()
            stats["batches"] += 1
        return loss

    def _placeholder_backward(self):
        """Zero gradients through the DDP student, for a rank with no data.

        The other ranks' backward passes wait for this rank's gradients
        (and the forward broadcasts buffers): skipping would hang them.
        """
        student = self.modules.student
        encoder = unwrap_module(student).encoder
        frames = int(encoder.min_input_frames)
        feats = torch.zeros(
            1, frames, encoder.config["n_mels"], device=self.device
        )
        lengths = torch.tensor([frames], device=self.device)
        with self.training_ctx:
            predictions, _ = student(feats, lengths)
        (predictions.float().sum() * 0.0).backward()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """EMA and LR are stepped once per optimizer step, after it.

        ``should_step`` is True only if the optimizer did step.
        """
        if not should_step:
            return
        momentum = self.modules.teacher.update(self.modules.student)
        self.lr_scheduler.step()
        self.last_momentum = momentum
        interval = self.hparams.log_interval
        if interval and self.optimizer_step % interval == 0:
            self._log_progress()

    def _log_progress(self):
        if self.distributed_launch:
            self._flush_skipped()
        stats = {k: float(v) for k, v in self.interval_stats.items()}
        elapsed = time.time() - self.interval_start
        sample_rate = self.hparams.sample_rate
        audio_seconds = stats["audio_samples"] / sample_rate
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
                1 - stats["audio_samples"] / max(stats["padded_samples"], 1), 4
            ),
            "audio_s_per_s": round(audio_seconds / max(elapsed, 1e-9), 2),
            "skipped_audio": self.skipped_audio,
            "nonfinite_steps": self.nonfinite_steps,
        }
        if if_main_process():
            logger.info("train step " + json.dumps(summary))
        self.interval_stats = self._zero_stats()
        self.interval_start = time.time()
        return summary

    def _zero_stats(self):
        keys = (
            "loss",
            "batches",
            "accuracy",
            "frames",
            "audio_samples",
            "padded_samples",
        )
        return {key: torch.zeros((), device=self.device) for key in keys}

    def init_optimizers(self):
        """AdamW over the student only; one-cycle LR stepped per update."""
        student = self.modules.student
        params = [p for p in student.parameters() if p.requires_grad]
        self.optimizer = self.opt_class(params)
        self.optimizers_dict = {"optimizer": self.optimizer}
        self.lr_scheduler = self.hparams.lr_scheduler(self.optimizer)
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
            self.checkpointer.add_recoverable("lr_scheduler", self.lr_scheduler)

    def on_fit_start(self):
        """Features taken from the teacher; the checkpoint is recovered."""
        self.features = self.modules.teacher.encoder.features
        super().on_fit_start()
        # The teacher was deep-copied from the student at construction;
        # after a resume it is the checkpointed teacher, never a new copy.
        self.modules.teacher.eval()
        self.last_momentum = self.modules.teacher.momentum()

    def on_stage_start(self, stage, epoch=None):
        """Resets the stage's running statistics."""
        self._epoch = epoch
        self.stage_stats = self._zero_stats()
        self.interval_stats = self._zero_stats()
        self.interval_start = time.time()
        if stage == sb.Stage.TRAIN:
            # SpeechBrain drops a partial window at an epoch's end.
            self._reset_window()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the stage's figures; checkpoints after validation."""
        self._flush_skipped()
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
            self.write_cost()  # at each epoch's end
            return
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
        if stage == sb.Stage.VALID:
            self.checkpointer.save_and_keep_only(
                meta={
                    "loss": stage_loss,
                    "optimizer_step": self.optimizer_step,
                },
                num_to_keep=self.hparams.checkpoints_to_keep,
            )


def dataio_prepare(hparams, csv_folder):
    """Train and valid datasets with their audio pipeline and sampler.

    The sampler is None without ``dynamic_batching`` (fixed-size batches).
    """
    pipeline = make_audio_pipeline(
        hparams["sample_rate"],
        max_seconds=hparams["max_duration"],
        min_seconds=hparams["min_duration"],
    )
    datasets = {}
    for name, csv_name in (
        ("train", "train.csv"),
        ("valid", f"{hparams['dev_splits'][0]}.csv"),
    ):
        dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(
            os.path.join(csv_folder, csv_name)
        )
        dataset = dataset.filtered_sorted(
            key_min_value={"duration": hparams["min_duration"]},
            key_max_value={"duration": hparams["max_duration"]},
            sort_key="duration",
        )
        sb.dataio.dataset.add_dynamic_item([dataset], pipeline)
        sb.dataio.dataset.set_output_keys(
            [dataset], ["id", "sig", "audio_error"]
        )
        datasets[name] = dataset
    sampler = make_train_sampler(hparams, datasets["train"])
    return datasets["train"], datasets["valid"], sampler


def _rank():
    return int(os.environ.get("RANK") or 0)


def run_pretraining(argv):
    """Runs the recipe; configuration mistakes raise ConfigError.

    Arguments
    ---------
    argv : list of str
        Command-line arguments (YAML file, then options).

    Returns
    -------
    S3LPretrain
        The trained Brain.
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    hparams = load_yaml(hparams_file, overrides)
    check_run_options(hparams, run_opts)
    resolve_checkpoint_interval(hparams, run_opts)

    sb.utils.distributed.ddp_init_group(run_opts)
    # The modules are built (alike on every rank); from here on each rank
    # draws its own augmentations.
    seed_rank(hparams["seed"], _rank())
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )

    data_folder = resolve_data_folder(hparams)
    noise_csv = resolve_noise_csv(hparams, data_folder)
    from librispeech_prepare import prepare_librispeech

    csv_folder = hparams["csv_folder"]
    try:
        run_on_main(
            prepare_librispeech,
            kwargs={
                "data_folder": data_folder,
                "save_folder": csv_folder,
                "tr_splits": hparams["train_splits"],
                "dev_splits": hparams["dev_splits"],
                "te_splits": [],
                "merge_lst": hparams["train_splits"],
                "merge_name": "train.csv",
                "skip_prep": hparams["skip_prep"],
            },
        )
    except FileNotFoundError as error:
        raise ConfigError(
            f"{error}: --data_folder must hold the splits "
            f"{hparams['train_splits'] + hparams['dev_splits']}"
        ) from error
    train_set, valid_set, sampler = dataio_prepare(hparams, csv_folder)

    checkpointer = AtomicCheckpointer.from_checkpointer(hparams["checkpointer"])
    brain = S3LPretrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=checkpointer,
    )
    brain.noise_augment = hparams["noise_augment"](csv_file=noise_csv).to(
        brain.device
    )
    brain.noise_stream = NoiseStream(
        brain.noise_augment.add_noise, hparams["seed"] + _rank()
    )
    prepare_resume(
        checkpointer,
        brain,
        extra_recoverables={"noise_stream": brain.noise_stream},
    )
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
    brain.write_cost()
    brain.dump_for_tests(
        {
            "student": unwrap_module(brain.modules.student).state_dict(),
            "teacher": brain.modules.teacher.state_dict(),
        }
    )
    return brain


def main(argv=None):
    """Command-line entry: known mistakes end with one line, not a trace.

    Arguments
    ---------
    argv : list of str, optional
        Default ``sys.argv[1:]``.

    Returns
    -------
    S3LPretrain
        The trained Brain.
    """
    return run_cli(run_pretraining, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
