"""Quality per compute on real data: models trained for the same wall-clock budget, scored
by Inception FID next to the FID of real images against real images.

    python benchmarks/quality.py --data /path/to/cats --minutes 4 --image-size 32 --n 500

Protocol (printed with the table): the distinct images of the data (exact duplicates
removed) are split once, with a fixed seed, into two disjoint halves A and B. FID's
reference statistics are `n` images of A; "real vs real" scores `n` images of B against
them, each model `n` of its samples (EMA weights where the run keeps them). Every score
therefore shares one reference, one `n` and one feature network, so the real-vs-real row
is the floor a model could reach at this `n`. Models train on all the data (A and B).
A GPU user runs the same script at `--image-size 64` with the presets' own length
(`--minutes 0 --full`).

Ablation (`--ablation`, docs/quality.md): the reference DCGAN and each GAN option alone
(DiffAugment, hinge loss, spectral norm in D with hinge as in SN-GAN, TTUR, EMA of G),
then all of them together, the strong preset's options, and those with DiffAugment; DDPM
with eps- vs v-prediction vs min-SNR weighting; and, for the eps DDPM, DDIM-50 vs
DPM-Solver++ at 10 and 20 steps. Equal compute, not equal wall clock (the machine is
shared): every GAN variant trains the same number of steps at the same batch size, every
DDPM variant likewise, and each row records the process CPU seconds per step it cost. Step
counts are picked from one measured step of each kind so that the training fits
`--train-minutes`, unless given (`--gan-steps`, `--ddpm-steps`). With `--curve K` each run
also keeps K evenly spaced checkpoints, and each is scored: FID and diversity by step, to
see which options keep diversity up as a run goes on.

    python benchmarks/quality.py --data /path/to/cats --ablation --image-size 32 --n 500
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.config import Config, load_config  # noqa: E402
from lib.core import viz  # noqa: E402
from lib.core.device import setup_engine  # noqa: E402
from lib.core.rundir import RunDir  # noqa: E402
from lib.data import (  # noqa: E402
    ImageData,
    distinct_indices,  # noqa: E402
    load_dataset,
    to_uint8,
)
from lib.families import FAMILIES  # noqa: E402
from lib.families.base import fixed_generator, unwrap  # noqa: E402
from lib.metrics import Evaluator, protocol_summary  # noqa: E402
from lib.training.evaluation import batchnorm_stats, rebuild  # noqa: E402
from lib.training.loop import train  # noqa: E402

# model name -> (preset, overrides that size it for a CPU budget at small image sizes)
MODELS = {
    "dcgan": ("configs/dcgan_train.json", []),  # the course preset, unchanged but for size
    "ddpm": ("configs/ddpm_cats.json", [
        "model.args.base_channels=32", "model.args.channel_mults=[1,2,2]",
        "model.args.num_res_blocks=1", "model.args.dropout=0.0", "trainer.batch_size=64",
        "trainer.ema_decay=0.999"]),
}


# the ablation's variants: name -> (model in MODELS, overrides on top of its sizing)
EMA_G = ["trainer.ema_decay=0.999", "trainer.ema_power=0.75"]  # warm-up: ~0.988 at step 350
GAN_OPTIONS = {
    "augment": ["gan.augment=color,translation,cutout"],
    "hinge": ["gan.loss=hinge"],
    # SN-GAN's D: spectral norm with the hinge loss, and no BatchNorm (Miyato et al. 2018)
    "sn": ["gan.loss=hinge", "discriminator.args.spectral_norm=true",
           "discriminator.args.batch_norm=false"],
    "ttur": ["discriminator_optimizer.lr=4e-4", "generator_optimizer.lr=1e-4"],  # Heusel et al.
    "ema": EMA_G,
}
# the preset's EMA warms up for longer (~0.982 at step 800, 0.999 at 100k): of the schedules
# kept side by side in one run (benchmarks/ema_schedules.py), the shortest averaged best here
STRONG = [*GAN_OPTIONS["hinge"], "trainer.ema_decay=0.999", "trainer.ema_power=0.6"]
ABLATION = {
    "dcgan reference": ("dcgan", []),
    "dcgan + DiffAugment (color,translation,cutout)": ("dcgan", GAN_OPTIONS["augment"]),
    "dcgan + hinge loss": ("dcgan", GAN_OPTIONS["hinge"]),
    "dcgan + spectral norm in D (with hinge, no BN in D: SN-GAN)": ("dcgan", GAN_OPTIONS["sn"]),
    "dcgan + TTUR (D lr 4e-4, G lr 1e-4)": ("dcgan", GAN_OPTIONS["ttur"]),
    "dcgan + EMA of G (0.999, warm-up power 0.75)": ("dcgan", GAN_OPTIONS["ema"]),
    "dcgan + all of the above": ("dcgan", [*GAN_OPTIONS["augment"], *GAN_OPTIONS["sn"],
                                          *GAN_OPTIONS["ttur"], *GAN_OPTIONS["ema"]]),
    # what configs/dcgan_cats_strong.json changes from the course preset (a test keeps the
    # two in step), picked from the rows above
    "dcgan + the strong preset's options": ("dcgan", STRONG),
    # the data-efficient GAN recipe's augmentation pays off late, if at all: a --curve run
    # shows whether it keeps FID and diversity improving where the preset alone stalls
    "dcgan + the strong preset's options + DiffAugment": ("dcgan",
                                                          [*STRONG, *GAN_OPTIONS["augment"]]),
    # issue 27: the relativistic losses in place of the preset's hinge, its EMA kept. R3GAN's
    # recipe (RpGAN + R1 + R2) at its CIFAR-10 gamma (32 px), lazy every 16 steps as StyleGAN2
    "dcgan + the strong preset's options, RpGAN + R1/R2 (gamma 0.05, every 16) for hinge": (
        "dcgan", [*STRONG, "gan.loss=rpgan", "gan.r1_gamma=0.05", "gan.r2_gamma=0.05",
                  "gan.penalty_every=16"]),
    "dcgan + the strong preset's options, RaLSGAN for hinge": ("dcgan",
                                                                [*STRONG, "gan.loss=ralsgan"]),
    "ddpm eps-prediction": ("ddpm", []),
    "ddpm v-prediction": ("ddpm", ["model.args.prediction=v"]),
    "ddpm eps + min-SNR weighting (gamma 5)": ("ddpm", ["model.args.loss_weighting=min_snr"]),
}
# DDPM rows are scored with DDIM-50; the training run's own snapshots (first, last, final
# grid, denoising GIF: ~4 x 64 images) use DDIM-10, which would otherwise cost as much as
# hundreds of training steps on a CPU. Each row also saves a grid of the samples it scored.
DDPM_SNAPSHOTS = ["model.args.sampler=ddim", "model.args.sample_steps=10"]
DDPM_SCORED = ("ddim", 50)
SAMPLER_MODEL = "ddpm eps-prediction"  # sampled again with each of these
SAMPLERS = {"DPM-Solver++ 10 steps": ("dpm++2m", 10), "DPM-Solver++ 20 steps": ("dpm++2m", 20)}


def halves(data: ImageData, n: int, seed: int) -> tuple[ImageData, ImageData, dict]:
    """Two disjoint sets of `n` distinct images each, and what was counted on the way."""
    distinct = distinct_indices(data.images)
    if len(distinct) < 2 * n:
        raise SystemExit(f"--n {n} needs {2 * n} distinct images; the data has {len(distinct)}")
    pick = distinct[torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))]
    a, b = (ImageData(data.images[idx], None, None, data.name) for idx in (pick[:n],
                                                                         pick[n:2 * n]))
    counts = {"files": len(data), "distinct": len(distinct),
              "duplicates": len(data) - len(distinct)}
    return a, b, counts


def reference(data_path: Path, image_size: int, n: int, seed: int, data_root: Path,
              weights_path: str | None = None) -> tuple[ImageData, ImageData, ImageData, dict,
                                                        Evaluator]:
    """The protocol's FID reference: the cat faces, their two halves (`halves`) and an
    Inception evaluator on `n` images of half A (features cached under data_root/cache).
    Returns (data, half A, half B, counts, evaluator)."""
    data = load_dataset("cats", image_size, root=data_root, path=str(data_path))
    half_a, half_b, counts = halves(data, n, seed)
    evaluator = Evaluator(half_a, features="inception", num_samples=n,
                          cache_dir=data_root / "cache", weights_path=weights_path,
                          reference="half A of the data", seed=seed)
    return data, half_a, half_b, counts, evaluator


def base_overrides(name: str, args) -> list[str]:
    return [f"name=quality_{name}_{args.image_size}px", "data.dataset=cats",
            f"data.image_size={args.image_size}", f"data.path={json.dumps(str(args.data))}",
            f"data.root={json.dumps(str(args.data_root))}",
            "trainer.eval_samples=0", "wandb.mode=disabled", f"trainer.device={args.device}"]


def train_model(name: str, args, out_root: Path) -> Path:
    preset, sizing = MODELS[name]
    overrides = base_overrides(name, args)
    if not args.full:
        # the budget ends the run: enough epochs that it never ends first
        overrides += [*sizing, "trainer.epochs=1000", "trainer.iterations_per_epoch=100",
                      "trainer.save_period=1000", f"trainer.max_minutes={args.minutes}",
                      "trainer.log_every_step=100"]
    cfg = load_config(ROOT / preset, overrides)
    print(f"[{name}] training {cfg.name} for {args.minutes:g} min ...", flush=True)
    return train(cfg, out_root=out_root, progress=False)


def slug(variant: str) -> str:
    return re.sub(r"[^\w.-]+", "_", variant).strip("_")[:60]


def ablation_config(variant: str, args, steps: int, points: int = 1) -> Config:
    """The variant's config: its model's preset sized as in MODELS, `steps` long, a history
    line, snapshot and checkpoint at each of `points` evenly spaced steps (the last one
    included). The split changes nothing else: the loop's schedules count steps, not epochs."""
    model, options = ABLATION[variant]
    preset, sizing = MODELS[model]
    snapshots = DDPM_SNAPSHOTS if model == "ddpm" else []
    every = steps // points
    overrides = [*base_overrides(slug(variant), args), *sizing, *snapshots, *options,
                 f"trainer.epochs={points}",
                 f"trainer.iterations_per_epoch={every}", "trainer.save_period=1",
                 f"trainer.keep_checkpoints={points}",
                 f"trainer.log_every_step={every}", "trainer.max_minutes=0",
                 f"trainer.seed={train_seed(args)}"]
    if args.batch_size:
        overrides.append(f"trainer.batch_size={args.batch_size}")
    return load_config(ROOT / preset, overrides)


