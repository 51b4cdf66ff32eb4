"""The training core of the recipes: a ``Brain`` for long runs on real data.

:class:`S3LBrain` extends SpeechBrain's ``Brain`` through its hooks, so
that SpeechBrain's own ``fit_batch`` runs every batch that holds data:

- Unusable audio (``SkipBadAudioCollate(empty_batch=True)``) is logged
  with its reason (main process) and counted in ``skipped_audio``; a batch
  left with no audio at all (an :class:`EmptyBatch`) trains nothing, and
  under DDP its rank still joins the gradient all-reduce, with zero
  gradients (:meth:`S3LBrain.placeholder_backward`). An epoch whose
  training audio is unusable in a larger share than
  ``max_skipped_audio_share`` stops the run (:class:`ConfigError`).
- ``optimizers_step`` clips every parameter group of every optimizer
  (SpeechBrain clips the first group only) and skips a step that cannot do
  good: no usable audio in the window, or a non-finite loss or gradient
  norm, on any rank. Skipped steps leave the model, the LR schedule and
  ``optimizer_step`` untouched and are counted in ``nonfinite_steps``.
  ``--nonfinite_patience`` and ``--skip_nonfinite_grads`` mean what
  SpeechBrain says: more non-finite losses in an epoch than the patience
  stop the run (:class:`NonFiniteError`); with ``skip_nonfinite_grads``
  the non-finite gradients are set to None and the step goes on.
  ``self.stepped`` tells ``on_fit_batch_end`` whether the step happened.
- Intra-epoch checkpoints (``--ckpt_interval_minutes`` or
  ``--ckpt_interval_steps``, SpeechBrain's meaning) are saved only at
  optimizer-step boundaries: one in the middle of an accumulation window
  would lose the gradients gathered so far, and the resumed run would
  differ from an uninterrupted one.
- SIGTERM (a cluster pre-empting the job) and SIGINT (Ctrl-C) stop the
  run at the next optimizer-step boundary, once an intra-epoch checkpoint
  is saved (:class:`RunInterrupted`, exit 128 + the signal's number);
  rerunning the command resumes exactly. A second signal stops at once.
- Exact resume: the random generators and counters of every process are
  checkpointed; an interrupted save is cleaned up and a checkpoint of
  another architecture stops the run at start-up. A damaged checkpoint is
  passed over for the newest one that loads completely; with none, the
  run stops (``--restart`` moves the checkpoints aside to start afresh).
- Options that change what is trained are stored with each checkpoint
  and compared on resume: a changed one stops the run naming it, except
  a larger ``total_steps``, for which the schedules are rebuilt
  (:meth:`S3LBrain.on_total_steps_extended`).
- An optional cost report (``cost.json``, :mod:`s3l_plugin.cost`).

:func:`start_experiment` is the start-up both recipes share.
"""

import logging
import os
import random
import signal
import threading
import time
from contextlib import nullcontext

import numpy
import speechbrain as sb
import torch
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from speechbrain.utils.distributed import if_main_process

from s3l_plugin.checkpointing import (
    AtomicCheckpointer,
    CheckpointLoadError,
    CheckpointMismatchError,
    PerRankState,
    RandomState,
    TrainingOptions,
)
from s3l_plugin.config import (
    EXTENSIBLE_KEY,
    ConfigError,
    NonFiniteError,
    RunInterrupted,
    check_resumed_options,
    check_run_options,
    load_yaml,
    resolve_auto_precision,
    resolve_checkpoint_interval,
    training_options,
)
from s3l_plugin.cost import CostTracker
from s3l_plugin.data.audio import EmptyBatch
from s3l_plugin.distributed import rank_and_world_size, unwrap_module
from s3l_plugin.folder_lock import OutputFolderLock

logger = logging.getLogger(__name__)


