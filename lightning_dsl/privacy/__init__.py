"""Privacy at the cut, measured: distance correlation, inversion by a curious server, the attack command."""

from lightning_dsl.privacy.distance import distance_correlation
from lightning_dsl.privacy.inversion import InversionDecoder, InversionReport, invert_images, save_grid
from lightning_dsl.privacy.tokens import TokenReport, probe_tokens

__all__ = [
    "InversionDecoder",
    "InversionReport",
    "TokenReport",
    "distance_correlation",
    "invert_images",
    "probe_tokens",
    "save_grid",
]
