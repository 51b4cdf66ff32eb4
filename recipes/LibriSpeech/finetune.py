#!/usr/bin/env python3
"""CTC finetuning of a pretrained S3LSpeech encoder on LibriSpeech.

The encoder (the pretraining student) is finetuned with a learned weighted
sum of its last transformer layers, centred per utterance, an up-sampling
CTC head (``LinearCTCHead``; ``--head_type=conv``: the paper's convolutional
``CTCHead``) and a character (or SentencePiece) vocabulary. Validation decodes
greedily. After training, the validation split and the test sets are
decoded greedily and, with ``beam_search``, by the paper's lexicon + n-gram
beam search (its weights tuned on the validation split first); WERs go to
``<output_folder>/wer_<split>.txt`` and ``wer_beam_<split>.txt``. The
model is then written to ``<output_folder>/inference/`` as a SpeechBrain
inference folder (``speechbrain.inference.ASR.EncoderASR.from_hparams``;
``s3l_plugin.inference``).

To run (paper configuration)::

    python recipes/LibriSpeech/finetune.py hparams/finetune_ctc.yaml \
        --data_folder=/path/to/LibriSpeech --pretrained_path=results/s3l/1986

Limited supervision (Libri-light's 10 min, 1 h or 10 h labelled sets, from
``<data_folder>/librispeech_finetuning`` or ``--librilight_folder``; on the
mini corpus a scaled-down copy is generated)::

    python recipes/LibriSpeech/finetune.py hparams/finetune_ctc.yaml \
        --data_folder=/path/to/LibriSpeech --pretrained_path=results/s3l/1986 \
        --labelled_set=10h --total_steps=20000

CPU demo on the synthetic mini corpus, after ``pretrain.py
hparams/s3l_tiny.yaml``::

    python recipes/LibriSpeech/finetune.py hparams/finetune_ctc_tiny.yaml \
        --pretrained_path=results/s3l_tiny/1986

The YAML builds the encoder with the architecture of
``<pretrained_path>/encoder_config.json``. Reliability as in pretraining
(``s3l_plugin.training``): exact resume, unusable audio and non-finite
steps skipped and counted, one-line configuration errors. The cost is
written to ``<output_folder>/cost.json``, projected to the paper's 60,000
steps.
"""

import copy
import logging
import os
import sys

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process, run_on_main

from s3l_plugin.config import (
    ConfigError,
    check_ctc_config,
    parse_arguments,
    run_cli,
)
from s3l_plugin.ctc import S3LCTC, ctc_feasible, ctc_loss, greedy_decode
from s3l_plugin.data.audio import SkipBadAudioCollate, make_audio_pipeline
from s3l_plugin.data.batching import (
    eval_loader_kwargs,
    make_train_sampler,
    train_loader_kwargs,
)
from s3l_plugin.data.sources import (
    load_csv_dataset,
    prepare_csvs,
    present_splits,
    resolve_data_folder,
    resolve_librilight_folder,
)
from s3l_plugin.decoding import (
    build_lexicon_lm,
    lexicon_lm_files,
    tune_decoder,
)
from s3l_plugin.distributed import unwrap_module
from s3l_plugin.encoder import S3LEncoder
from s3l_plugin.inference import write_asr_folder
from s3l_plugin.lengths import relative_to_absolute
from s3l_plugin.pretrained import load_state_dict_checked
from s3l_plugin.training import S3LBrain, start_experiment
from s3l_plugin.vocabulary import CharVocabulary, SubwordVocabulary

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from librispeech_prepare import (  # noqa: E402
    LIBRILIGHT_SETS,
    librilight_splits,
    prepare_librispeech,
)

logger = logging.getLogger(__name__)

# The paper's finetuning, for the cost projection: 60,000 optimizer steps of
# 4 micro-batches of at most 1080 s of padded audio.
PAPER_FINETUNING = {"steps": 60000, "micro_batches": 4, "batch_seconds": 1080}


