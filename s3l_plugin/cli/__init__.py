"""Command-line tools installed with the package (console scripts).

- ``s3l-transcribe MODEL_DIR AUDIO...``: transcriptions with a finetuned
  model's inference folder (:mod:`s3l_plugin.cli.transcribe`);
- ``s3l-extract MODEL_DIR AUDIO_DIR OUT_DIR``: per-layer features with a
  pretrained encoder's inference folder (:mod:`s3l_plugin.cli.extract`).

Both load the folder with SpeechBrain's own inference classes, skip an
unusable audio file with one line naming it and exit with status 2 when
no file could be processed.
"""