class S3LBrain(sb.Brain):
    """``Brain`` with guarded optimizer steps, bad-audio skipping and resume.

    Subclasses write SpeechBrain's hooks as usual (calling ``super()`` in
    ``on_stage_start`` and ``on_stage_end``). Their DDP modules must take
    ``(features, lengths)`` and have an ``encoder`` (see
    :meth:`placeholder_backward`). Evaluation stages should average their
    loss over the batches actually evaluated: an :class:`EmptyBatch` gives
    NaN, which SpeechBrain's running average skips but still counts.

    Arguments
    ---------
    *args, **kwargs
        As for ``speechbrain.Brain``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped_audio = 0
        self.nonfinite_steps = 0
        # This process's training audio files of the current epoch.
        self.epoch_audio = {"used": 0, "skipped": 0}
        self.stepped = False
        self.cost_tracker = None
        self._pending_skips = []
        # This class saves the intra-epoch checkpoints, at step boundaries
        # (fit_batch); SpeechBrain's own, after any micro-batch, are off.
        self.checkpoint_minutes = self.ckpt_interval_minutes
        self.checkpoint_steps = self.ckpt_interval_steps
        self.ckpt_interval_minutes = self.ckpt_interval_steps = 0
        self._last_checkpoint = (time.time(), 0)
        self._stop_signal = None  # a signal received, not yet acted on
        self._stop_requested = False  # by any rank, at the last step
        self._saved_handlers = {}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("random_state", RandomState())
            self.checkpointer.add_recoverable(
                "counters",
                PerRankState(self.counters_state, self.load_counters_state),
                optional_load=True,
            )
        self._reset_window()

    # ---- Training batches --------------------------------------------------
    def fit_batch(self, batch):
        """SpeechBrain's ``fit_batch``, for a batch that holds audio.

        Around it: the batch's unusable files are noted, an
        :class:`EmptyBatch` only joins the step (SpeechBrain's
        ``fit_batch`` has no notion of a batch without data), the cost
        tracker measures it, and a due intra-epoch checkpoint is saved
        once the optimizer step is done.

        Arguments
        ---------
        batch : PaddedBatch or EmptyBatch
            From ``SkipBadAudioCollate(empty_batch=True)``.

        Returns
        -------
        torch.Tensor
            The detached loss (NaN for an empty batch).
        """
        self._note_skipped(batch.skipped, sb.Stage.TRAIN)
        self.epoch_audio["used"] += len(batch.id)
        self.epoch_audio["skipped"] += len(batch.skipped)
        if isinstance(batch, EmptyBatch):
            loss = self._fit_empty_batch(batch)
        else:
            self._window_batches += 1
            with self._measure(batch):
                loss = super().fit_batch(batch)
        at_boundary = self.step % self.grad_accumulation_factor == 0
        if at_boundary and self._stop_requested:
            self._stop_on_signal(loss)
        if at_boundary and self._intra_epoch_checkpoint_due():
            self._save_intra_epoch_checkpoint(loss)
        return loss

    def _save_intra_epoch_checkpoint(self, loss):
        # Saved with the running loss SpeechBrain will hold once it has
        # averaged this batch in (after fit_batch returns).
        running = self.avg_train_loss
        self.avg_train_loss = self.update_average(loss, running)
        self.checkpointer.save_and_keep_only(
            end_of_epoch=False,
            num_to_keep=1,
            ckpt_predicate=lambda c: INTRA_EPOCH_CKPT_FLAG in c.meta,
            meta={INTRA_EPOCH_CKPT_FLAG: True},
            verbosity=logging.DEBUG,
        )
        self.avg_train_loss = running
        self._last_checkpoint = (time.time(), self.step)

    def _fit_empty_batch(self, batch):
        should_step = self.step % self.grad_accumulation_factor == 0
        self.on_fit_batch_start(batch, should_step)
        if self.distributed_launch:
            with self.no_sync(not should_step):
                self.placeholder_backward()
        if should_step:
            self.optimizers_step()
        self.on_fit_batch_end(batch, None, None, should_step)
        return torch.tensor(float("nan"))

    def placeholder_backward(self):
        """Zero gradients through every DDP module, for a rank with no data.

        The other ranks' backward passes wait for this rank's gradients
        (and the forward broadcasts buffers): skipping would hang them.
        """
        for module in self.modules.values():
            if not isinstance(
                module, torch.nn.parallel.DistributedDataParallel
            ):
                continue
            encoder = unwrap_module(module).encoder
            frames = int(encoder.min_input_frames)
            feats = torch.zeros(
                1, frames, encoder.config["n_mels"], device=self.device
            )
            lengths = torch.tensor([frames], device=self.device)
            with self.training_ctx:
                outputs = module(feats, lengths)
            (outputs[0].float().sum() * 0.0).backward()

    def _measure(self, batch):
        """The cost tracker's context for this micro-batch (or a no-op)."""
        if self.cost_tracker is None:
            return nullcontext()
        wavs, rel_lens = batch.sig
        seconds = wavs.shape[-1] / self.hparams.sample_rate
        return self.cost_tracker.micro_batch(
            audio_seconds=float(rel_lens.sum()) * seconds,
            padded_seconds=wavs.shape[0] * seconds,
        )

    # ---- Guarded optimizer step --------------------------------------------
    def check_loss_isfinite(self, loss):
        """Notes a non-finite loss; :meth:`optimizers_step` acts on it.

        No host sync here: the window's count is read once per step.

        Arguments
        ---------
        loss : torch.Tensor
            The scaled loss of one micro-batch.
        """
        bad = (~torch.isfinite(loss.detach())).long()
        self._window_nonfinite_losses = self._window_nonfinite_losses + bad

    def _reset_window(self):
        """Forgets the state of the accumulation window."""
        self._window_batches = 0
        self._window_nonfinite_losses = torch.zeros(
            (), dtype=torch.long, device=self.device
        )

    def optimizers_step(self):
        """Clips every group, then steps unless the step cannot do good.

        Skipped (gradients dropped, no LR or step count change): a window
        with no usable audio on any rank, or a non-finite loss or gradient
        norm on any rank. The decision is all-reduced, so every DDP rank
        takes the same one. Sets ``self.stepped``.
        """
        every = self.optimizers_dict or {"optimizer": self.optimizer}
        optimizers = list(self.freeze_optimizers(every).values())
        for optimizer in optimizers:
            self.scaler.unscale_(optimizer)
        if self.skip_nonfinite_grads and not self.scaler.is_enabled():
            self.check_gradients()
        norms = [
            torch.nn.utils.clip_grad_norm_(
                [p for group in opt.param_groups for p in group["params"]],
                self.max_grad_norm,
            ).to(self.device)
            for opt in optimizers
        ]
        flags = torch.stack(
            [
                self._window_nonfinite_losses.float(),
                (~torch.isfinite(torch.stack(norms))).any().float(),
                torch.tensor(float(self._window_batches), device=self.device),
                torch.tensor(
                    float(self._stop_signal is not None), device=self.device
                ),
            ]
        )
        self._reset_window()
        if self.distributed_launch:
            torch.distributed.all_reduce(flags)
        bad_losses, bad_grad, batches, stop = (int(f) for f in flags.tolist())
        self._stop_requested = stop > 0  # every rank stops at this step
        self.stepped = batches > 0 and not (bad_losses or bad_grad)
        if self.stepped:
            for optimizer in optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
            self.optimizer_step += 1
        else:
            if self.scaler.is_enabled():
                self.scaler.update()  # lowers the fp16 loss scale
            self._report_skipped_step(bad_losses, bad_grad, batches)
        # Every optimizer's, also those freeze_optimizers left out: their
        # gradients must not pile up until they step again.
        for optimizer in every.values():
            optimizer.zero_grad(set_to_none=True)

    def _report_skipped_step(self, bad_losses, bad_grad, batches):
        if not batches:
            self._log_skipped_step("no usable audio in its batches")
            return
        if self.scaler.is_enabled() and not bad_losses:
            if self.scaler.get_scale() >= 1.0:
                # fp16 overflow: the loss scaler's business, not a failure.
                self._log_skipped_step(
                    "fp16 gradient overflow, loss scale lowered to %g",
                    self.scaler.get_scale(),
                    level=logging.INFO,
                )
                return
        self.nonfinite_steps += 1
        if not bad_losses:
            self._log_skipped_step("non-finite gradient")
            return
        self.nonfinite_count += bad_losses
        self._log_skipped_step(
            "non-finite loss (%d in this epoch; the run stops after more "
            "than %d)",
            self.nonfinite_count,
            self.nonfinite_patience,
        )
        if self.nonfinite_count > self.nonfinite_patience:
            raise NonFiniteError(
                f"the loss was not finite in {self.nonfinite_count} batches "
                f"of this epoch (by optimizer step {self.optimizer_step}); "
                "lower the learning rate, check the data, or train in "
                "--precision=fp32 (--nonfinite_patience, now "
                f"{self.nonfinite_patience}, sets how many an epoch may have)"
            )

    def _log_skipped_step(self, reason, *args, level=logging.WARNING):
        # Every rank takes the same decision: the main process says it.
        if if_main_process():
            logger.log(
                level,
                "Optimizer step %d skipped: " + reason,
                self.optimizer_step + 1,
                *args,
            )

    # ---- Stopping on a signal ----------------------------------------------
    def install_signal_handlers(self):
        """SIGTERM and SIGINT ask the run to stop at the next step boundary.

        Only the main thread can set handlers; elsewhere nothing changes.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            if signum not in self._saved_handlers:
                previous = signal.signal(signum, self._request_stop)
                self._saved_handlers[signum] = previous

    def restore_signal_handlers(self):
        """Gives SIGTERM and SIGINT back their previous handlers."""
        for signum, handler in self._saved_handlers.items():
            signal.signal(signum, handler)
        self._saved_handlers = {}

    def _request_stop(self, signum, frame):
        del frame
        if self._stop_signal is not None:
            # A second signal: the previous handler acts on it at once.
            self.restore_signal_handlers()
            signal.raise_signal(signum)
            return
        self._stop_signal = signum
        logger.warning(
            "%s received: the run stops after the next optimizer step, "
            "once a checkpoint is saved (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def _stop_on_signal(self, loss):
        signum = self._stop_signal or signal.SIGTERM  # another rank's
        saved = "no checkpointer: nothing was saved"
        if self.checkpointer is not None:
            self._save_intra_epoch_checkpoint(loss)
            saved = (
                f"a checkpoint is saved in {self.checkpointer.checkpoints_dir}"
                "; rerun the same command to resume"
            )
        self.restore_signal_handlers()
        raise RunInterrupted(
            f"stopped by {signal.Signals(signum).name} after optimizer step "
            f"{self.optimizer_step}: {saved}",
            signum,
        )

    # ---- Intra-epoch checkpoints -------------------------------------------
    def _intra_epoch_checkpoint_due(self):
        """Whether the interval since the last checkpoint has passed.

        SpeechBrain's rule (minutes, or micro-batches since the last save
        or the start of the epoch), decided by the main process.
        """
        minutes, steps = self.checkpoint_minutes, self.checkpoint_steps
        if self.checkpointer is None or (minutes <= 0 and steps <= 0):
            return False
        last_time, last_step = self._last_checkpoint
        due = 0 < minutes < (time.time() - last_time) / 60.0
        due = due or 0 < steps <= self.step - last_step
        if self.distributed_launch:
            decision = [due]
            torch.distributed.broadcast_object_list(decision, src=0)
            due = decision[0]
        return due

    # ---- Stages ------------------------------------------------------------
    def on_fit_start(self):
        """Sets the signal handlers and cleans up an interrupted save.

        Then SpeechBrain's start (optimizers, recovery from the newest
        checkpoint that loads completely), and the comparison of the
        run's options with the checkpoint's.

        Raises
        ------
        ConfigError
            If no checkpoint can be resumed though some exist, one was
            written by another architecture, or an option that changes
            what is trained differs from the checkpoint's.
        """
        self.install_signal_handlers()
        if isinstance(self.checkpointer, AtomicCheckpointer):
            self.checkpointer.remove_incomplete()
        try:
            super().on_fit_start()
        except (CheckpointMismatchError, CheckpointLoadError) as error:
            raise ConfigError(str(error)) from error
        resumed = getattr(self.checkpointer, "resumed", None)
        if resumed is not None:
            logger.info("Resuming from %s", resumed.path)
        self._check_resumed_options()

    def _check_resumed_options(self):
        record = None
        if self.checkpointer is not None:
            record = self.checkpointer.recoverables.get("training_options")
        resumed = getattr(self.checkpointer, "resumed", None)
        if record is None or resumed is None:
            return
        if record.saved is None:
            logger.warning(
                "The checkpoint has no record of its training options "
                "(written by an older version): they are not compared"
            )
            return
        previous = check_resumed_options(
            record.saved, record.options, str(resumed.path)
        )
        if previous is not None:
            logger.warning(
                "%s extended from %d to %d: the schedules follow the new "
                "total from optimizer step %d on",
                EXTENSIBLE_KEY,
                previous,
                int(record.options[EXTENSIBLE_KEY]),
                self.optimizer_step,
            )
            self.on_total_steps_extended(previous)

    def on_total_steps_extended(self, previous):
        """Rebuilds what a checkpoint holds of the old ``total_steps``.

        Called after a resume with a larger ``total_steps``. Schedules
        computed from ``hparams.total_steps`` at each step need nothing
        (the default); a checkpointed scheduler must be rebuilt for the
        new total, at ``self.optimizer_step``.

        Arguments
        ---------
        previous : int
            The checkpoint's ``total_steps``.
        """

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Signals act at once again (training is over); then SpeechBrain's.

        Arguments
        ---------
        max_key, min_key : str, optional
            As for ``Brain.on_evaluate_start``.

        Raises
        ------
        ConfigError
            If no checkpoint to evaluate can be loaded.
        """
        self.restore_signal_handlers()
        try:
            super().on_evaluate_start(max_key=max_key, min_key=min_key)
        except (CheckpointMismatchError, CheckpointLoadError) as error:
            raise ConfigError(str(error)) from error

    def on_stage_start(self, stage, epoch=None):
        """Starts the accumulation window and checkpoint interval afresh.

        SpeechBrain drops a partial window at an epoch's end.
        """
        if stage == sb.Stage.TRAIN:
            self._reset_window()
            self._last_checkpoint = (time.time(), self.step)
            if self.step == 0:  # else resumed within the epoch
                self.epoch_audio = {"used": 0, "skipped": 0}
            self._epoch_start = {
                "optimizer_step": self.optimizer_step,
                "batch": self.step,  # > 0: resumed within the epoch
                "skipped_audio": self.skipped_audio,
                "nonfinite_steps": self.nonfinite_steps,
            }

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the stage's skipped audio; writes the cost after training.

        Raises
        ------
        ConfigError
            If a training epoch made no optimizer step (every later epoch
            would train nothing as well, and the model stays as it was),
            or skipped a larger share of its audio files than
            ``max_skipped_audio_share``.
        """
        self.flush_skipped_audio()
        if stage == sb.Stage.TRAIN:
            self.write_cost()
            self._check_epoch_stepped(epoch)
            self._check_skipped_share(epoch)

    def _check_skipped_share(self, epoch):
        limit = getattr(self.hparams, "max_skipped_audio_share", None)
        counts = torch.tensor(
            [self.epoch_audio["used"], self.epoch_audio["skipped"]],
            dtype=torch.long,
            device=self.device,
        )
        if self.distributed_launch:
            torch.distributed.all_reduce(counts)
        used, skipped = (int(count) for count in counts.tolist())
        if limit is None or skipped <= limit * (used + skipped):
            return
        raise ConfigError(
            f"epoch {epoch} skipped {skipped} of its {used + skipped} "
            f"training audio files ({skipped / (used + skipped):.0%}), more "
            f"than max_skipped_audio_share ({limit}) allows: each is named "
            "in the log with its reason; repair or remove them from the "
            "training CSV, or raise --max_skipped_audio_share"
        )

    def _check_epoch_stepped(self, epoch):
        start = self._epoch_start
        resumed_at_end = start["batch"] > 0 and self.step == start["batch"]
        if (
            self.optimizer_step > start["optimizer_step"]
            or resumed_at_end  # nothing was left of the epoch
            or self._optimizer_step_limit_exceeded
        ):
            return
        raise ConfigError(
            f"epoch {epoch} made no optimizer step: of its "
            f"{self.step - start['batch']} training batches, "
            f"{self.skipped_audio - start['skipped_audio']} audio files "
            "were unusable (each is named in the log) and "
            f"{self.nonfinite_steps - start['nonfinite_steps']} steps "
            "non-finite; check the training CSV's audio, or lower "
            f"--grad_accumulation_factor (now "
            f"{self.grad_accumulation_factor}) if the epoch has fewer "
            "batches"
        )

    @torch.no_grad()
    def evaluate_batch(self, batch, stage):
        """SpeechBrain's ``evaluate_batch``; NaN for an :class:`EmptyBatch`."""
        self._note_skipped(batch.skipped, stage)
        if isinstance(batch, EmptyBatch):
            return torch.tensor(float("nan"))
        return super().evaluate_batch(batch, stage)

    # ---- Skipped audio -----------------------------------------------------
    def _note_skipped(self, skipped, stage):
        """Queues skipped files for logging in the main process."""
        if stage != sb.Stage.TRAIN and rank_and_world_size()[0] != 0:
            return  # every rank evaluates the same files: count them once
        self._pending_skips.extend(skipped)
        if not self.distributed_launch:
            self.flush_skipped_audio()

    def flush_skipped_audio(self):
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

    # ---- Checkpointed counters ---------------------------------------------
    def counters_state(self):
        """The run's counters, for the checkpoint."""
        return {
            "skipped_audio": self.skipped_audio,
            "nonfinite_steps": self.nonfinite_steps,
            "epoch_audio": dict(self.epoch_audio),
        }

    def load_counters_state(self, state):
        """Restores :meth:`counters_state`."""
        self.skipped_audio = state["skipped_audio"]
        self.nonfinite_steps = state["nonfinite_steps"]
        # Absent from checkpoints written before the share was checked.
        self.epoch_audio = dict(
            state.get("epoch_audio", {"used": 0, "skipped": 0})
        )

    # ---- Cost report -------------------------------------------------------
    def start_cost_tracker(self, projection=None):
        """Measures the training micro-batches from now on.

        Arguments
        ---------
        projection : dict, optional
            ``steps``, ``micro_batches``, ``batch_seconds`` of the run the
            cost is projected to (default: the paper's pretraining).
        """
        self.cost_tracker = CostTracker(
            self.hparams.output_folder, self.device, projection=projection
        )

    def write_cost(self):
        """Writes ``<output_folder>/cost.json`` (main process only).

        Returns
        -------
        dict or None
            The report written, None if not written here.
        """
        if self.cost_tracker is None or not if_main_process():
            return None
        return self.cost_tracker.write(
            {
                "optimizer_steps": self.optimizer_step,
                "epoch": self.hparams.epoch_counter.current,
                "skipped_audio": self.skipped_audio,
                "nonfinite_steps": self.nonfinite_steps,
            }
        )