class S3LFinetune(S3LBrain):
    """CTC finetuning: ``modules.model`` is an ``S3LCTC``.

    Two optimizers: the encoder's (absent when it is frozen) and the head's
    (layer weights + CTC head), each with its own tri-stage learning rate.
    ``main`` sets ``vocab``, ``decoder`` (a ``LexiconBeamSearch``, or None)
    and, before each test set, ``test_split``.
    """

    def compute_forward(self, batch, stage):
        """Features (SpecAugmented in training) -> logits and lengths."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        model = unwrap_module(self.modules.model)
        feats, feat_lens = model.features(wavs, wav_lens)
        if stage == sb.Stage.TRAIN:
            feats = self.modules.spec_augment(feats, feat_lens)
        return self.modules.model(feats, feat_lens)

    def compute_objectives(self, predictions, batch, stage):
        """CTC loss on the true lengths; greedy (and beam) WER in eval."""
        logits, lengths = predictions
        tokens, token_rel = batch.tokens
        token_lens = relative_to_absolute(token_rel, tokens.shape[1])
        blank = self.vocab.blank_index
        loss = ctc_loss(logits, lengths, tokens, token_lens, blank=blank)
        self.stage_loss_sum += loss.detach()
        self.stage_batches += 1
        if stage != sb.Stage.TRAIN:
            hyps = greedy_decode(logits, lengths, blank)
            words = [self.vocab.decode(hyp).split() for hyp in hyps]
            targets = [text.split() for text in batch.wrd]
            self.wer_metric.append(batch.id, words, targets)
            self.cer_metric.append(batch.id, words, targets)
            if stage == sb.Stage.TEST and self.decoder is not None:
                log_probs = torch.log_softmax(logits.detach().float(), -1)
                self.emissions.append(
                    (batch.id, log_probs.cpu(), lengths.cpu(), targets)
                )
        return loss

    def decode_emissions(self):
        """Beam-searches the test stage's emissions into ``beam_metric``.

        On the validation split (evaluated first), the decoder's LM weight
        and word score are tuned on its WER first when ``tune_decoder``.
        """
        split = getattr(self, "test_split", "test")
        if split == self.hparams.valid_split and self.hparams.tune_decoder:
            lm_weight, word_score, wer = tune_decoder(
                self.decoder,
                [log_probs for _, log_probs, _, _ in self.emissions],
                [lengths for _, _, lengths, _ in self.emissions],
                [words for _, _, _, batch in self.emissions for words in batch],
                lm_weights=self.hparams.tune_lm_weights,
                word_scores=self.hparams.tune_word_scores,
            )
            logger.info(
                "Decoder tuned on %s: lm_weight %s, word_score %s (WER %.2f%%)",
                split,
                lm_weight,
                word_score,
                wer,
            )
            self.decoder = self.decoder.with_weights(lm_weight, word_score)
        for ids, log_probs, lengths, targets in self.emissions:
            self.beam_metric.append(
                ids, self.decoder(log_probs, lengths), targets
            )

    def init_optimizers(self):
        """AdamW for the encoder (unless frozen) and for the head."""
        model = unwrap_module(self.modules.model)
        trainable = [
            (n, p) for n, p in model.named_parameters() if p.requires_grad
        ]
        encoder = [p for n, p in trainable if n.startswith("encoder.")]
        head = [p for n, p in trainable if not n.startswith("encoder.")]
        hp = self.hparams
        self.optimizer = hp.head_opt_class(head)
        self.optimizers_dict = {"head_optimizer": self.optimizer}
        self.lr_schedules = {"head_optimizer": make_lr_schedule(hp, hp.lr_head)}
        if encoder:
            self.optimizers_dict["encoder_optimizer"] = hp.encoder_opt_class(
                encoder
            )
            self.lr_schedules["encoder_optimizer"] = make_lr_schedule(
                hp, hp.lr_encoder
            )
        for name, optimizer in self.optimizers_dict.items():
            self.checkpointer.add_recoverable(name, optimizer)
        logger.info(
            "Optimizers: %s; %d trainable parameters, %d frozen",
            ", ".join(self.optimizers_dict),
            sum(p.numel() for p in encoder + head),
            sum(p.numel() for p in model.parameters() if not p.requires_grad),
        )

    def freeze_optimizers(self, optimizers):
        """The encoder's optimizer sits out the first freeze_encoder_steps.

        A warm start as wav2vec 2.0's finetuning (its "freeze finetune
        updates"): the randomly initialised head first learns to read the
        pretrained representation, so that its early, large gradients do
        not rewrite the encoder. The encoder still runs in training mode
        and its gradients are computed (and dropped, see
        ``S3LBrain.optimizers_step``); switching ``requires_grad`` instead
        would change the parameters DDP reduces mid-run.

        Arguments
        ---------
        optimizers : dict
            Name -> optimizer.

        Returns
        -------
        dict
            The optimizers that step now.
        """
        if self.optimizer_step < self.hparams.freeze_encoder_steps:
            optimizers = {
                name: optimizer
                for name, optimizer in optimizers.items()
                if name != "encoder_optimizer"
            }
        return optimizers

    def on_fit_batch_start(self, batch, should_step):
        """Sets the lr of the coming optimizer step (tri-stage schedule).

        The lr is a function of ``optimizer_step`` alone, so it is right
        after a resume and only optimizer steps (not micro-batches) count.
        """
        if should_step:
            for name, optimizer in self.optimizers_dict.items():
                self.lr_schedules[name](optimizer, self.optimizer_step)

    def on_stage_start(self, stage, epoch=None):
        """Fresh loss sums; error-rate trackers for validation and test."""
        super().on_stage_start(stage, epoch)
        self.stage_loss_sum = torch.zeros((), device=self.device)
        self.stage_batches = 0
        if stage != sb.Stage.TRAIN:
            self.wer_metric = self.hparams.error_rate_computer()
            self.cer_metric = self.hparams.cer_computer()
            self.beam_metric = self.hparams.error_rate_computer()
            self.emissions = []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs; checkpoints on valid WER; writes the test WER files."""
        super().on_stage_end(stage, stage_loss, epoch)
        if stage != sb.Stage.TRAIN and self.stage_batches:
            # The mean over the batches evaluated; SpeechBrain's running
            # average would count skipped (all-unusable) batches too.
            stage_loss = float(self.stage_loss_sum) / self.stage_batches
        stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
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
        if self.decoder is not None:
            self.decode_emissions()
            stats["WER_beam"] = self.beam_metric.summarize("error_rate")
        self.hparams.train_logger.log_stats(
            stats_meta={"test split": split}, test_stats=stats
        )
        if if_main_process():
            metrics = {f"wer_{split}.txt": self.wer_metric}
            if self.decoder is not None:
                metrics[f"wer_beam_{split}.txt"] = self.beam_metric
            for name, metric in metrics.items():
                path = os.path.join(self.hparams.output_folder, name)
                with open(path, "w", encoding="utf-8") as out:
                    metric.write_stats(out)
        self.test_results[split] = stats


