"""Privacy at the cut: what a curious or a malicious server learns from what crosses it (torch-only)."""

from lightning_dsl.privacy.distance import distance_correlation
from lightning_dsl.privacy.fsha import FeatureSpaceHijacking, default_networks
from lightning_dsl.privacy.inversion import InversionDecoder, InversionReport, invert_images, save_grid
from lightning_dsl.privacy.tokens import TokenReport, probe_tokens

__all__ = [
    "FeatureSpaceHijacking",
    "InversionDecoder",
    "InversionReport",
    "TokenReport",
    "default_networks",
    "distance_correlation",
    "invert_images",
    "probe_tokens",
    "save_grid",
]
