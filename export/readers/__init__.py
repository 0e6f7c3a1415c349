"""Readers that turn published weight files into PyTorch state dicts."""