def seed_rank(seed, rank):
    """Gives each DDP rank its own random streams, after model building.

    SpeechBrain seeds every rank alike, so that the models they build are
    identical; the ranks would then also draw the same augmentations and
    dropout masks. Call this once the modules exist. Rank 0 keeps its
    stream, so a one-process run is unchanged.

    Arguments
    ---------
    seed : int
        The run's seed.
    rank : int
        This process's rank.

    Example
    -------
    >>> seed_rank(1986, 1)
    >>> a = torch.rand(1)
    >>> seed_rank(1986, 1)
    >>> torch.equal(a, torch.rand(1))
    True
    """
    if rank == 0:
        return
    derived = (int(seed) + 1000003 * int(rank)) % (2**32)
    random.seed(derived)
    numpy.random.seed(derived)
    torch.manual_seed(derived)


def start_experiment(hparams_file, run_opts, overrides, restart=False):
    """What every recipe does before its output folder exists.

    Loads the YAML (which builds the modules, alike on every rank), checks
    the run options, locks the output folder against a second run (main
    process, until it exits), moves the old checkpoints aside if
    ``restart``, registers the run's options with the checkpointer (see
    :meth:`S3LBrain.on_fit_start`), starts DDP and gives each rank its own
    random streams.
    The recipe then calls ``sb.create_experiment_directory`` itself, so
    that SpeechBrain copies the recipe script into the output folder.

    Arguments
    ---------
    hparams_file, run_opts, overrides, restart
        From ``s3l_plugin.config.parse_arguments``.

    Returns
    -------
    dict
        The loaded YAML.

    Raises
    ------
    ConfigError
        For a mistake in the YAML, the overrides or the run options, or
        an output folder in use by another run.
    """
    hparams = load_yaml(hparams_file, overrides)
    resolve_auto_precision(hparams, run_opts)
    check_run_options(hparams, run_opts)
    resolve_checkpoint_interval(hparams, run_opts)
    checkpointer = hparams.get("checkpointer")
    if rank_and_world_size()[0] == 0:
        OutputFolderLock(hparams["output_folder"]).acquire()
        if restart and checkpointer is not None:
            move_checkpoints_aside(checkpointer.checkpoints_dir)
    options = None
    if checkpointer is not None:
        options = training_options(hparams_file, overrides, hparams, run_opts)
    if options is not None:
        if rank_and_world_size()[0] == 0:
            check_newest_checkpoint_options(checkpointer, options)
        checkpointer.add_recoverable(
            "training_options", TrainingOptions(options), optional_load=True
        )
    sb.utils.distributed.ddp_init_group(run_opts)
    seed_rank(hparams["seed"], rank_and_world_size()[0])
    return hparams


