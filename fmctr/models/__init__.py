"""Models: weights, the fused CPU kernels, the torch modules and the model file."""