def make_lr_schedule(hp, lr):
    """Tri-stage schedule peaking at ``lr`` over ``total_steps``."""
    total = int(hp.total_steps)
    return hp.lr_schedule(
        lr=lr,
        warmup_steps=max(1, round(hp.warmup_ratio * total)),
        hold_steps=max(1, round(hp.hold_ratio * total)),
        decay_steps=max(1, round(hp.decay_ratio * total)),
        total_steps=total,
    )


def load_pretrained_encoder(hparams):
    """Loads ``pretrained_path``'s encoder; a bad file is a ConfigError."""
    path = hparams["pretrained_path"]
    try:
        run_on_main(hparams["pretrainer"].collect_files)
        hparams["pretrainer"].load_collected()
    except (OSError, ValueError) as error:
        # A missing or damaged encoder.ckpt, or another architecture's.
        raise ConfigError(f"--pretrained_path={path}: {error}") from error
    logger.info("Encoder initialised from %s", path)


def build_decoder(hparams, vocab, train):
    """The test-time lexicon + n-gram beam search, or None.

    With ``lm_path`` and ``lexicon_path`` unset, the lexicon and an
    ``lm_order``-gram are built from the training transcripts (main
    process) into ``<output_folder>/lm``.
    """
    if not hparams["beam_search"]:
        return None
    if hparams["vocab"] != "char":
        logger.warning(
            "beam_search needs the character vocabulary (the lexicon spells "
            "words in characters): test decoding is greedy only"
        )
        return None
    files = {
        "lexicon_path": hparams["lexicon_path"],
        "lm_path": hparams["lm_path"],
    }
    if not files["lexicon_path"]:
        folder = os.path.join(hparams["output_folder"], "lm")
        transcripts = [row["wrd"] for row in train.data.values()]
        run_on_main(
            build_lexicon_lm,
            args=[transcripts, folder],
            kwargs={"order": hparams["lm_order"]},
        )
        files = lexicon_lm_files(folder, hparams["lm_order"])
    return hparams["decoder"](tokens=vocab.tokens, **files)


def build_vocabulary(hparams):
    """Characters, or SentencePiece pieces trained on ``train.csv``."""
    if hparams["vocab"] == "char":
        return CharVocabulary(unknown=hparams["unknown_chars"])
    return SubwordVocabulary(hparams["tokenizer"]())


