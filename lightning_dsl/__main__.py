"""``python -m lightning_dsl fit --config configs/quickstart.yaml`` (and ``python -m lightning_dsl cuts ...``)."""

from lightning_dsl.commands import entrypoint

if __name__ == "__main__":
    entrypoint()
