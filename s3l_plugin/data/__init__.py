"""Data helpers: the synthetic mini LibriSpeech corpus and audio loading."""