def train_seed(args) -> int:
    """The seed of the training runs: --train-seed, else --seed (which also splits the data
    and draws the scored samples, so a second training seed keeps the same FID reference)."""
    return args.seed if getattr(args, "train_seed", None) is None else args.train_seed


def row_name(variant: str, args) -> str:
    """The variant, marked with its training seed when that is not --seed."""
    seed = train_seed(args)
    return variant if seed == args.seed else f"{variant}, train seed {seed}"


def step_cost(cfg: Config, data: ImageData, repeats: int = 2) -> dict:
    """Process CPU and wall seconds of one training step, after one warm-up step."""
    engine = setup_engine(cfg.trainer)
    family = FAMILIES[cfg.family]
    parts = family.build(cfg, data, engine)
    b = cfg.trainer.batch_size
    x = engine.batch(data.images[torch.randperm(len(data))[:b]])
    family.step(parts, x, None, 1, engine, cfg)  # warm-up: first-call allocations
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(repeats):
        logs = family.step(parts, x, None, i + 2, engine, cfg)
    float(next(iter(logs.values())))  # wait for the device
    return {"cpu_s": (time.process_time() - cpu) / repeats,
            "wall_s": (time.perf_counter() - wall) / repeats}


def train_for_steps(cfg: Config, out_root: Path) -> tuple[Path, float]:
    """The run folder, and the process CPU seconds per step of the whole training call
    (its steps, plus the first and last snapshots, final grid and checkpoints)."""
    cpu = time.process_time()
    run_dir = train(cfg, out_root=out_root, progress=False)
    return run_dir, (time.process_time() - cpu) / cfg.total_steps


