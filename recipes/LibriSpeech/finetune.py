#!/usr/bin/env python3
"""CTC finetuning of a pretrained S3LSpeech encoder on LibriSpeech.

The encoder (the pretraining student) is finetuned with a learned weighted
sum of its last two transformer layers, an up-sampling convolutional CTC
head (10 ms frames) and a character vocabulary (SPEC 6). Validation decodes
greedily; the test sets are decoded greedily (and, optionally, with a CTC
beam search and a KenLM n-gram) and their WER written to
``<output_folder>/wer_<split>.txt``.

To run (paper configuration)::

    python recipes/LibriSpeech/finetune.py hparams/finetune_ctc.yaml \
        --data_folder=/path/to/LibriSpeech --pretrained_path=results/s3l/1986

CPU demo on the synthetic mini corpus, after ``pretrain.py
hparams/s3l_tiny.yaml``::

    python recipes/LibriSpeech/finetune.py hparams/finetune_ctc_tiny.yaml \
        --pretrained_path=results/s3l_tiny/1986

Reliability, as in pretraining (see ``pretrain.py``): an interrupted run,
rerun with the same command, resumes from its last checkpoint and ends
with the same parameters as an uninterrupted one; unusable audio is
skipped, logged and counted; optimizer steps with a non-finite loss or
gradient are skipped (``--nonfinite_patience``); configuration mistakes
stop the run with one line, ``s3l: error: ...``. The cost of the run is
written to ``<output_folder>/cost.json``, projected to the paper's 60,000
steps. Test hooks: ``S3L_TEST_CRASH_AFTER_STEPS`` and ``S3L_TEST_DUMP_DIR``
(the final model's state dict).

CTC lengths: the loss is ``torch.nn.functional.ctc_loss`` with the absolute
(unpadded) frame and token counts; decoding uses SpeechBrain's
``ctc_greedy_decode`` with relative lengths computed from them.
"""

import logging
import os
import sys

import speechbrain as sb
import torch
import yaml
from speechbrain.utils.distributed import if_main_process, run_on_main

from s3l_plugin.asr import make_vocabulary
from s3l_plugin.checkpointing import AtomicCheckpointer
from s3l_plugin.ctc import ctc_feasible, ctc_loss, greedy_decode
from s3l_plugin.data.audio import SkipBadAudioCollate, make_audio_pipeline
from s3l_plugin.pretrained import (
    ARCHITECTURE_KEYS,
    architecture_mismatches,
    read_encoder_config,
)
from s3l_plugin.recipe_utils import (
    ConfigError,
    GuardedTrainingMixin,
    check_run_options,
    eval_loader_kwargs,
    load_yaml,
    make_train_sampler,
    prepare_resume,
    resolve_checkpoint_interval,
    resolve_data_folder,
    run_cli,
    seed_rank,
    train_loader_kwargs,
)

logger = logging.getLogger(__name__)
HERE = os.path.dirname(os.path.abspath(__file__))

# The paper's finetuning, for the cost projection: 60,000 optimizer steps of
# 4 micro-batches of at most 1080 s of padded audio.
PAPER_FINETUNING = {"steps": 60000, "micro_batches": 4, "batch_seconds": 1080}


