"""S3L: S3LSpeech self-supervised pretraining as a SpeechBrain plugin.

The pieces a recipe or another project needs are importable from here::

    from s3l_plugin import S3LEncoder, load_encoder, extract_features
"""

from s3l_plugin.augment import NoiseAugment, RandomShift, SpecAugment
from s3l_plugin.ctc import CTCHead, WeightedLayerSum
from s3l_plugin.encoder import EncoderOutput, S3LEncoder
from s3l_plugin.features import MelFeatures
from s3l_plugin.loss import ContrastiveLoss
from s3l_plugin.predictor import Predictor
from s3l_plugin.pretrained import (
    extract_features,
    extract_features_from_file,
    load_encoder,
    save_encoder,
)
from s3l_plugin.pretraining import S3LStudent, s3l_forward
from s3l_plugin.teacher import EMATeacher

__version__ = "0.1.0"

__all__ = [
    "CTCHead",
    "ContrastiveLoss",
    "EMATeacher",
    "EncoderOutput",
    "MelFeatures",
    "NoiseAugment",
    "Predictor",
    "RandomShift",
    "S3LEncoder",
    "S3LStudent",
    "SpecAugment",
    "WeightedLayerSum",
    "extract_features",
    "extract_features_from_file",
    "load_encoder",
    "s3l_forward",
    "save_encoder",
]
