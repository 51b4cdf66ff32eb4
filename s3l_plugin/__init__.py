"""S3L: S3LSpeech self-supervised pretraining as a SpeechBrain plugin.

The pieces a recipe or another project needs are importable from here::

    from s3l_plugin import S3LEncoder, load_encoder, extract_features

``build_encoder`` builds an encoder from a pretrained folder or a named size
(``"base"``: the paper's, ``"tiny"``: the CPU demo's; the factories
``s3l_base`` and ``s3l_tiny`` build them directly).
"""

from s3l_plugin.augment import NoiseAugment, RandomShift, SpecAugment
from s3l_plugin.ctc import S3LCTC, CTCHead, LinearCTCHead, WeightedLayerSum
from s3l_plugin.encoder import (
    EncoderArchitecture,
    EncoderOutput,
    S3LEncoder,
    s3l_base,
    s3l_tiny,
)
from s3l_plugin.features import MelFeatures
from s3l_plugin.loss import ContrastiveLoss
from s3l_plugin.predictor import Predictor
from s3l_plugin.pretrained import (
    build_encoder,
    extract_features,
    extract_features_from_file,
    load_encoder,
    save_encoder,
)
from s3l_plugin.pretraining import S3LStudent, s3l_forward
from s3l_plugin.runtime import set_runtime_options
from s3l_plugin.teacher import EMATeacher

__version__ = "0.1.0"

__all__ = [
    "CTCHead",
    "ContrastiveLoss",
    "LinearCTCHead",
    "S3LCTC",
    "EMATeacher",
    "EncoderArchitecture",
    "EncoderOutput",
    "MelFeatures",
    "NoiseAugment",
    "Predictor",
    "RandomShift",
    "S3LEncoder",
    "S3LStudent",
    "SpecAugment",
    "WeightedLayerSum",
    "build_encoder",
    "extract_features",
    "extract_features_from_file",
    "load_encoder",
    "s3l_base",
    "s3l_forward",
    "s3l_tiny",
    "save_encoder",
    "set_runtime_options",
]
