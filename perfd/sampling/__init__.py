"""Continuous sampling of a live target's Python stacks."""

from perfd.sampling.sampler import Sampler

__all__ = ["Sampler"]
