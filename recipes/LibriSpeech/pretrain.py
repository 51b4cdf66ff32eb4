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
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process, run_on_main

from s3l_plugin.checkpointing import (
    AtomicCheckpointer,
    CheckpointMismatchError,
    NoiseStream,
    PerRankState,
    RandomState,
    check_checkpoint_compatible,
)
from s3l_plugin.data.audio import (
    EmptyBatch,
    SkipBadAudioCollate,
    make_audio_pipeline,
)
from s3l_plugin.pretrained import save_encoder
from s3l_plugin.pretraining import s3l_forward
from s3l_plugin.recipe_utils import (
    ConfigError,
    check_run_options,
    resolve_checkpoint_interval,
    resolve_data_folder,
    resolve_noise_csv,
    seed_rank,
)
from s3l_plugin.teacher import unwrap_module

logger = logging.getLogger(__name__)

CRASH_ENV = "S3L_TEST_CRASH_AFTER_STEPS"
DUMP_ENV = "S3L_TEST_DUMP_DIR"
CRASH_EXIT_CODE = 86


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


class S3LPretrain(sb.Brain):
    """Brain for S3L pretraining: student (encoder + predictor) and teacher.

    The teacher is a module (moved to the device, checkpointed) but has no
    trainable parameter, so SpeechBrain neither optimises nor DDP-wraps it;
    it keeps itself in eval mode whatever ``Brain`` asks.

    ``fit_batch`` replaces SpeechBrain's so that an optimizer step happens
    only when it can do good: a window of micro-batches whose audio was all
    unusable, or whose loss or gradient is not finite, leaves the student,
    the teacher, the LR schedule and the step count untouched.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped_audio = 0
        self.nonfinite_steps = 0
        self.nonfinite_in_a_row = 0
        self._pending_skips = []
        self._crash_after = int(os.environ.get(CRASH_ENV) or 0)
        self.batch_log = [] if os.environ.get(DUMP_ENV) else None
        self._epoch = None
        self._reset_window()

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

    def fit_batch(self, batch):
        """One micro-batch: forward, backward, and a guarded optimizer step.

        An ``EmptyBatch`` (all its audio was unusable) adds nothing; under
        DDP its rank still joins the gradient all-reduce, with zero
        gradients.

        Arguments
        ---------
        batch : PaddedBatch or EmptyBatch
            From :class:`SkipBadAudioCollate`.

        Returns
        -------
        torch.Tensor
            The detached loss (NaN for an empty batch, which SpeechBrain's
            running average ignores).
        """
        factor = self.grad_accumulation_factor
        should_step = self.step % factor == 0
        self._note_skipped(batch.skipped, sb.Stage.TRAIN)
        if self.batch_log is not None:
            self.batch_log.append((self._epoch, list(batch.id)))
        self.on_fit_batch_start(batch, should_step)
        loss = outputs = None
        with self.no_sync(not should_step):
            if not isinstance(batch, EmptyBatch):
                with self.training_ctx:
                    outputs = self.compute_forward(batch, sb.Stage.TRAIN)
                    loss = self.compute_objectives(
                        outputs, batch, sb.Stage.TRAIN
                    )
                self.scaler.scale(loss / factor).backward()
                self._window_nonfinite_loss |= ~torch.isfinite(loss.detach())
                self._window_batches += 1
            elif self.distributed_launch:
                self._placeholder_backward()
        stepped = self._step_optimizer() if should_step else False
        self.on_fit_batch_end(batch, outputs, loss, stepped)
        if loss is None:
            return torch.tensor(float("nan"))
        return loss.detach().cpu()

    def _reset_window(self):
        """Forgets the state of the accumulation window."""
        self._window_batches = 0
        self._window_nonfinite_loss = torch.zeros(
            (), dtype=torch.bool, device=self.device
        )

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

    def _step_optimizer(self):
        """Applies the window's gradients, unless it cannot do good.

        Skipped (gradients dropped, no EMA, LR or step count change): a
        window with no usable audio on any rank, or a non-finite loss or
        gradient norm on any rank. The decision is all-reduced, so every
        DDP rank takes the same one.

        Returns
        -------
        bool
            Whether the optimizer stepped.
        """
        local_batches = self._window_batches
        nonfinite_loss = self._window_nonfinite_loss
        self._reset_window()
        if local_batches == 0 and not self.distributed_launch:
            self.zero_grad(set_to_none=True)
            self._log_skipped_step("no usable audio in its batches")
            return False
        self.scaler.unscale_(self.optimizer)
        params = [
            param
            for group in self.optimizer.param_groups
            for param in group["params"]
        ]
        # Every parameter group is clipped (SpeechBrain clips group 0 only).
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        flags = torch.stack(
            [
                nonfinite_loss.float(),
                (~torch.isfinite(norm)).float().to(self.device),
                torch.tensor(float(local_batches), device=self.device),
            ]
        )
        if self.distributed_launch:
            torch.distributed.all_reduce(flags)
        bad_loss, bad_grad, batches = (float(flag) for flag in flags)
        if batches and not (bad_loss or bad_grad):
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.zero_grad(set_to_none=True)
            self.optimizer_step += 1
            self.nonfinite_in_a_row = 0
            return True
        self.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.update()  # lowers the fp16 loss scale on overflow
        if not batches:
            self._log_skipped_step("no usable audio in its batches")
        elif (
            self.scaler.is_enabled()
            and not bad_loss
            and self.scaler.get_scale() >= 1.0
        ):
            # fp16 overflow: the loss scaler's business, not a failure
            # (unless the scale has already collapsed below 1).
            self._log_skipped_step(
                "fp16 gradient overflow, loss scale lowered to %g",
                self.scaler.get_scale(),
                level=logging.INFO,
            )
        else:
            self._count_nonfinite("loss" if bad_loss else "gradient")
        return False

    def _log_skipped_step(self, reason, *args, level=logging.WARNING):
        # Every rank takes the same decision: the main process says it.
        if if_main_process():
            logger.log(
                level,
                "Optimizer step %d skipped: " + reason,
                self.optimizer_step + 1,
                *args,
            )

    def _count_nonfinite(self, what):
        self.nonfinite_in_a_row += 1
        self.nonfinite_steps += 1
        patience = self.nonfinite_patience
        self._log_skipped_step(
            "non-finite %s (%d in a row, %d in all; the run stops after "
            "more than %d in a row)",
            what,
            self.nonfinite_in_a_row,
            self.nonfinite_steps,
            patience,
        )
        if self.nonfinite_in_a_row > patience:
            raise NonFiniteError(
                f"{self.nonfinite_in_a_row} optimizer steps in a row had a "
                f"non-finite {what} (after step {self.optimizer_step}, epoch "
                f"{self._epoch}); lower --lr, check the data, or train in "
                "--precision=fp32 (--nonfinite_patience sets how many in a "
                f"row are skipped, now {patience})"
            )

    def evaluate_batch(self, batch, stage):
        """Evaluates one batch, skipping one whose audio was all unusable."""
        self._note_skipped(batch.skipped, stage)
        if isinstance(batch, EmptyBatch):
            return torch.tensor(float("nan"))
        return super().evaluate_batch(batch, stage)

    def _note_skipped(self, skipped, stage):
        """Queues skipped files for logging in the main process."""
        if stage != sb.Stage.TRAIN and self.rank_index != 0:
            return  # every rank evaluates the same files: count them once
        self._pending_skips.extend(skipped)
        if not self.distributed_launch:
            self._flush_skipped()

    def _flush_skipped(self):
        """Logs (main process) and counts the files skipped on all ranks.

        Collective under DDP: every rank calls it at the same points.
        """
        pending, self._pending_skips = self._pending_skips, []
        gathered = [pending]
        if self.distributed_launch:
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, pending)
        for rank_skips in gathered:
            for utt_id, reason in rank_skips:
                self.skipped_audio += 1
                if if_main_process():
                    logger.warning("Skipped audio %s: %s", utt_id, reason)

    @property
    def rank_index(self):
        """This process's rank (0 when not distributed)."""
        if self.distributed_launch:
            return torch.distributed.get_rank()
        return 0

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
        if self._crash_after and self.optimizer_step >= self._crash_after:
            # Test hook: dies like a killed process (no clean-up, no save).
            logging.shutdown()
            os._exit(CRASH_EXIT_CODE)

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

    def counters_state(self):
        """The run's counters, for the checkpoint."""
        return {
            "skipped_audio": self.skipped_audio,
            "nonfinite_steps": self.nonfinite_steps,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
        }

    def load_counters_state(self, state):
        """Restores :meth:`counters_state`."""
        self.skipped_audio = state["skipped_audio"]
        self.nonfinite_steps = state["nonfinite_steps"]
        self.nonfinite_in_a_row = state["nonfinite_in_a_row"]

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time, steps_since_ckpt):
        # Save only on optimizer-step boundaries: a checkpoint in the middle
        # of an accumulation window would lose the gradients gathered so far
        # and a resumed run would differ from an uninterrupted one.
        boundary = self.step % self.grad_accumulation_factor == 0
        return boundary and super()._should_save_intra_epoch_ckpt(
            last_ckpt_time, steps_since_ckpt
        )

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
    """Train and valid datasets with their audio pipeline and sampler."""
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
    sampler = sb.dataio.sampler.DynamicBatchSampler(
        datasets["train"],
        length_func=lambda example: example["duration"],
        **hparams["dynamic_batch_sampler"],
    )
    return datasets["train"], datasets["valid"], sampler


