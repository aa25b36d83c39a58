"""Read, validate, normalise, expand, split and write the KoChatGPT data as Arrow."""

__version__ = "0.1.0"
