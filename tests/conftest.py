"""Makes the recipe-local modules (``librispeech_prepare``) importable."""

import os
import sys

sys.path.insert(
    0,
    os.path.join(
        os.path.dirname(__file__), os.pardir, "recipes", "LibriSpeech"
    ),
)