def filter_dataset(dataset, hparams, vocab, name, max_duration=None):
    """Drops utterances the model cannot use; logs how many.

    Too short for one encoder frame (always), longer than
    ``max_duration`` (if given), and, for training, a CTC target longer
    than the output frames.
    """
    encoder, head = hparams["encoder"], hparams["head"]
    min_seconds = encoder.min_input_seconds

    def ctc_frames(duration):
        samples = torch.tensor([round(duration * hparams["sample_rate"])])
        frames = encoder.output_lengths(encoder.features.num_frames(samples))
        return int(head.output_lengths(frames)[0])

    dropped = {"too short": 0, "too long": 0, "target too long": 0}
    keep = set()
    for utt_id, row in dataset.data.items():
        duration = float(row["duration"])
        if duration < min_seconds:
            dropped["too short"] += 1
        elif max_duration is not None and duration > max_duration:
            dropped["too long"] += 1
        elif max_duration is not None and not ctc_feasible(
            vocab.encode(row["wrd"]), ctc_frames(duration)
        ):
            dropped["target too long"] += 1
        else:
            keep.add(utt_id)
    if sum(dropped.values()):
        logger.warning(
            "%s: %d of %d utterances dropped (%s; shorter than %.2f s gives "
            "no encoder frame)",
            name,
            sum(dropped.values()),
            len(dataset.data),
            ", ".join(f"{k}: {v}" for k, v in dropped.items() if v),
            min_seconds,
        )
    return dataset.filtered_sorted(
        key_test={"id": lambda utt_id: utt_id in keep}, sort_key="duration"
    )


def dataio_prepare(hparams, vocab, test_splits, data_folder=None):
    """Train, valid and test datasets, and the train sampler.

    ``$data_root`` in a CSV stands for ``data_folder``.

    A file may not be what the CSV says (replaced, damaged): the audio
    pipeline checks its real duration too, and a file too short for one
    encoder frame (or, in training, longer than ``max_duration``) is
    skipped instead of stopping the run.
    """

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("tokens")
    def text_pipeline(wrd):
        return torch.LongTensor(vocab.encode(wrd))

    def load(split, max_duration=None):
        dataset = load_csv_dataset(
            os.path.join(hparams["csv_folder"], f"{split}.csv"), data_folder
        )
        dataset = filter_dataset(dataset, hparams, vocab, split, max_duration)
        audio = make_audio_pipeline(
            hparams["sample_rate"],
            max_seconds=max_duration,
            min_seconds=hparams["encoder"].min_input_seconds,
        )
        sb.dataio.dataset.add_dynamic_item([dataset], audio)
        sb.dataio.dataset.add_dynamic_item([dataset], text_pipeline)
        sb.dataio.dataset.set_output_keys(
            [dataset], ["id", "sig", "audio_error", "wrd", "tokens"]
        )
        return dataset

    train = load("train", hparams["max_duration"])
    valid = load(hparams["valid_split"])
    tests = {split: load(split) for split in test_splits}
    return train, valid, tests, make_train_sampler(hparams, train)


def model_card(brain, hparams, data_folder):
    """The inference folder's README: data, steps and measured error rates."""
    lines = [
        "# S3L CTC speech recognizer",
        "",
        "An S3LSpeech encoder finetuned with CTC by "
        "`recipes/LibriSpeech/finetune.py`. Load it with SpeechBrain:",
        "",
        "```python",
        "from speechbrain.inference.ASR import EncoderASR",
        "",
        'asr = EncoderASR.from_hparams(source="<this folder or repo id>",',
        '                              savedir="pretrained_models/s3l_asr")',
        'asr.transcribe_file("utterance.wav")',
        "```",
        "",
        "Decoding: "
        + (
            "the lexicon + n-gram beam search the recipe tested with "
            f"(LM weight {brain.decoder.lm_weight}, word score "
            f"{brain.decoder.word_score}); "
            '`overrides={"beam_search": None}` decodes greedily.'
            if brain.decoder is not None
            else "greedy CTC."
        ),
        "",
        f"- Pretrained encoder: `{hparams['pretrained_path']}`",
        f"- Training data: `{data_folder}` "
        f"({', '.join(hparams['train_splits'])}); validation "
        f"{hparams['valid_split']}",
        f"- Vocabulary: {hparams['vocab']} ({len(brain.vocab)} CTC outputs)",
        f"- Optimizer steps: {brain.optimizer_step}; checkpoint selected on "
        f"validation {hparams['best_key']}",
        "",
        "| split | WER greedy | CER greedy | WER beam search |",
        "|---|---|---|---|",
    ]
    for split, stats in brain.test_results.items():
        beam = stats.get("WER_beam")
        lines.append(
            f"| {split} | {stats['WER']:.2f} % | {stats['CER']:.2f} % | "
            + (f"{beam:.2f} % |" if beam is not None else "- |")
        )
    return "\n".join(lines) + "\n"