class S3LFinetune(GuardedTrainingMixin, sb.Brain):
    """Brain for CTC finetuning: ``modules.model`` is an ``S3LCTC``.

    Two optimizers: the encoder's (absent when it is frozen) and the head's
    (layer weights + CTC head), each with its own tri-stage learning rate.
    Attributes set by ``main``: ``vocab``, ``beam_searcher`` (or None) and,
    before each test set, ``test_split``.

    ``fit_batch`` (:class:`GuardedTrainingMixin`) steps the optimizers only
    when it can do good: a window of micro-batches whose audio was all
    unusable, or whose loss or gradient is not finite, leaves the model,
    the learning rates and the step count untouched.
    """

    def compute_forward(self, batch, stage):
        """Features (SpecAugmented in training) -> logits and lengths."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        model = _unwrap(self.modules.model)
        feats, feat_lens = model.encoder.features(wavs, wav_lens)
        if stage == sb.Stage.TRAIN:
            feats = self.modules.spec_augment(feats, feat_lens)
        return self.modules.model(feats, feat_lens)

    def compute_objectives(self, predictions, batch, stage):
        """CTC loss on the true lengths; greedy (and beam) WER in eval."""
        logits, lengths = predictions
        tokens, token_rel = batch.tokens
        token_lens = torch.round(token_rel * tokens.shape[1]).long()
        loss = ctc_loss(
            logits,
            lengths,
            tokens,
            token_lens,
            blank=self.vocab.blank_index,
        )
        self.stage_loss_sum += loss.detach()
        self.stage_batches += 1
        if stage != sb.Stage.TRAIN:
            hyps = greedy_decode(logits, lengths, self.vocab.blank_index)
            words = [self.vocab.decode(hyp).split() for hyp in hyps]
            targets = [text.split() for text in batch.wrd]
            self.wer_metric.append(batch.id, words, targets)
            self.cer_metric.append(batch.id, words, targets)
            if stage == sb.Stage.TEST and self.beam_searcher is not None:
                self.beam_metric.append(
                    batch.id, self._beam_search(logits, lengths), targets
                )
        return loss

    def _beam_search(self, logits, lengths):
        log_probs = torch.log_softmax(logits.detach().float(), dim=-1).cpu()
        words = []
        for log_prob, length in zip(log_probs, lengths.tolist()):
            hyps = self.beam_searcher(log_prob[:length].unsqueeze(0))
            text = hyps[0][0].text if hyps and hyps[0] else ""
            words.append(text.upper().split())
        return words

    def _placeholder_backward(self):
        """Zero gradients through the DDP model, for a rank with no data.

        The other ranks' backward passes wait for this rank's gradients:
        skipping would hang them.
        """
        encoder = _unwrap(self.modules.model).encoder
        frames = int(encoder.min_input_frames)
        feats = torch.zeros(
            1, frames, encoder.config["n_mels"], device=self.device
        )
        lengths = torch.tensor([frames], device=self.device)
        with self.training_ctx:
            logits, _ = self.modules.model(feats, lengths)
        (logits.float().sum() * 0.0).backward()

    # ---- Optimisation ------------------------------------------------------
    def init_optimizers(self):
        """AdamW for the encoder (unless frozen) and for the head.

        Each optimizer has one parameter group, so SpeechBrain's clipping
        (``param_groups[0]`` of each optimizer) covers every parameter.
        """
        model = _unwrap(self.modules.model)
        encoder_params = [
            p for p in model.encoder.parameters() if p.requires_grad
        ]
        head_params = [
            p
            for name, p in model.named_parameters()
            if not name.startswith("encoder.") and p.requires_grad
        ]
        hp = self.hparams
        self.optimizers_dict = {}
        self.lr_schedules = {}
        self.optimizer = hp.head_opt_class(head_params)
        self.optimizers_dict["head_optimizer"] = self.optimizer
        self.lr_schedules["head_optimizer"] = make_lr_schedule(hp, hp.lr_head)
        if encoder_params:
            self.encoder_optimizer = hp.encoder_opt_class(encoder_params)
            self.optimizers_dict["encoder_optimizer"] = self.encoder_optimizer
            self.lr_schedules["encoder_optimizer"] = make_lr_schedule(
                hp, hp.lr_encoder
            )
        for name, optimizer in self.optimizers_dict.items():
            if len(optimizer.param_groups) != 1:
                raise ConfigError(
                    f"{name} has {len(optimizer.param_groups)} parameter "
                    "groups: SpeechBrain clips only the first; use one"
                )
            if self.checkpointer is not None:
                self.checkpointer.add_recoverable(name, optimizer)
        frozen = sum(
            p.numel() for p in model.parameters() if not p.requires_grad
        )
        logger.info(
            "Optimizers: %s; %d trainable parameters, %d frozen",
            ", ".join(self.optimizers_dict),
            sum(p.numel() for p in encoder_params + head_params),
            frozen,
        )

    def on_fit_batch_start(self, batch, should_step):
        """Sets the lr of the coming optimizer step (tri-stage schedule).

        The lr is a function of ``optimizer_step`` alone, so it is right
        after a resume and only optimizer steps (not micro-batches) count.
        """
        if should_step:
            for name, optimizer in self.optimizers_dict.items():
                self.lr_schedules[name](optimizer, self.optimizer_step)

    # ---- Stages ------------------------------------------------------------
    def on_stage_start(self, stage, epoch=None):
        """Fresh loss sums; error-rate trackers for validation and test."""
        self._epoch = epoch
        self.stage_loss_sum = torch.zeros((), device=self.device)
        self.stage_batches = 0
        if stage == sb.Stage.TRAIN:
            # SpeechBrain drops a partial window at an epoch's end.
            self._reset_window()
        else:
            self.wer_metric = self.hparams.error_rate_computer()
            self.cer_metric = self.hparams.cer_computer()
            self.beam_metric = self.hparams.error_rate_computer()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs; checkpoints on valid WER; writes the test WER files."""
        self._flush_skipped()
        if stage != sb.Stage.TRAIN and self.stage_batches:
            # The mean over the batches evaluated; SpeechBrain's running
            # average would count skipped (all-unusable) batches too.
            stage_loss = float(self.stage_loss_sum) / self.stage_batches
        stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            self.write_cost()  # at each epoch's end
            return
        stats["CER"] = self.cer_metric.summarize("error_rate")
        stats["WER"] = self.wer_metric.summarize("error_rate")
        if stage == sb.Stage.VALID:
            lrs = {
                f"lr_{name.split('_')[0]}": opt.param_groups[0]["lr"]
                for name, opt in self.optimizers_dict.items()
            }
            self.hparams.train_logger.log_stats(
                stats_meta=dict(
                    epoch=epoch,
                    optimizer_step=self.optimizer_step,
                    **lrs,
                    skipped_audio=self.skipped_audio,
                    nonfinite_steps=self.nonfinite_steps,
                ),
                train_stats=getattr(self, "train_stats", None),
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"WER": stats["WER"], "CER": stats["CER"], "epoch": epoch},
                min_keys=[self.hparams.best_key],
                num_to_keep=self.hparams.checkpoints_to_keep,
            )
            return
        split = getattr(self, "test_split", "test")
        if self.beam_searcher is not None:
            stats["WER_beam"] = self.beam_metric.summarize("error_rate")
        self.hparams.train_logger.log_stats(
            stats_meta={"test split": split},
            test_stats=stats,
        )
        if if_main_process():
            folder = self.hparams.output_folder
            with open(
                os.path.join(folder, f"wer_{split}.txt"), "w", encoding="utf-8"
            ) as out:
                self.wer_metric.write_stats(out)
            if self.beam_searcher is not None:
                with open(
                    os.path.join(folder, f"wer_beam_{split}.txt"),
                    "w",
                    encoding="utf-8",
                ) as out:
                    self.beam_metric.write_stats(out)
        self.test_results[split] = stats


