"""Many clients with their own (non-IID) data and one server, from your own dataset, without the CLI.

Partition a labelled dataset over clients, give each client a loader, and train SplitFed (each client
its own half and head, FedAvg every epoch) or clients in turn, in dsl or sl:

python examples/many_clients.py
python examples/many_clients.py --clients 10 --alpha 0.1 --schedule sequential --mode sl
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import lightning as L
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, Subset, TensorDataset

from lightning_dsl import DecoupledSplitModule
from lightning_dsl.callbacks import CommunicationMonitor
from lightning_dsl.data import client_loaders, partition_indices
from lightning_dsl.models import small_cnn


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller: less IID)")
    parser.add_argument("--schedule", default="parallel", choices=["parallel", "sequential"])
    parser.add_argument("--mode", default="dsl", choices=["dsl", "sl"])
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)

    L.seed_everything(0)
    digits = load_digits()  # any labelled dataset: here scikit-learn's 8x8 digits, 1,797 images
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    train, test = TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:], y[1500:])

    shards = partition_indices(y[:1500], args.clients, scheme="dirichlet", alpha=args.alpha, seed=0)
    generator = torch.Generator().manual_seed(0)
    loaders = [
        DataLoader(Subset(train, idx.tolist()), batch_size=32, shuffle=True, generator=generator) for idx in shards
    ]

    model = DecoupledSplitModule(
        network=small_cnn(in_channels=1, num_classes=10),
        split_index=2,
        mode=args.mode,
        num_classes=10,
        input_shape=(1, 8, 8),
        num_clients=args.clients,
        client_schedule=args.schedule,
        client_optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        server_optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
    )
    monitor = CommunicationMonitor()
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[monitor],
    )
    trainer.fit(model, client_loaders(loaders, args.schedule), DataLoader(test, batch_size=256))
    results = {
        "shard_sizes": [len(idx) for idx in shards],
        "val/acc": float(trainer.callback_metrics["val/acc"]),
        "val/aux_acc": float(trainer.callback_metrics["val/aux_acc"]),
        "sync_bytes_up": monitor.sync_bytes_up,
        "client_state_bytes": monitor.client_state_bytes,
    }
    print(
        f"{args.clients} clients ({args.schedule}, Dir({args.alpha})), {args.mode}: shards {results['shard_sizes']},"
        f" val/acc={results['val/acc']:.3f}, client + head alone {results['val/aux_acc']:.3f},"
        f" models sent up {results['sync_bytes_up'] / 2**20:.2f} MiB"
    )
    return results


if __name__ == "__main__":
    main()
