"""A run folder and every path in it, spelled here once.

    outputs/<run>/
      config.json       the run's config (rewritten when a resume changes trainer fields)
      history.jsonl     one JSON object per logged step or event
      summary.json      written at the end: steps, time, device, sampling cost
      metrics.json      scores of `python -m lib evaluate`
      metrics.png       evaluation curves
      .wandb_id         the wandb run a resume continues
      checkpoints/      last.pt, best.pt (lowest FID), step_<NNNNNNN>.pt (periodic)
      samples/          <prefix>_<NNNNNNN>.png snapshots (step_, and the CVAE's recon_)
      evolution.gif, final_grid.png and a family's own media (MEDIA)

Training writes it, notebooks and the report read it; nothing else builds these paths.
"""

from __future__ import annotations

from pathlib import Path

from lib.viz import snapshot_frames, step_of

MEDIA = ("evolution.gif", "reconstruction.gif", "generation.gif", "denoising.gif",
         "final_grid.png")


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def name(self) -> str:
        return self.root.name

    # -- files ---------------------------------------------------------------

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def history(self) -> Path:
        return self.root / "history.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def metrics_figure(self) -> Path:
        return self.root / "metrics.png"

    @property
    def wandb_id(self) -> Path:
        return self.root / ".wandb_id"

    @property
    def sampling_cache(self) -> Path:
        """The report's sampling-time measurement, kept per checkpoint step."""
        return self.root / "sampling.json"

    def media(self, name: str) -> Path:
        if name not in MEDIA:
            raise ValueError(f"{name!r} is not a run's media file; those are {', '.join(MEDIA)}")
        return self.root / name

    # -- checkpoints ---------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoint("last.pt")

    @property
    def best(self) -> Path:
        return self.checkpoint("best.pt")

    def checkpoint(self, name: str) -> Path:
        """checkpoints/<name>: last.pt, best.pt or a periodic step_<NNNNNNN>.pt."""
        return self.checkpoints / name

    def periodic(self, step: int) -> Path:
        return self.checkpoint(f"step_{step:07d}.pt")

    def periodic_checkpoints(self) -> list[Path]:
        """The periodic checkpoints, oldest first."""
        return sorted(self.checkpoints.glob("step_*.pt"), key=step_of)

    def has_checkpoint(self) -> bool:
        return self.last.is_file()

    def resume_files(self) -> list[Path]:
        """What a resumed copy of the run starts from (besides its samples)."""
        return [self.config, self.history, self.wandb_id, self.last]

    # -- snapshots -----------------------------------------------------------

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def snapshot(self, prefix: str, step: int) -> Path:
        return self.samples / f"{prefix}_{step:07d}.png"

    def snapshots(self, prefix: str = "step") -> list[Path]:
        """The snapshots of one kind (`step`, `recon`), ordered by step."""
        return snapshot_frames(self.samples, f"{prefix}_")
