#!/usr/bin/env bash
# The demo: installs into ./.venv if needed, generates the synthetic mini
# LibriSpeech corpus (eSpeak NG), pretrains the tiny S3L model on it, then
# finetunes it for CTC speech recognition and prints the dev and test WER
# (lexicon + n-gram beam search, greedy alongside).
# Extra arguments go to both recipes (e.g. --device=cuda:0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PY=.venv/bin/python
$PY recipes/LibriSpeech/pretrain.py hparams/s3l_tiny.yaml "$@"
$PY recipes/LibriSpeech/finetune.py hparams/finetune_ctc_tiny.yaml \
    --pretrained_path=results/s3l_tiny/1986 "$@"
