"""Privacy at the cut, measured: distance correlation, inversion by a curious server, the attack command."""

from lightning_dsl.privacy.distance import distance_correlation

__all__ = ["distance_correlation"]
