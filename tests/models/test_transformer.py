"""The text transformer cut in two, against references written by hand.

* The model: each encoder block equals ``torch.nn.TransformerEncoderLayer`` (pre-norm, GELU) with the same
  weights and the padding as ``src_key_padding_mask``; the output does not depend on the padding.
* Training: a ``DecoupledSplitModule`` on the transformer, fitted by a Trainer on text batches, ends with the
  parameters of plain-torch loops written from the definitions (dsl: the client on the masked-mean auxiliary
  loss alone, the server on the detached hidden states; sl: end-to-end backprop, the head a probe), float64.
* The cut: hidden states and the padding mask cross, the mask counted at one byte per position.
"""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch import Trainer
from torch import Tensor, nn
from torch.nn.functional import cross_entropy
from torch.utils.data import DataLoader

from lightning_dsl import DecoupledSplitModule
from lightning_dsl.core.sequence import MaskedSequence, masked_mean
from lightning_dsl.data.text import TokenizedDataset, collate
from lightning_dsl.models import TextTransformer, create_model

VOCAB, LENGTH, DIM, DEPTH, HEADS = 30, 12, 16, 3, 2
BATCH, BATCHES = 4, 4
CLIENT_SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
SERVER_SGD = {"lr": 0.05, "momentum": 0.5}

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers:UserWarning", "ignore:.*LeafSpec.*", "ignore:.*no `val_dataloader`"
)


def make_network(dropout: float = 0.0) -> TextTransformer:
    torch.manual_seed(0)
    return TextTransformer(VOCAB, LENGTH, num_classes=3, dim=DIM, depth=DEPTH, heads=HEADS, dropout=dropout).double()


def make_batches() -> list[tuple[MaskedSequence, Tensor]]:
    """Sequences of 2..LENGTH tokens, each batch padded to its longest ([CLS] = 2 first)."""
    generator = torch.Generator().manual_seed(1)
    ids = [
        [2, *torch.randint(3, VOCAB, (int(n),), generator=generator).tolist()]
        for n in torch.randint(1, LENGTH, (BATCH * BATCHES,), generator=generator)
    ]
    labels = torch.randint(0, 3, (BATCH * BATCHES,), generator=generator).tolist()
    return list(DataLoader(TokenizedDataset(ids, labels), batch_size=BATCH, collate_fn=collate))


# ---------------------------------------------------------------------------------------------- the model
def test_block_equals_torch_transformer_encoder_layer() -> None:
    network = make_network()
    block = network.blocks[0]
    layer = nn.TransformerEncoderLayer(
        DIM, HEADS, 4 * DIM, dropout=0.0, activation="gelu", batch_first=True, norm_first=True, dtype=torch.float64
    )
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(block.qkv.weight)
        layer.self_attn.in_proj_bias.copy_(block.qkv.bias)
        layer.self_attn.out_proj.weight.copy_(block.proj.weight)
        layer.self_attn.out_proj.bias.copy_(block.proj.bias)
        for ours, theirs in ((block.norm1, layer.norm1), (block.norm2, layer.norm2)):
            theirs.load_state_dict(ours.state_dict())
        layer.linear1.load_state_dict(block.mlp[0].state_dict())
        layer.linear2.load_state_dict(block.mlp[2].state_dict())
    inputs, _ = make_batches()[0]
    h = network.embeddings(inputs)
    expected = layer(h.values, src_key_padding_mask=~h.mask)  # train mode: the reference path, not the fast path
    got = block(h).values
    torch.testing.assert_close(got[h.mask], expected[h.mask])


def test_output_does_not_depend_on_padding() -> None:
    network = make_network().eval()
    inputs, _ = make_batches()[0]
    longer = MaskedSequence(
        torch.cat([inputs.values, torch.zeros(BATCH, 3, dtype=torch.long)], 1),
        torch.cat([inputs.mask, torch.zeros(BATCH, 3, dtype=torch.bool)], 1),
    )
    torch.testing.assert_close(network(longer), network(inputs))


