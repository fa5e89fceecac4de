"""Sparse autoencoders over denoising time (SAELens): activations per step, training, splicing, features."""
