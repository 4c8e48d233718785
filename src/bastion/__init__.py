"""Bastion: a governed gateway for generative-AI traffic."""

__version__ = "0.1.0"
