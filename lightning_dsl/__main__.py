"""``python -m lightning_dsl fit --config configs/quickstart.yaml``."""

from lightning_dsl.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
