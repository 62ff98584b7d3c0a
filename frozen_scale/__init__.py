"""frozen_scale: visual prefixes for frozen language models, trained at cluster scale."""

__version__ = "0.1.0"