def write_inference_folder(brain, hparams, data_folder):
    """Writes ``<output_folder>/inference`` for SpeechBrain's ``EncoderASR``.

    With the weights of the checkpoint the test sets were decoded with
    (the best on validation ``best_key``) and the tuned decoder.
    """
    # A copy: the Brain keeps its state (the last step's, if no test set
    # loaded the best checkpoint).
    model = copy.deepcopy(unwrap_module(brain.modules.model))
    if not isinstance(model, S3LCTC) or not isinstance(
        model.encoder, S3LEncoder
    ):
        # E.g. the CRDNN baseline or the log-mel probe floor: the folder's
        # YAML declares an S3LCTC on an S3LEncoder.
        logger.info(
            "No inference folder: written for S3L models only, not %s",
            type(getattr(model, "encoder", model)).__name__,
        )
        return
    best = brain.checkpointer.find_checkpoint(min_key=hparams["best_key"])
    if best is not None:
        load_state_dict_checked(model, best.paramfiles["model"])
    folder = os.path.join(hparams["output_folder"], "inference")
    write_asr_folder(
        folder,
        model,
        brain.vocab,
        beam_search=brain.decoder,
        card=model_card(brain, hparams, data_folder),
    )
    logger.info(
        "Inference folder written to %s (speechbrain.inference.ASR."
        "EncoderASR.from_hparams(source=%r); s3l-transcribe %s AUDIO...)",
        folder,
        folder,
        folder,
    )


def main(argv):
    """Runs the recipe; configuration mistakes raise ``ConfigError``.

    Arguments
    ---------
    argv : list of str
        Command-line arguments (YAML file, then options).

    Returns
    -------
    S3LFinetune
        The trained (and tested) Brain.
    """
    hparams_file, run_opts, overrides, restart = parse_arguments(argv)
    hparams = start_experiment(hparams_file, run_opts, overrides, restart)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    data_folder = resolve_data_folder(hparams)
    train_splits, valid_split = hparams["train_splits"], hparams["valid_split"]
    labelled_set = hparams.get("labelled_set")
    if labelled_set:
        # Libri-light's limited-supervision sets replace train_splits.
        if labelled_set not in LIBRILIGHT_SETS:
            raise ConfigError(
                f"labelled_set {labelled_set!r} is not a Libri-light set: "
                f"choose one of {list(LIBRILIGHT_SETS)}, or null"
            )
        train_splits = librilight_splits(
            labelled_set, resolve_librilight_folder(hparams, data_folder)
        )
        logger.info(
            "Finetuning on Libri-light's %s set: %s",
            labelled_set,
            ", ".join(train_splits),
        )
    test_splits = present_splits(hparams, data_folder, hparams["test_splits"])
    prepare_csvs(
        prepare_librispeech,
        data_folder,
        train_splits + [valid_split] + test_splits,
        save_folder=hparams["csv_folder"],
        tr_splits=train_splits,
        dev_splits=[valid_split],
        te_splits=[s for s in test_splits if s != valid_split],
        merge_lst=train_splits,
        merge_name="train.csv",
        skip_prep=hparams["skip_prep"],
    )
    vocab = build_vocabulary(hparams)
    check_ctc_config(hparams, len(vocab))
    train, valid, tests, sampler = dataio_prepare(
        hparams, vocab, test_splits, data_folder
    )

    if hparams["pretrained_path"]:
        load_pretrained_encoder(hparams)
    else:
        logger.warning(
            "No pretrained_path: the encoder is trained FROM SCRATCH "
            "(random initialisation). Pass --pretrained_path=<pretraining "
            "output folder> to finetune a pretrained S3L encoder."
        )
        if hparams.get("freeze_encoder"):
            logger.warning("freeze_encoder without pretrained_path: random")

    brain = S3LFinetune(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.vocab = vocab
    brain.decoder = build_decoder(hparams, vocab, train)
    brain.test_results = {}
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
    if brain.decoder is not None and hparams["tune_decoder"]:
        # The validation split first: the decoder's weights are tuned on it.
        tests = {valid_split: valid, **tests}
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
        write_inference_folder(brain, hparams, data_folder)
        for split, stats in brain.test_results.items():
            line = f"{split} WER: {stats['WER']:.2f}% (greedy"
            if "WER_beam" in stats:
                line = (
                    f"{split} WER: {stats['WER_beam']:.2f}% (lexicon + "
                    f"n-gram beam search; greedy {stats['WER']:.2f}%"
                )
            line += f"; greedy CER {stats['CER']:.2f}%)"
            logger.info(line)
            print(line)
    return brain


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
