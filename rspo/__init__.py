"""rspo: regularized self-play preference optimization for language models.

Layers (each depends only on those above it in this list):
``objectives`` (pure torch losses and regularizers) -> ``game`` (exact tabular games)
-> ``judges`` -> ``generation`` / ``training`` / ``evaluation`` -> ``selfplay`` -> ``cli``.
"""

__version__ = "0.1.0"