def make_lr_schedule(hp, lr):
    """Tri-stage schedule peaking at ``lr`` over ``total_steps``.

    Arguments
    ---------
    hp : SimpleNamespace
        Hyperparameters: ``lr_schedule`` (a TriStageLRSchedule partial),
        ``total_steps``, ``warmup_ratio``, ``hold_ratio``, ``decay_ratio``.
    lr : float
        Peak learning rate.

    Returns
    -------
    speechbrain.nnet.schedulers.TriStageLRSchedule
    """
    total = int(hp.total_steps)
    return hp.lr_schedule(
        lr=lr,
        warmup_steps=max(1, round(hp.warmup_ratio * total)),
        hold_steps=max(1, round(hp.hold_ratio * total)),
        decay_steps=max(1, round(hp.decay_ratio * total)),
        total_steps=total,
    )


def _unwrap(module):
    return getattr(module, "module", module)


# ---- Configuration ---------------------------------------------------------
def _as_dict(overrides):
    """Command-line overrides (a YAML string or dict) as a dict."""
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    return yaml.safe_load(overrides) or {}


def _same(a, b):
    return _listed(a) == _listed(b)


def _listed(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def load_hparams(hparams_file, overrides):
    """Loads the YAML; the encoder architecture comes from the checkpoint.

    With ``pretrained_path`` set, the architecture keys of the YAML are
    overridden with the values of ``encoder_config.json`` (the YAML is
    loaded a second time) and the built encoder is checked against it.

    Arguments
    ---------
    hparams_file : str
        The YAML file.
    overrides : str or dict
        Command-line overrides.

    Returns
    -------
    hparams : dict
        The loaded YAML.
    overrides : dict
        The overrides used (the architecture ones included).
    """
    overrides = _as_dict(overrides)
    # First pass without the architecture overrides (they may not fit the
    # YAML's own architecture): only to read pretrained_path.
    user_arch = {k: v for k, v in overrides.items() if k in ARCHITECTURE_KEYS}
    first = {k: v for k, v in overrides.items() if k not in user_arch}
    hparams = _load_yaml(hparams_file, first)
    path = hparams.get("pretrained_path")
    if not path:
        if user_arch:
            hparams = _load_yaml(hparams_file, overrides)
        return hparams, overrides
    config = read_encoder_config(path)
    arch = {
        key: config[key]
        for key in ARCHITECTURE_KEYS
        if key in config and key in hparams
    }
    conflicts = [
        f"{key}={value} (checkpoint: {arch[key]})"
        for key, value in user_arch.items()
        if key in arch and not _same(value, arch[key])
    ]
    if conflicts:
        raise ConfigError(
            f"Command-line encoder architecture differs from {path}: "
            f"{', '.join(conflicts)}; drop these overrides"
        )
    changed = {k: v for k, v in arch.items() if not _same(hparams[k], v)}
    if changed:
        overrides = dict(overrides, **changed)
        hparams = _load_yaml(hparams_file, overrides)
    mismatches = architecture_mismatches(hparams["encoder"].config, config)
    if mismatches:
        raise ConfigError(
            f"The YAML encoder does not match {path}/encoder_config.json "
            f"(yaml vs checkpoint): {'; '.join(mismatches)}; expose these "
            "keys at the top of the YAML so they can be taken from the "
            "checkpoint"
        )
    return hparams, overrides


def _load_yaml(hparams_file, overrides):
    return load_yaml(hparams_file, overrides)


def check_config(hparams, vocab):
    """Start-up checks that fail with one clear line.

    Arguments
    ---------
    hparams : dict
        Loaded YAML.
    vocab : CharVocabulary or SentencePieceVocabulary
        The output vocabulary.
    """
    if hparams["best_key"] not in ("WER", "CER"):
        raise ConfigError(
            f"best_key is {hparams['best_key']}: it must be WER or CER"
        )
    if hparams["head"].vocab_size != len(vocab):
        raise ConfigError(
            f"output_neurons is {hparams['head'].vocab_size} but the "
            f"{hparams['vocab']} vocabulary has {len(vocab)} tokens: set "
            f"--output_neurons={len(vocab)}"
        )
    if hparams["test_beam_search"] and hparams.get("kenlm_model_path"):
        lm_path = hparams["kenlm_model_path"]
        if not os.path.isfile(lm_path):
            raise ConfigError(f"kenlm_model_path {lm_path} does not exist")
        try:
            import kenlm  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"kenlm_model_path is {lm_path} but the kenlm package is not "
                "installed: pip install kenlm (or pip install "
                "'s3l_plugin[lm]'), or set kenlm_model_path: null"
            ) from None


