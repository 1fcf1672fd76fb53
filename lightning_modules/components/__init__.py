"""Reusable model parts: preprocessing, tokenizers (and later QScaler, token bank, pruning)."""
