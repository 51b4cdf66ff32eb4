"""S3L: S3LSpeech self-supervised pretraining as a SpeechBrain plugin."""

__version__ = "0.1.0"