# ---- Data ------------------------------------------------------------------
def _ctc_frames(encoder, head, duration, sample_rate):
    """Output frames of the CTC head for ``duration`` seconds of audio."""
    samples = torch.tensor([int(round(duration * sample_rate))])
    feat_frames = encoder.features.num_frames(samples)
    return int(head.output_lengths(encoder.output_lengths(feat_frames))[0])


def filter_dataset(dataset, hparams, vocab, name, max_duration=None):
    """Drops utterances the model cannot use; logs how many.

    Too short for one encoder frame (always), longer than
    ``max_duration`` (if given), and, for training, a CTC target longer
    than the output frames.

    Arguments
    ---------
    dataset : DynamicItemDataset
        From the split's CSV.
    hparams : dict
        Loaded YAML (``encoder``, ``head``, ``sample_rate``).
    vocab : CharVocabulary or SentencePieceVocabulary
        Encodes the transcripts.
    name : str
        Split name, for the log.
    max_duration : float, optional
        Longest kept utterance (seconds); set for training only.

    Returns
    -------
    DynamicItemDataset
        Filtered and sorted by duration.
    """
    encoder, head = hparams["encoder"], hparams["head"]
    sample_rate = hparams["sample_rate"]
    min_seconds = encoder.min_input_seconds
    check_ctc = max_duration is not None
    dropped = {"too short": 0, "too long": 0, "target too long": 0}
    keep = set()
    for utt_id, row in dataset.data.items():
        duration = float(row["duration"])
        if duration < min_seconds:
            dropped["too short"] += 1
        elif max_duration is not None and duration > max_duration:
            dropped["too long"] += 1
        elif check_ctc and not ctc_feasible(
            vocab.encode(row["wrd"]),
            _ctc_frames(encoder, head, duration, sample_rate),
        ):
            dropped["target too long"] += 1
        else:
            keep.add(utt_id)
    total = sum(dropped.values())
    if total:
        logger.warning(
            "%s: %d of %d utterances dropped (%s; shorter than %.2f s gives "
            "no encoder frame)",
            name,
            total,
            len(dataset.data),
            ", ".join(f"{k}: {v}" for k, v in dropped.items() if v),
            min_seconds,
        )
    return dataset.filtered_sorted(
        key_test={"id": lambda utt_id: utt_id in keep}, sort_key="duration"
    )


