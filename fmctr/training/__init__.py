"""Training: configuration, the loop and its parts, and data-parallel replicas."""
