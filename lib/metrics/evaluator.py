"""`Evaluator`, the entry point the training loop and the CLI call, and what reads its results."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from lib.data import ImageData, distinct_indices
from lib.metrics.cache import cache_path, data_fingerprint, load_cached, save_cached
from lib.metrics.classifier import ClassifierFeatures, load_classifier
from lib.metrics.inception import (
    INCEPTION_SIZE,
    RESIZE,
    InceptionFeatures,
    InceptionWeights,
    _sha256,
    find_inception_weights,
)
from lib.metrics.scores import (
    MetricsError,
    ReferenceStats,
    fid_with_interval,
    kid,
    label_sensitivity,
    mean_pairwise_distance,
    nearest_real,
    ssim_pairs,
)

FEATURES = ("auto", "classifier", "inception")
# Every batch the feature network sees has this many images (the last one padded): fp32
# features depend on the batch shape (torchmetrics #1620), so they never depend on the caller's
FEATURE_BATCH = 50


def default_features(real: ImageData, device: str | torch.device = "cpu") -> str:
    """`classifier` on CPUs when the data has labels (Inception costs ~0.1 s/image there)."""
    if real.labels is not None and torch.device(device).type == "cpu":
        return "classifier"
    return "inception"



# ---------------------------------------------------------------------------
# The reference set and the protocol recorded with every score


def _inception_protocol(weights: InceptionWeights, dim: int, image_size: int) -> dict:
    known = weights.known
    return {"features": "inception", "network": "Inception-v3 (TF 2015-12-05), pool features",
            "feature_dim": dim,
            "weights": f"{known.name} ({known.source})" if known else weights.path.name,
            "weights_sha256": weights.sha256[:12], "standard_weights": known is not None,
            "resize": f"{RESIZE} {image_size}->{INCEPTION_SIZE}", "image_size": image_size}


def _classifier_protocol(net: ClassifierFeatures, path: Path, image_size: int) -> dict:
    resize = f"bilinear-antialias {image_size}->{net.size}" if net.size != image_size else "none"
    return {"features": "classifier", "network": "small CNN trained on the run's data",
            "feature_dim": net.num_features, "weights": path.name,
            "weights_sha256": _sha256(path)[:12], "standard_weights": False, "resize": resize,
            "image_size": image_size}



# ---------------------------------------------------------------------------
# The entry point the training loop and the CLI call


class Evaluator:
    """Scores generated uint8 batches against one real dataset with one feature network.

    The reference set is a fixed random subset of `num_real` (default
    `num_samples`) distinct images of `real`; `reference` says what `real` is
    ("train": the run's training images, or e.g. "held-out"). Its features are
    extracted once and cached under `cache_dir`, keyed by data content and
    protocol; each `evaluate` call extracts only the fake features. Inception
    weights come from `weights_path` or the places `find_inception_weights`
    searches (a download only with `download`). Results do not depend on how
    the images are batched, and calls hold no state between them.

    With `seconds` (a session's time budget), the reference features are extracted only
    as far as that allows: the part done is cached and continued by the next Evaluator,
    and until it is `complete` this one cannot score (`partial` says how far it got).
    """

    def __init__(self, real: ImageData, features: str = "auto", num_samples: int = 500,
                 device: str | torch.device = "cpu", cache_dir: str | Path = "data/cache",
                 weights_path: str | Path | None = None, download: bool = False,
                 num_real: int | None = None, reference: str = "train", bootstrap: int = 10,
                 seed: int = 0, seconds: float | None = None):
        if features not in FEATURES:
            raise ValueError(f"unknown features {features!r}; choose one of {list(FEATURES)}")
        if features == "auto":
            features = default_features(real, device)
        self.features = features
        self.device = torch.device(device)
        self.cache_dir = Path(cache_dir)
        self.num_samples = num_samples
        self.bootstrap = bootstrap
        self.seed = seed
        self.dataset = real.name
        self.image_shape = tuple(real.images.shape[1:])
        self.meta: dict = {}
        self.notes: list[str] = []  # warnings that hold for every score of this evaluator
        self.cache_files: list[Path] = []  # what it cached: a run folder keeps copies
        fingerprint = data_fingerprint(real)
        if features == "classifier":
            self.net, accuracy, net_path = load_classifier(real, self.cache_dir, self.device,
                                                           fingerprint)
            self.meta["classifier_accuracy"] = round(accuracy, 4)
            network = _classifier_protocol(self.net, net_path, real.image_size)
            self.cache_files.append(net_path)
        else:
            weights = find_inception_weights(weights_path, self.cache_dir, download)
            self.net = InceptionFeatures(weights).to(self.device)
            network = _inception_protocol(weights, self.net.num_features, real.image_size)
            if weights.known is None:
                self.notes.append(
                    f"Inception weights {weights.path.name} (SHA-256 {weights.sha256[:12]}) are "
                    f"not a known FID weights file: compare only with scores from the same file")
        self.dim = self.net.num_features

        # A fixed random subset of the distinct real images: the same for every call and run.
        # A duplicate counted twice would weigh its image double in the reference statistics.
        distinct = distinct_indices(real.images)
        n_real = min(len(distinct), num_real or num_samples)
        pick = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))
        subset = distinct[pick[:n_real]]
        self.real_images = real.images.cpu()[subset]  # (n_real, C, H, W)
        self.real_labels = real.labels.cpu()[subset] if real.labels is not None else None
        self.class_names = real.class_names
        self.protocol = {**network, "n_real": n_real, "reference": reference,
                         "real_total": len(real), "real_distinct": len(distinct),
                         "duplicates_removed": len(real) - len(distinct),
                         "feature_batch": FEATURE_BATCH}
        key = {"data": fingerprint, "protocol": self.protocol, "seed": seed}
        prefix = f"real_{real.name}_{features}_{real.image_size}px_n{n_real}"
        self.cache_path = cache_path(self.cache_dir, prefix, key)
        self.cache_files.append(self.cache_path)
        blob = load_cached(self.cache_path) or {"features": torch.empty(0, self.dim)}
        if len(blob["features"]) < n_real:
            blob = self._extract_reference(blob, seconds)
            save_cached(self.cache_path, blob)
        self.real_features = blob["features"]  # (n_real, D) float32, CPU; fewer while partial
        self.seconds_per_image = blob.get("seconds_per_image")  # feature cost; None: unknown
        self.complete = len(self.real_features) == n_real
        self.partial = (None if self.complete else f"reference statistics: "
                        f"{len(self.real_features):,} of {n_real:,} images this session; "
                        f"the rest next session")
        if self.complete:
            self._reference = ReferenceStats(self.real_features)
            self._real_spread = mean_pairwise_distance(self.real_features)

    def _extract_reference(self, blob: dict, seconds: float | None) -> dict:
        """`blob` with the real features continued from where it stopped: all of them, or
        with `seconds` the whole feature batches that fit (at least one when none was timed)."""
        done, spi = [blob["features"]], blob.get("seconds_per_image")
        t0 = time.monotonic()
        for x in self.real_images[len(blob["features"]):].split(FEATURE_BATCH):
            if (seconds is not None and spi is not None
                    and time.monotonic() - t0 + spi * FEATURE_BATCH > seconds):
                break
            t = time.monotonic()
            done.append(self.extract(x))  # whole batches from 0 on: the same features
            spi = (time.monotonic() - t) / FEATURE_BATCH  # a padded batch costs a full one
        return {"features": torch.cat(done), "seconds_per_image": spi}

    @torch.inference_mode()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float32 features (N, D) on the CPU, in fixed-size chunks."""
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != self.image_shape:
            shape = ", ".join(map(str, self.image_shape))
            raise MetricsError(
                f"evaluation expects uint8 images of shape (N, {shape}) like {self.dataset}, "
                f"got {images.dtype} {tuple(images.shape)}; convert with lib.data.to_uint8"
            )
        out = []
        for x in images.split(FEATURE_BATCH):
            n = len(x)
            if n < FEATURE_BATCH:  # pad: the network sees one batch shape only
                x = torch.cat([x, x.new_zeros((FEATURE_BATCH - n, *x.shape[1:]))])
            out.append(self.net(x.to(self.device))[:n].float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.dim)

    def _kid(self, fake_features: torch.Tensor) -> tuple[float, float]:
        subset = min(1000, len(self.real_features) // 2, len(fake_features) // 2)
        if subset < 2:
            return float("nan"), float("nan")
        return kid(self.real_features, fake_features, subsets=50, subset_size=subset,
                   seed=self.seed)

    def _per_class(self, fake_features: torch.Tensor, fake_labels: torch.Tensor,
                   result: dict, notes: list[str]) -> None:
        fids, smallest = [], None
        for k in range(len(self.class_names)):
            real_k = self.real_features[self.real_labels == k]
            fake_k = fake_features[fake_labels == k]
            n = min(len(real_k), len(fake_k))
            smallest = n if smallest is None else min(smallest, n)
            if n < 2:
                continue
            fid, std = fid_with_interval(ReferenceStats(real_k), fake_k, self.bootstrap,
                                         self.seed + 1 + k)
            result[f"fid_class_{k}"] = fid
            if self.bootstrap > 1:
                result[f"fid_class_{k}_std"] = std
            fids.append(fid)
        if fids:
            result["fid_class_mean"] = sum(fids) / len(fids)
        if smallest is not None and smallest <= self.dim:
            notes.append(
                f"per-class FID: the smallest class has {smallest} samples, too few for a "
                f"full-rank covariance of {self.dim}-d features; per-class FIDs are biased upward"
            )

    def evaluate(self, fake: torch.Tensor, fake_labels: torch.Tensor | None = None,
                 recon_pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
                 label_grid: torch.Tensor | None = None) -> dict:
        """Score uint8 (N, C, H, W) samples; returns a flat dict for history.jsonl.

        Numbers: fid (+ fid_std, fid_low, fid_high), kid, kid_std, diversity,
        ssim_nearest, ssim_recon (with `recon_pairs` = (originals, reconstructions)),
        fid_class_<k> (+ _std) and fid_class_mean (with `fake_labels`), label_sensitivity
        (with `label_grid`, uint8 (K, M, C, H, W): M fixed noises decoded under K labels).
        Metadata: features, feature_dim, image_size, dataset, n_real, n_fake, warnings and
        protocol (what makes two scores comparable: see `protocol_summary`).
        """
        fake = fake.detach()
        if not self.complete:
            raise MetricsError(f"{self.partial}: no scores until they are all extracted")
        if len(fake) < 2:
            raise MetricsError(f"evaluation needs at least 2 generated images, got {len(fake)}")
        if fake_labels is not None and len(fake_labels) != len(fake):
            raise MetricsError(f"{len(fake_labels)} fake_labels for {len(fake)} generated images")
        notes = list(self.notes)
        with torch.inference_mode():  # every draw below has its own seeded generator
            fake_features = self.extract(fake)
            fid, fid_std = fid_with_interval(self._reference, fake_features, self.bootstrap,
                                              self.seed)
            kid, kid_std = self._kid(fake_features)
            result = {"fid": fid}
            if self.bootstrap > 1:  # a normal 95% interval from the bootstrap spread
                result.update(fid_std=fid_std, fid_low=max(0.0, fid - 1.96 * fid_std),
                              fid_high=fid + 1.96 * fid_std)
            if not math.isnan(kid):
                result.update(kid=kid, kid_std=kid_std)
            else:
                notes.append(f"KID left out: {len(fake)} samples are too few for its subsets")
            result["diversity"] = mean_pairwise_distance(fake_features) / self._real_spread
            fake_cpu = fake.cpu()
            nearest = self.real_images[nearest_real(fake_cpu, self.real_images)]
            result["ssim_nearest"] = ssim_pairs(fake_cpu, nearest).mean().item()
            if recon_pairs is not None:
                originals, recons = (x.detach().cpu() for x in recon_pairs)
                result["ssim_recon"] = ssim_pairs(originals, recons).mean().item()
            if label_grid is not None:
                result["label_sensitivity"] = label_sensitivity(label_grid.detach().cpu())
            if fake_labels is not None and self.real_labels is not None:
                self._per_class(fake_features, fake_labels.cpu(), result, notes)
        n = min(len(self.real_features), len(fake))
        if n <= self.dim:
            notes.append(
                f"{n} samples cannot give a full-rank covariance of {self.dim}-d {self.features} "
                f"features (need more than {self.dim}): FID is biased upward and comparable only "
                f"at the same sample count"
            )
        if self.features == "inception" and self.image_shape[0] == 1:
            notes.append("Inception features of grayscale images are of questionable meaning; "
                            "compare only with runs scored the same way")
        accuracy = self.meta.get("classifier_accuracy")
        if accuracy is not None and accuracy < 0.9:
            notes.append(f"the classifier feature network reaches only {accuracy:.0%} held-out "
                            f"accuracy on {self.dataset}: its features may miss what matters")
        return {**result, "features": self.features, "feature_dim": self.dim,
                "image_size": self.image_shape[-1], "dataset": self.dataset,
                "n_real": len(self.real_features), "n_fake": len(fake), **self.meta,
                "warnings": notes, "protocol": {**self.protocol, "n_fake": len(fake)}}


META_KEYS = ("features", "feature_dim", "image_size", "dataset", "n_real", "n_fake",
             "classifier_accuracy", "warnings", "protocol", "sampled_with")


def protocol_summary(protocol: dict | None) -> str:
    """One line for tables: network + weights hash, counts, reference set, resize."""
    if not protocol:
        return "-"
    p = protocol
    weights = p.get("weights_sha256", "?") + ("" if p.get("standard_weights", True) else " (own)")
    dups = p.get("duplicates_removed", 0)
    return (f"{p.get('features', '?')} {weights}; {p.get('n_fake', '?')} gen vs "
            f"{p.get('n_real', '?')} real ({p.get('reference', '?')}, distinct"
            f"{f', {dups} dups removed' if dups else ''}); {p.get('resize', '?')}")


def scores(result: dict) -> dict:
    """The scores of an `evaluate` result without its metadata (what curves and trackers want)."""
    return {k: v for k, v in result.items() if k not in META_KEYS}
