"""Privacy at the cut, measured and defended: distance correlation, the defenses and their budgets."""

from lightning_dsl.privacy.accounting import activation_epsilon, label_epsilon
from lightning_dsl.privacy.defenses import CutMechanism, CutPrivacy, NoPeek, clip_per_sample, randomized_response
from lightning_dsl.privacy.distance import distance_correlation

__all__ = [
    "CutMechanism",
    "CutPrivacy",
    "NoPeek",
    "activation_epsilon",
    "clip_per_sample",
    "distance_correlation",
    "label_epsilon",
    "randomized_response",
]
