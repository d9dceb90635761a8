"""Privacy at the cut, measured and defended: what a curious or a malicious server learns, and the defenses."""

from lightning_dsl.privacy.accounting import activation_epsilon, label_epsilon
from lightning_dsl.privacy.defenses import CutMechanism, CutPrivacy, NoPeek, clip_per_sample, randomized_response
from lightning_dsl.privacy.distance import bias_corrected_distance_correlation, distance_correlation
from lightning_dsl.privacy.fsha import FeatureSpaceHijacking, default_networks
from lightning_dsl.privacy.inversion import InversionDecoder, InversionReport, invert_images, save_grid
from lightning_dsl.privacy.tokens import TokenReport, probe_tokens

__all__ = [
    "CutMechanism",
    "CutPrivacy",
    "FeatureSpaceHijacking",
    "InversionDecoder",
    "InversionReport",
    "NoPeek",
    "TokenReport",
    "activation_epsilon",
    "bias_corrected_distance_correlation",
    "clip_per_sample",
    "default_networks",
    "distance_correlation",
    "invert_images",
    "label_epsilon",
    "probe_tokens",
    "randomized_response",
    "save_grid",
]
