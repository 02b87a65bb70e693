"""camegrad-jax: multi-task gradient methods (CAME-Grad first) as optax transformations."""