def dataio_prepare(hparams, csv_folder, vocab, test_splits):
    """Datasets with audio and token pipelines, and the train sampler.

    Arguments
    ---------
    hparams : dict
        Loaded YAML.
    csv_folder : str
        Where ``prepare_librispeech`` wrote the CSVs.
    vocab : CharVocabulary or SentencePieceVocabulary
        The output vocabulary.
    test_splits : list of str
        Test split names.

    Returns
    -------
    train, valid : DynamicItemDataset
    tests : dict
        Split name -> DynamicItemDataset.
    sampler : DynamicBatchSampler or None
        None without ``dynamic_batching`` (fixed-size batches).
    """
    # A file may not be what the CSV says (replaced, damaged): the audio
    # pipeline checks its real duration too, and a file too short for one
    # encoder frame (or, in training, longer than max_duration) is skipped
    # instead of stopping the run.
    min_seconds = hparams["encoder"].min_input_seconds

    def audio(max_seconds):
        return make_audio_pipeline(
            hparams["sample_rate"],
            max_seconds=max_seconds,
            min_seconds=min_seconds,
        )

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("tokens")
    def text_pipeline(wrd):
        return torch.LongTensor(vocab.encode(wrd))

    def load(csv_name, name, max_duration=None):
        dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(
            os.path.join(csv_folder, csv_name)
        )
        dataset = filter_dataset(dataset, hparams, vocab, name, max_duration)
        sb.dataio.dataset.add_dynamic_item([dataset], audio(max_duration))
        sb.dataio.dataset.add_dynamic_item([dataset], text_pipeline)
        sb.dataio.dataset.set_output_keys(
            [dataset], ["id", "sig", "audio_error", "wrd", "tokens"]
        )
        return dataset

    train = load("train.csv", "train", hparams["max_duration"])
    valid = load(f"{hparams['valid_split']}.csv", hparams["valid_split"])
    tests = {split: load(f"{split}.csv", split) for split in test_splits}
    sampler = make_train_sampler(hparams, train)
    return train, valid, tests, sampler


def resolve_splits(hparams):
    """Train, valid and test splits; the mini corpus has only some.

    Arguments
    ---------
    hparams : dict
        Loaded YAML.

    Returns
    -------
    data_folder : str
    train_splits, test_splits : list of str
    """
    data_folder = resolve_data_folder(hparams)
    train_splits = list(hparams["train_splits"])
    test_splits = list(hparams["test_splits"])
    if not hparams.get("data_folder"):
        present = [
            s
            for s in test_splits
            if os.path.isdir(os.path.join(data_folder, s))
        ]
        if present != test_splits:
            logger.warning(
                "The mini corpus has no %s: not tested",
                sorted(set(test_splits) - set(present)),
            )
        test_splits = present
    return data_folder, train_splits, test_splits