def test_cut_units_and_named_cuts() -> None:
    network = create_model("text_transformer", vocab_size=VOCAB, max_length=LENGTH, depth=6)
    units = network.cut_units()
    assert [type(u).__name__ for u in units] == ["TokenEmbeddings", *["EncoderBlock"] * 6, "ClassifierHead"]
    assert network.named_cuts() == {"shallow": 3, "middle": 4, "deep": 5}
    inputs, _ = make_batches()[0]
    model = DecoupledSplitModule(network, split_index="middle", num_classes=2, input_shape=(LENGTH,))
    assert model.split_index == 4 and len(model.client) == 4 and len(model.server) == 4
    model.eval()
    torch.testing.assert_close(model(inputs), network.eval()(inputs))  # server(client(x)) is the network


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 30, "heads": 4}, "`dim`=30 to be divisible by `heads`=4"),
        ({"depth": 0}, "`depth` to be an int >= 1"),
        ({"pool": "max"}, r"`pool` to be one of \['mean', 'cls'\]"),
        ({"dropout": 1.0}, r"`dropout` to be in \[0, 1\)"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TextTransformer(**kwargs)  # type: ignore[arg-type]


def test_sequence_longer_than_the_positions_is_refused() -> None:
    network = make_network()
    ids = torch.full((1, LENGTH + 1), 5)
    with pytest.raises(ValueError, match=rf"sequences of {LENGTH + 1} tokens, longer than the model's `max_length`=12"):
        network(MaskedSequence(ids, ids > 0))


@pytest.mark.parametrize("split_index", [0, DEPTH + 2])
def test_cut_outside_the_units_is_refused(split_index: int) -> None:
    with pytest.raises(ValueError, match=rf"`split_index` to be in \[1, {DEPTH + 1}\]"):
        DecoupledSplitModule(make_network(), split_index=split_index, num_classes=3)


# ---------------------------------------------------------------------------------------------- training
class Reference:
    """dsl and sl on the cut transformer, written from the definitions in plain torch."""

    def __init__(self, network: TextTransformer, head_linear: nn.Linear, split: int) -> None:
        units = network.cut_units()
        self.client, self.server = nn.Sequential(*units[:split]), nn.Sequential(*units[split:])
        self.linear = head_linear
        self.client_opt = torch.optim.SGD([*self.client.parameters(), *self.linear.parameters()], **CLIENT_SGD)
        self.server_opt = torch.optim.SGD(self.server.parameters(), **SERVER_SGD)

    def head(self, z: MaskedSequence) -> Tensor:
        return self.linear(masked_mean(z.values, z.mask))  # the "linear" head: mean over the real tokens

    def dsl(self, x: MaskedSequence, y: Tensor) -> None:
        self.client_opt.zero_grad()
        z = self.client(x)
        cross_entropy(self.head(z), y).backward()
        self.client_opt.step()
        self.server_opt.zero_grad()
        cross_entropy(self.server(MaskedSequence(z.values.detach(), z.mask)), y).backward()
        self.server_opt.step()

    def sl(self, x: MaskedSequence, y: Tensor) -> None:
        self.client_opt.zero_grad()
        self.server_opt.zero_grad()
        z = self.client(x)
        cross_entropy(self.server(z), y).backward()
        cross_entropy(self.head(MaskedSequence(z.values.detach(), z.mask)), y).backward()
        self.client_opt.step()
        self.server_opt.step()


@pytest.mark.parametrize("mode", ["dsl", "sl"])
@pytest.mark.parametrize("split", [1, 2, DEPTH + 1])
def test_training_matches_the_reference(mode: str, split: int) -> None:
    network = make_network()
    model = DecoupledSplitModule(
        network,
        split_index=split,
        mode=mode,
        num_classes=3,
        input_shape=(LENGTH,),
        client_optimizer=lambda p: torch.optim.SGD(p, **CLIENT_SGD),
        server_optimizer=lambda p: torch.optim.SGD(p, **SERVER_SGD),
    )
    reference_network, reference_linear = copy.deepcopy(network), copy.deepcopy(model.aux_head[1])
    initial = copy.deepcopy(network.state_dict())
    batches = make_batches()
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, DataLoader(batches, batch_size=None))

    reference = Reference(reference_network, reference_linear, split)
    for x, y in batches:
        getattr(reference, mode)(x, y)
    for name, value in reference_network.state_dict().items():
        torch.testing.assert_close(network.state_dict()[name], value, rtol=1e-7, atol=1e-9, msg=name)
        if name != "embeddings.tokens.weight":  # rows of ids never drawn stay, the rest moves
            assert not torch.equal(initial[name], value), f"{name} did not change"
    torch.testing.assert_close(model.aux_head[1].weight, reference_linear.weight, rtol=1e-7, atol=1e-9)

    # What crossed: float64 hidden states of every padded position, the mask (1 byte each), int64 labels.
    positions = sum(x.values.numel() for x, _ in batches)
    assert model.cut.traffic.bytes_up == positions * DIM * 8 + positions + BATCH * BATCHES * 8
    assert model.cut.traffic.bytes_down == (positions * DIM * 8 if mode == "sl" else 0)


def test_network_built_for_other_classes_is_refused_before_training() -> None:
    network = TextTransformer(VOCAB, LENGTH, num_classes=2, dim=DIM, depth=DEPTH, heads=HEADS)
    with pytest.raises(ValueError, match=r"output has 2 classes, but argument `num_classes` is 5"):
        DecoupledSplitModule(network, split_index=2, num_classes=5, input_shape=(LENGTH,))