def load_hparams(hparams_file, overrides):
    """Loads the YAML; a mistake in it or in an override is a ConfigError.

    Building the YAML's objects (encoder, losses...) is where unknown
    options and impossible values show up.
    """
    try:
        with open(hparams_file, encoding="utf-8") as fin:
            return load_hyperpyyaml(fin, overrides)
    except OSError as error:
        raise ConfigError(f"cannot read {hparams_file}: {error}") from error
    except KeyError as error:
        message = str(error.args[0]) if error.args else str(error)
        if message.startswith("Override '"):
            key = message.split("'")[1]
            message = (
                f"--{key} is neither a run option nor a key of "
                f"{hparams_file}: check its spelling"
            )
        raise ConfigError(message) from error
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{hparams_file}: {error}") from error


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
    hparams = load_hparams(hparams_file, overrides)
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
    checkpointer.add_recoverable("random_state", RandomState())
    brain.noise_stream = NoiseStream(
        brain.noise_augment.add_noise, hparams["seed"] + _rank()
    )
    checkpointer.add_recoverable(
        "noise_stream", brain.noise_stream, optional_load=True
    )
    checkpointer.add_recoverable(
        "counters",
        PerRankState(brain.counters_state, brain.load_counters_state),
        optional_load=True,
    )
    checkpointer.remove_incomplete()
    try:
        resumed = check_checkpoint_compatible(checkpointer)
    except CheckpointMismatchError as error:
        raise ConfigError(str(error)) from error
    if resumed:
        logger.info("Resuming from %s", resumed)
    # Brain only re-seeds samplers it built itself; without this the
    # dynamic batches would come in the same order every epoch.
    brain.train_sampler = sampler
    collate = SkipBadAudioCollate(empty_batch=True)
    # Own generators: a DataLoader otherwise draws its workers' base seed
    # from the global generator each epoch, and a resumed run (which
    # restores that generator first) would draw it once more.
    brain.fit(
        brain.hparams.epoch_counter,
        train_set,
        valid_set,
        train_loader_kwargs={
            "batch_sampler": sampler,
            "collate_fn": collate,
            "num_workers": hparams["num_workers"],
            "generator": torch.Generator().manual_seed(hparams["seed"]),
        },
        valid_loader_kwargs={
            "batch_size": hparams["valid_batch_size"],
            "collate_fn": collate,
            "num_workers": hparams["num_workers"],
            "generator": torch.Generator().manual_seed(hparams["seed"]),
        },
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
    _dump_for_tests(brain)
    return brain


def _dump_for_tests(brain):
    """Test hook: this rank's final models and batches (see module doc)."""
    folder = os.environ.get(DUMP_ENV)
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    rank = brain.rank_index
    torch.save(
        {
            "rank": rank,
            "student": unwrap_module(brain.modules.student).state_dict(),
            "teacher": brain.modules.teacher.state_dict(),
            "batches": brain.batch_log,
            "optimizer_step": brain.optimizer_step,
            "skipped_audio": brain.skipped_audio,
        },
        os.path.join(folder, f"rank{rank}.pt"),
    )


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
    try:
        return run_pretraining(sys.argv[1:] if argv is None else argv)
    except ConfigError as error:
        _exit(error, 2)
    except NonFiniteError as error:
        _exit(error, 1)


def _exit(error, status):
    message = "s3l: error: " + " ".join(str(error).split())
    if logging.getLogger().handlers:
        logger.error(message)  # into log.txt, once logging is set up
    print(message, file=sys.stderr, flush=True)
    sys.exit(status)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
