"""Privacy at the cut: what a curious or a malicious server learns from what crosses it (torch-only)."""

from lightning_dsl.privacy.fsha import FeatureSpaceHijacking, default_networks

__all__ = ["FeatureSpaceHijacking", "default_networks"]
