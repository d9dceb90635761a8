"""The torch-only core: cutting networks, auxiliary heads, the cut seam, codecs and the training step."""

from lightning_dsl.core.codecs import (
    CastCodec,
    Codec,
    IdentityCodec,
    Int8Codec,
    Payload,
    available_codecs,
    check_codec_dtype,
    get_codec,
)
from lightning_dsl.core.cut import ClientTransform, Cut, CutTap, Parcel, Traffic
from lightning_dsl.core.cut_tensors import CutTensors
from lightning_dsl.core.heads import build_aux_head, check_aux_head
from lightning_dsl.core.split import (
    Cuttable,
    SplitNetwork,
    check_nothing_shared,
    check_split_matches,
    cut_units,
    graph_points,
    named_cuts,
    resolve_split_index,
    split_network,
)
from lightning_dsl.core.step import StepOutput, scale_grad, split_step

__all__ = [
    "CastCodec",
    "ClientTransform",
    "Codec",
    "Cut",
    "CutTap",
    "CutTensors",
    "Cuttable",
    "IdentityCodec",
    "Int8Codec",
    "Parcel",
    "Payload",
    "SplitNetwork",
    "StepOutput",
    "Traffic",
    "available_codecs",
    "build_aux_head",
    "check_aux_head",
    "check_codec_dtype",
    "check_nothing_shared",
    "check_split_matches",
    "cut_units",
    "get_codec",
    "graph_points",
    "named_cuts",
    "resolve_split_index",
    "scale_grad",
    "split_network",
    "split_step",
]
