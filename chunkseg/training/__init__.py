"""Training: patch datasets and augmentation, losses, the training run and its exports.

Everything here imports torch; import the modules you need (``chunkseg.training.train``).
"""
