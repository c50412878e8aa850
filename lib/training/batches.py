"""Random batches drawn by index from the device-resident uint8 dataset."""

from __future__ import annotations

import torch

from lib.config import ConfigError
from lib.core.device import Engine
from lib.data import ImageData


class Batches:
    """Random batches drawn by index from the device-resident uint8 dataset.

    Each epoch is a fresh permutation; its state (permutation, position, RNG)
    goes into checkpoints so a resumed run draws exactly the batches it would have.
    """

    def __init__(self, data: ImageData, batch_size: int, engine: Engine, seed: int):
        if batch_size > len(data):
            raise ConfigError(f"trainer.batch_size={batch_size} is larger than the "
                              f"{data.name} dataset ({len(data)} images)")
        self.images = data.images.to(engine.device)  # (N, C, H, W) uint8, resident
        self.labels = data.labels.to(engine.device) if data.labels is not None else None
        self.batch_size = batch_size
        self.engine = engine
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(len(data), generator=self.gen)
        self.pos = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pos + self.batch_size > len(self.perm):
            self.perm = torch.randperm(len(self.perm), generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size].to(self.images.device)
        self.pos += self.batch_size
        x = self.engine.batch(self.images[idx])
        y = self.labels[idx] if self.labels is not None else None
        return x, y

    def state_dict(self) -> dict:
        return {"perm": self.perm, "pos": self.pos, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.perm, self.pos = state["perm"], state["pos"]
        self.gen.set_state(state["gen"])