@torch.inference_mode()
def score(run_dir: Path, evaluator: Evaluator, n: int, seed: int,
          sampler: tuple[str, int] | None = None) -> dict:
    result, sample_s, rebuilt, scored_grid = _sample_and_score(run_dir, "last.pt", evaluator,
                                                               n, seed, sampler)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {**result, "steps": summary["step"], "train_min": summary["train_seconds"] / 60,
            "images_seen": summary["images_seen"],
            "images_per_sec": summary["images_seen"] / max(summary["train_seconds"], 1e-9),
            "sample_ms_per_image": 1000 * sample_s / n,
            "sampled_with": rebuilt.parts.sampled_with(rebuilt.family.sampling_net),
            **batchnorm_stats(rebuilt.parts, rebuilt.family.sampling_net),
            "grid": str(RunDir(run_dir).media("final_grid.png")),
            "scored_grid": str(scored_grid)}


@torch.inference_mode()
def score_curve(run_dir: Path, evaluator: Evaluator, n: int, seed: int,
                sampler: tuple[str, int] | None, last: dict) -> list[dict]:
    """FID, KID and diversity at every periodic checkpoint of a run, the same n samples of
    the same noise each time; the last point is the row's own score (`last`), not redone."""
    points = []
    for path in RunDir(run_dir).periodic_checkpoints()[:-1]:
        result, *_ = _sample_and_score(run_dir, path.name, evaluator, n, seed, sampler)
        points.append({"step": viz.step_of(path), **_curve_point(result)})
        print(f"    step {points[-1]['step']}: FID {result['fid']:.1f}, diversity "
              f"{result['diversity']:.2f}", flush=True)
    return [*points, {"step": last["steps"], **_curve_point(last)}]


