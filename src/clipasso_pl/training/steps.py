"""The data of a run: one dummy item per optimisation step (the target lives in the module)."""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset


class StepDataset(Dataset):
    """``steps`` dummy items: one optimisation step each (the target lives in the module)."""

    def __init__(self, steps: int):
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> int:
        return index


def step_loader(steps: int) -> DataLoader:
    """The loader ``trainer.fit`` runs: ``steps`` items, unbatched, in order."""
    return DataLoader(StepDataset(steps), batch_size=None, shuffle=False)