def main(argv):
    """Runs the recipe; configuration mistakes raise ConfigError.

    From the command line, ``run_cli`` turns them into one line,
    ``s3l: error: ...``, and exit status 2.

    Arguments
    ---------
    argv : list of str
        Command-line arguments (YAML file, then options).

    Returns
    -------
    S3LFinetune
        The trained Brain.
    """
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    from librispeech_prepare import prepare_librispeech

    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    hparams, overrides = load_hparams(hparams_file, overrides)
    check_run_options(hparams, run_opts)
    resolve_checkpoint_interval(hparams, run_opts)

    sb.utils.distributed.ddp_init_group(run_opts)
    # The modules are built (alike on every rank); from here on each rank
    # draws its own augmentations and dropout masks.
    seed_rank(hparams["seed"], int(os.environ.get("RANK") or 0))
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )

    data_folder, train_splits, test_splits = resolve_splits(hparams)
    csv_folder = hparams["csv_folder"]
    valid_split = hparams["valid_split"]
    try:
        run_on_main(
            prepare_librispeech,
            kwargs={
                "data_folder": data_folder,
                "save_folder": csv_folder,
                "tr_splits": train_splits,
                "dev_splits": [valid_split],
                "te_splits": [s for s in test_splits if s != valid_split],
                "merge_lst": train_splits,
                "merge_name": "train.csv",
                "skip_prep": hparams["skip_prep"],
            },
        )
    except FileNotFoundError as error:
        raise ConfigError(
            f"{error}: --data_folder must hold the splits "
            f"{train_splits + [valid_split] + test_splits}"
        ) from error

    vocab = build_vocabulary(hparams, csv_folder)
    check_config(hparams, vocab)
    train, valid, tests, sampler = dataio_prepare(
        hparams, csv_folder, vocab, test_splits
    )

    pretrained_path = hparams["pretrained_path"]
    if pretrained_path:
        pretrainer = hparams["pretrainer"]
        run_on_main(pretrainer.collect_files)
        pretrainer.load_collected()
        logger.info("Encoder initialised from %s", pretrained_path)
    else:
        logger.warning(
            "No pretrained_path: the encoder is trained FROM SCRATCH "
            "(random initialisation). Pass --pretrained_path=<pretraining "
            "output folder> to finetune a pretrained S3L encoder."
        )
        if hparams["freeze_encoder"]:
            logger.warning(
                "freeze_encoder with no pretrained_path: the "
                "encoder stays random"
            )

    checkpointer = AtomicCheckpointer.from_checkpointer(hparams["checkpointer"])
    brain = S3LFinetune(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=checkpointer,
    )
    brain.vocab = vocab
    brain.beam_searcher = None
    if hparams["test_beam_search"]:
        brain.beam_searcher = hparams["beam_searcher"](
            blank_index=vocab.blank_index,
            vocab_list=vocab.ctc_vocab_list(),
            space_token=" ",
        )
    brain.test_results = {}
    prepare_resume(checkpointer, brain)
    # Brain only re-seeds samplers it built itself; without this the
    # dynamic batches would come in the same order every epoch.
    brain.train_sampler = sampler
    brain.start_cost_tracker(projection=PAPER_FINETUNING)
    collate = SkipBadAudioCollate(empty_batch=True)
    brain.fit(
        brain.hparams.epoch_counter,
        train,
        valid,
        train_loader_kwargs=train_loader_kwargs(hparams, collate, sampler),
        valid_loader_kwargs=eval_loader_kwargs(
            hparams, collate, hparams["valid_batch_size"]
        ),
    )
    brain.write_cost()
    brain.dump_for_tests({"model": _unwrap(brain.modules.model).state_dict()})
    for split, dataset in tests.items():
        brain.test_split = split
        brain.evaluate(
            dataset,
            min_key=hparams["best_key"],
            test_loader_kwargs=eval_loader_kwargs(
                hparams, collate, hparams["test_batch_size"]
            ),
        )
    if if_main_process():
        for split, stats in brain.test_results.items():
            line = f"{split} WER: {stats['WER']:.2f}%"
            if "WER_beam" in stats:
                line += f" (beam search: {stats['WER_beam']:.2f}%)"
            logger.info(line)
            print(line)
    return brain


def build_vocabulary(hparams, csv_folder):
    """The output vocabulary; SentencePiece is trained on the train CSV.

    Arguments
    ---------
    hparams : dict
        Loaded YAML.
    csv_folder : str
        Holds ``train.csv``.

    Returns
    -------
    CharVocabulary or SentencePieceVocabulary
    """
    kind = hparams["vocab"]
    if kind == "char":
        return make_vocabulary("char", unknown=hparams["unknown_chars"])
    prefix = hparams["sp_model_prefix"]
    kwargs = {
        "model_prefix": prefix,
        "vocab_size": hparams["sp_vocab_size"],
        "model_type": hparams["sp_model_type"],
    }

    def train_on_main():
        import csv

        with open(
            os.path.join(csv_folder, "train.csv"), encoding="utf-8"
        ) as fin:
            texts = [row["wrd"] for row in csv.DictReader(fin)]
        make_vocabulary(kind, texts=texts, **kwargs)

    run_on_main(train_on_main)
    return make_vocabulary(kind, **kwargs)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
