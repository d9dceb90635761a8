"""Lightning callbacks that measure split learning: bytes, memory per side, throughput, leakage, attacks."""

from lightning_dsl.callbacks.communication import CommunicationMonitor
from lightning_dsl.callbacks.hijacking import FeatureSpaceHijackingAttack
from lightning_dsl.callbacks.leakage import LeakageMonitor
from lightning_dsl.callbacks.memory import PeakMemoryMonitor
from lightning_dsl.callbacks.partition import PartitionMonitor
from lightning_dsl.callbacks.summary import RunSummary
from lightning_dsl.callbacks.throughput import SplitThroughputMonitor

__all__ = [
    "CommunicationMonitor",
    "FeatureSpaceHijackingAttack",
    "LeakageMonitor",
    "PartitionMonitor",
    "PeakMemoryMonitor",
    "RunSummary",
    "SplitThroughputMonitor",
]
