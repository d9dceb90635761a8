"""Lightning callbacks that measure split learning: bytes across the cut, memory per side, throughput, attacks."""

from lightning_dsl.callbacks.communication import CommunicationMonitor
from lightning_dsl.callbacks.hijacking import FeatureSpaceHijackingAttack
from lightning_dsl.callbacks.memory import PeakMemoryMonitor
from lightning_dsl.callbacks.partition import PartitionMonitor
from lightning_dsl.callbacks.summary import RunSummary
from lightning_dsl.callbacks.throughput import SplitThroughputMonitor

__all__ = [
    "CommunicationMonitor",
    "FeatureSpaceHijackingAttack",
    "PartitionMonitor",
    "PeakMemoryMonitor",
    "RunSummary",
    "SplitThroughputMonitor",
]
