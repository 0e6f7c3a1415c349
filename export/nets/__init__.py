"""PyTorch modules of the networks the service runs, one file per family.

Each module mirrors the parameter names of its published weights so that a
state dict loads with strict key and shape checks and no renaming.
"""
