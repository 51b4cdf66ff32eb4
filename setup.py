"""S3L: sustainable self-supervised speech representations for SpeechBrain."""

from setuptools import find_packages, setup

setup(
    name="s3l_plugin",
    version="0.1.0",
    description=(
        "S3LSpeech teacher-student self-supervised pretraining "
        "as a SpeechBrain plugin"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["s3l_plugin", "s3l_plugin.*"]),
    package_data={"s3l_plugin.data": ["words.txt"]},
    install_requires=[
        # From 2.6 on, torch.load (SpeechBrain's checkpoint loads included)
        # reads tensors and plain data only: a checkpoint cannot run code.
        "torch>=2.6",
        "torchaudio>=2.6",
        "speechbrain>=1.1.0,<1.2",
        "hyperpyyaml>=1.2",
        "sentencepiece>=0.1.99",
        "tqdm>=4.60",
        "soundfile>=0.12.1",
        "numpy>=1.23",
        "espeakng-loader>=0.2.4",
        # KenLM and the lexicon decoder behind torchaudio's ctc_decoder.
        "flashlight-text>=0.0.7",
    ],
    entry_points={
        "console_scripts": [
            "s3l-transcribe=s3l_plugin.cli.transcribe:main",
            "s3l-extract=s3l_plugin.cli.extract:main",
        ],
    },
    extras_require={
        # flash-attn builds only against CUDA; CPU machines use torch SDPA.
        "flash": ["flash-attn>=2.5"],
        "dev": ["pytest>=7.4", "ruff>=0.5", "matplotlib>=3.5"],
        "experiments": ["matplotlib>=3.5"],
        "lm": ["kenlm"],
    },
)
