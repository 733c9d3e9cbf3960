"""grainvl: multi-grained vision-language models and efficient language models."""

__version__ = "0.1.0"
