"""Where to cut: the costs of every possible cut of a network (``lightning-dsl cuts``).

:func:`plan_cuts` (plain torch) measures each cut unit once on one batch and derives, for every cut,
the client's parameters, both sides' FLOPs, the bytes sent up and down, the peak saved activations of
each side and of the whole step in sl and dsl, and the compute time per side (with an optional link,
the time per batch of sl and of pipelined dsl). :mod:`.report` turns that into a table, the
recommendations and a plot; :mod:`.command` is the ``lightning-dsl cuts`` command.
"""

from lightning_dsl.cuts.costs import CutCosts, LinkSpeed, network_flops, plan_cuts
from lightning_dsl.cuts.report import Recommendations, recommend

__all__ = ["CutCosts", "LinkSpeed", "Recommendations", "network_flops", "plan_cuts", "recommend"]
