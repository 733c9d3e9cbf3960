"""Task modules: a model plus its objectives, returning a dict of ``*_loss`` tensors and metrics."""