def _curve_point(result: dict) -> dict:
    return {k: result[k] for k in ("fid", "fid_low", "fid_high", "kid", "kid_std", "diversity")
            if k in result}


def _sample_and_score(run_dir: Path, checkpoint: str, evaluator: Evaluator, n: int, seed: int,
                      sampler: tuple[str, int] | None):
    """n samples of one checkpoint from fixed noise, a grid of them saved beside the run, and
    their scores: (scores, sampling seconds, the rebuilt run, the grid's path)."""
    rebuilt = rebuild(run_dir, checkpoint)
    if sampler is not None:  # the DDPM's default sampler for this scoring: (name, steps)
        for net in (rebuilt.parts.sampling_weights("model"), rebuilt.parts.nets["model"]):
            unwrap(net).sampler, unwrap(net).sample_steps = sampler
    t0 = time.perf_counter()
    fake = to_uint8(rebuilt.family.sample(rebuilt.parts, n, None, fixed_generator(seed)))
    sample_s = time.perf_counter() - t0
    at = "" if checkpoint == "last.pt" else f"_step_{rebuilt.step:07d}"
    scored_grid = Path(run_dir) / (f"scored_{sampler[0]}_{sampler[1]}{at}.png" if sampler
                                   else f"scored{at}.png")
    viz.save_png(viz.make_grid(fake[:64], nrow=8), scored_grid,
                 scale=max(1, 512 // (8 * fake.shape[-1])))
    return evaluator.evaluate(fake), sample_s, rebuilt, scored_grid


def table(rows: dict[str, dict]) -> str:
    return _markdown(rows, "model", [
        ("steps", lambda r: str(r.get("steps", "-"))),
        ("train min", lambda r: _f(r.get("train_min"), 1)),
        ("images/s", lambda r: _f(r.get("images_per_sec"), 0)),
        ("FID (95% interval) | KID ± std | diversity", _scores),
        ("sampling ms/img", lambda r: _f(r.get("sample_ms_per_image"), 2)),
        ("weights", _weights)])


def ablation_table(rows: dict[str, dict]) -> str:
    return _markdown(rows, "variant", [
        ("FID (95% interval) | KID ± std | diversity", _scores),
        ("CPU s/step (step alone)", lambda r: _f(r.get("cpu_s_per_step"), 2)),
        ("CPU s/step (whole run)", lambda r: _f(r.get("run_cpu_s_per_step"), 2)),
        ("steps", lambda r: str(r.get("steps", "-"))),
        ("batch", lambda r: str(r.get("batch", "-"))),
        ("sampling ms/img", lambda r: _f(r.get("sample_ms_per_image"), 2)),
        ("weights", _weights)])


def curve_table(rows: dict[str, dict]) -> str:
    """FID and diversity by training step, for the rows a --curve run scored along the way
    (empty when none did): does an option keep diversity up over a longer run?"""
    curves = {name: {p["step"]: p for p in r["curve"]} for name, r in rows.items()
              if "curve" in r}
    if not curves:
        return ""
    steps = sorted({s for c in curves.values() for s in c})
    cell = lambda p: "-" if p is None else f"{p['fid']:.1f} / {p['diversity']:.2f}"  # noqa: E731
    columns = [(f"step {s}", lambda c, s=s: cell(c.get(s))) for s in steps]
    return ("FID / diversity (mean pairwise Inception distance of the samples over the real "
            "data's) by training step:\n\n" + _markdown(curves, "variant", columns))


def _weights(r: dict) -> str:
    """Which weights sampled, and whether their BatchNorm statistics were their own."""
    return r.get("sampled_with", "-") + (", standing BN" if "batchnorm" in r else "")


def _markdown(rows: dict[str, dict], first: str, columns: list) -> str:
    """A markdown table: one line per row, `first` naming it, then (header, cell) columns
    (a header holding ' | ' spans as many table columns as its cell)."""
    head = " | ".join([first, *(h for h, _ in columns)])
    lines = [f"| {head} |", "|" + "---|" * (head.count(" | ") + 1)]
    lines += [f"| {' | '.join([name, *(cell(r) for _, cell in columns)])} |"
              for name, r in rows.items()]
    return "\n".join(lines)


def _scores(r: dict) -> str:
    """The FID (interval), KID ± std and diversity cells both tables share."""
    interval = f" ({r['fid_low']:.1f}-{r['fid_high']:.1f})" if "fid_low" in r else ""
    kid = f"{r['kid']:.4f} ± {r['kid_std']:.4f}" if "kid" in r else "-"
    return f"{r['fid']:.1f}{interval} | {kid} | {r['diversity']:.2f}"


def pick_steps(cost_s: float, minutes: float, runs: int, low: int = 20) -> int:
    """Steps per run so that `runs` runs of `cost_s` seconds a step fit `minutes`, in tens."""
    return max(low, int(minutes * 60 / runs / cost_s) // 10 * 10)


def save_partial(args, rows: dict[str, dict]) -> None:
    """Every row so far, so that a run stopped early keeps what it measured."""
    (args.out / "quality.partial.json").write_text(json.dumps(rows, indent=2, default=str))


def run_ablation(args, data: ImageData, evaluator: Evaluator,
                 rows: dict[str, dict]) -> dict:
    """Train and score every variant of ABLATION into `rows`; the sizing it chose."""
    variants = [v for v in ABLATION if not args.variants or v in args.variants]
    # one measured step of every variant, then the step counts that fit the budget
    costs = {v: step_cost(ablation_config(v, args, 1), data) for v in variants}
    for v, c in costs.items():
        print(f"[cost] {v}: {c['cpu_s']:.2f} CPU s, {c['wall_s']:.2f} wall s per step",
              flush=True)
    kinds = {v: ABLATION[v][0] for v in variants}
    gan = [v for v in variants if kinds[v] == "dcgan"]
    ddpm = [v for v in variants if kinds[v] == "ddpm"]
    share = len(gan) / max(1, len(gan) + len(ddpm))  # equal wall time per run, roughly
    steps = {
        "dcgan": args.gan_steps or pick_steps(
            max((costs[v]["wall_s"] for v in gan), default=1), args.train_minutes * share,
            max(1, len(gan))),
        "ddpm": args.ddpm_steps or pick_steps(
            max((costs[v]["wall_s"] for v in ddpm), default=1),
            args.train_minutes * (1 - share), max(1, len(ddpm))),
    }
    points = args.curve
    steps = {k: max(points, n // points * points) for k, n in steps.items()}  # K equal parts
    how = ("as given" if args.gan_steps and args.ddpm_steps
           else f"for ~{args.train_minutes:g} min of training in all")
    print(f"[sizing] {steps['dcgan']} steps per GAN run, {steps['ddpm']} per DDPM run, {how}",
          flush=True)

    for v in variants:
        cfg = ablation_config(v, args, steps[kinds[v]], points)
        print(f"[{v}] training {cfg.total_steps} steps, batch {cfg.trainer.batch_size} ...",
              flush=True)
        run_dir, run_cpu = train_for_steps(cfg, args.out)
        extra = {"cpu_s_per_step": costs[v]["cpu_s"], "run_cpu_s_per_step": run_cpu,
                 "batch": cfg.trainer.batch_size}
        scored = DDPM_SCORED if kinds[v] == "ddpm" else None
        name = row_name(v, args)
        rows[name] = {**score(run_dir, evaluator, args.n, args.seed + 2, scored), **extra}
        print(f"[{name}] FID {rows[name]['fid']:.1f}, {run_cpu:.2f} CPU s/step", flush=True)
        if points > 1:
            rows[name]["curve"] = score_curve(run_dir, evaluator, args.n, args.seed + 2, scored,
                                              rows[name])
        save_partial(args, rows)
        if v == SAMPLER_MODEL:
            for label, sampler in SAMPLERS.items():
                row = f"{name}, sampled with {label}"
                rows[row] = {**score(run_dir, evaluator, args.n, args.seed + 2, sampler),
                             **extra}
                print(f"[{row}] FID {rows[row]['fid']:.1f}", flush=True)
                save_partial(args, rows)
    return {"steps": steps, "costs": costs}


def saved_run(folder: Path) -> dict:
    """An --out folder's quality.json, or {"rows": ...} from the quality.partial.json of a
    run stopped early."""
    done = folder / "quality.json"
    if done.exists():
        return json.loads(done.read_text())
    return {"rows": json.loads((folder / "quality.partial.json").read_text())}


def merge(folders: list[Path]) -> str:
    """One ablation table from runs split by --variant (each folder's quality.json, or the
    rows a stopped run saved in quality.partial.json), rows in ABLATION's order."""
    rows: dict[str, dict] = {}
    for folder in folders:
        rows.update(saved_run(folder)["rows"])
    order = ["real vs real (half B)", *ABLATION]
    ranked = sorted(rows, key=lambda r: next((i for i, o in enumerate(order)
                                              if r == o or r.startswith(o + ",")), len(order)))
    protocol = protocol_summary(rows[ranked[0]]["protocol"])
    missing = [v for v in order if v not in rows]
    curves = curve_table({r: rows[r] for r in ranked})
    return (f"{ablation_table({r: rows[r] for r in ranked})}\n\nFID protocol: {protocol}"
            + (f"; not measured: {', '.join(missing)}" if missing else "") + "\n"
            + (f"\n{curves}\n" if curves else ""))


def rescore(folders: list[Path], evaluator: Evaluator, n: int, seed: int) -> None:
    """Score the GAN rows of earlier --out folders again from their checkpoints, after a
    change to how GANs sample; the training columns stay. The rows as they were are kept
    once in quality.before_rescore.json."""
    for folder in folders:
        done, saved = folder / "quality.json", saved_run(folder)
        if "args" in saved and (int(saved["args"]["n"]), int(saved["args"]["seed"])) != (n, seed):
            raise SystemExit(f"{folder} was scored with --n {saved['args']['n']} --seed "
                             f"{saved['args']['seed']}; rescore it with the same")
        before = folder / "quality.before_rescore.json"
        if not before.exists():
            before.write_text(json.dumps(saved, indent=2, default=str) + "\n")
        for name, row in saved["rows"].items():
            run_dir = Path(row["grid"]).parent if "grid" in row else None
            if run_dir is None or "generator" not in json.loads(
                    (run_dir / "config.json").read_text()):  # GANs only
                continue
            old = row["fid"]
            saved["rows"][name] = {**row, **score(run_dir, evaluator, n, seed + 2)}
            print(f"[{name}] FID {old:.1f} -> {saved['rows'][name]['fid']:.1f}", flush=True)
            done.write_text(json.dumps(saved, indent=2, default=str) + "\n")


def _f(v, digits: int) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="the cat faces folder (or its parent)")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget per model")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--n", type=int, default=500, help="images per side of every FID")
    p.add_argument("--models", default="dcgan,ddpm", help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--inception-weights", default=None,
                   help="a local FID Inception file (default: the places lib.metrics searches)")
    p.add_argument("--device", default="auto")
    p.add_argument("--full", action="store_true", help="the presets' own length (a GPU run)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "quality")
    p.add_argument("--data-root", type=Path, default=ROOT / "data")
    p.add_argument("--seed", type=int, default=0,
                   help="splits the data, seeds training and draws the scored samples")
    p.add_argument("--train-seed", type=int, default=None,
                   help="ablation: another training seed on the same FID reference (rows "
                        "named '..., train seed N')")
    p.add_argument("--ablation", action="store_true",
                   help="the GAN options, DDPM objectives and samplers at equal steps")
    p.add_argument("--train-minutes", type=float, default=30.0,
                   help="ablation: wall-clock training of all runs together, to size the steps")
    p.add_argument("--gan-steps", type=int, default=0, help="ablation: steps per GAN run")
    p.add_argument("--ddpm-steps", type=int, default=0, help="ablation: steps per DDPM run")
    p.add_argument("--batch-size", type=int, default=0,
                   help="ablation: every run's batch (default: the presets', 128 GAN, 64 DDPM)")
    p.add_argument("--curve", type=int, default=1, metavar="K",
                   help="ablation: score K evenly spaced checkpoints of every run, not only the "
                        "last (FID and diversity by step: which options keep diversity up)")
    p.add_argument("--variant", dest="variants", action="append", default=[],
                   help=f"ablation: only this variant (repeatable); of {list(ABLATION)}")
    p.add_argument("--skip-real-vs-real", action="store_true",
                   help="leave out the real-vs-real row (a run split by --variant needs it once)")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="FOLDER",
                   help="print one ablation table from the --out folders of split runs")
    p.add_argument("--rescore", type=Path, nargs="+", default=None, metavar="FOLDER",
                   help="score the GAN rows of earlier --out folders again from their "
                        "checkpoints (after a change to sampling); then --merge them")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (default: torch's); 1 on a busy shared box")
    args = p.parse_args(argv)
    if args.merge:
        print(merge(args.merge))
        return 0
    if args.data is None:
        p.error("--data is required (the cat faces folder)")
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # kept by training's choose_threads
    if args.curve < 1 or any(n % args.curve for n in (args.gan_steps, args.ddpm_steps)):
        p.error(f"--curve {args.curve}: must be >= 1 and divide --gan-steps and --ddpm-steps")
    unknown = sorted(set(args.variants) - set(ABLATION))
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(ABLATION)}")
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    data, _, half_b, counts, evaluator = reference(args.data, args.image_size, args.n,
                                                   args.seed, args.data_root,
                                                   args.inception_weights)
    if args.rescore:
        rescore(args.rescore, evaluator, args.n, args.seed)
        return 0
    rows = {}
    if not args.skip_real_vs_real:
        rows["real vs real (half B)"] = evaluator.evaluate(half_b.images)
        print(f"real vs real FID {rows['real vs real (half B)']['fid']:.1f} "
              f"({time.perf_counter() - t0:.0f} s with data and reference features)", flush=True)

    sizing = None
    if args.ablation:
        sizing = run_ablation(args, data, evaluator, rows)
    else:
        for name in models:
            run_dir = train_model(name, args, args.out)
            rows[name] = score(run_dir, evaluator, args.n, args.seed + 2)
            print(f"[{name}] FID {rows[name]['fid']:.1f} after {rows[name]['steps']} steps "
                  f"({rows[name]['train_min']:.1f} min)", flush=True)

    protocol = protocol_summary(next(iter(rows.values()))["protocol"])
    if sizing is None:
        budget = (f"budget {args.minutes:g} min per model "
                  f"({'preset length' if args.full else 'wall clock'})")
    else:
        budget = (f"equal steps: {sizing['steps']['dcgan']} per GAN run, "
                  f"{sizing['steps']['ddpm']} per DDPM run, batches as in the table; "
                  "CPU s/step (step alone) is one step timed after a warm-up, (whole run) "
                  "the training call's process time over its steps, snapshots, grid and "
                  "checkpoints included")
    curves = curve_table(rows)
    text = (f"{ablation_table(rows) if args.ablation else table(rows)}\n\n"
            f"FID protocol: {protocol}; data: {counts['files']} files, "
            f"{counts['distinct']} distinct ({counts['duplicates']} exact duplicates); "
            f"{args.image_size} px; {budget}; device {args.device}, "
            f"{torch.get_num_threads()} threads; "
            f"total {(time.perf_counter() - t0) / 60:.1f} min\n"
            + (f"\n{curves}\n" if curves else ""))
    print("\n" + text)
    (args.out / "quality.md").write_text(text)
    (args.out / "quality.json").write_text(json.dumps(
        {"rows": rows, "counts": counts, "sizing": sizing,
         "args": {k: str(v) for k, v in vars(args).items()}},
        indent=2, default=str) + "\n")
    for row in rows.values():
        if "grid" in row:
            print(f"look at the grids: {row['grid']} (last snapshot), {row['scored_grid']} "
                  "(what was scored)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