def check_newest_checkpoint_options(checkpointer, options):
    """Refuses changed options before the output folder is written to.

    The recipe's ``sb.create_experiment_directory`` rewrites
    ``hyperparams.yaml`` with this run's options; a resume refused only
    later (:meth:`S3LBrain.on_fit_start`) would leave the folder saying
    the refused values. So the newest checkpoint whose options record
    reads is compared here first; the full check still runs on the
    checkpoint actually resumed.

    Arguments
    ---------
    checkpointer : speechbrain.utils.checkpoints.Checkpointer
        The run's.
    options : dict
        This run's :func:`s3l_plugin.config.training_options`.

    Raises
    ------
    ConfigError
        As :func:`s3l_plugin.config.check_resumed_options`.
    """
    if not checkpointer.checkpoints_dir.is_dir():
        return
    record = TrainingOptions(options)
    for checkpoint in checkpointer.find_checkpoints(  # newest first
        ckpt_predicate=lambda c: "training_options" in c.paramfiles
    ):
        try:
            record.load(checkpoint.paramfiles["training_options"])
        except (OSError, ValueError):
            continue  # damaged: the resume passes it over and says so
        check_resumed_options(record.saved, options, str(checkpoint.path))
        return


def move_checkpoints_aside(folder):
    """Renames a checkpoints folder, for ``--restart`` (main process).

    Moved, not deleted: a mistaken ``--restart`` loses nothing.

    Arguments
    ---------
    folder : pathlib.Path or str
        The checkpoints folder; an empty one is left in its place.

    Returns
    -------
    str or None
        Where the old folder is now; None if there was nothing to move.
    """
    folder = str(folder).rstrip(os.sep)
    if not os.path.isdir(folder) or not os.listdir(folder):
        logger.info("--restart: no checkpoints in %s", folder)
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = f"{folder}.before-restart-{stamp}"
    for index in range(1, 1000):
        if not os.path.exists(moved):
            break
        moved = f"{folder}.before-restart-{stamp}-{index}"
    os.replace(folder, moved)
    os.makedirs(folder)
    logger.warning(
        "--restart: the checkpoints of the previous run are moved to %s "
        "(delete it once not needed); training starts afresh",
        moved,
    )
    return moved
