"""Text-to-image evaluation (issue 17 §5): FID on EfficientNet-Lite0 features, ITC retrieval R@1, attribute accuracy.

Three readouts of generated images against the real images of the same captions:

* :func:`frechet_distance` between Gaussian fits of pooled features of the packaged ImageNet
  EfficientNet-Lite0 (:class:`EfficientNetFeatures`, 1280-d). The formula is FID's
  (``|mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^1/2)``) but the features are not Inception-v3's, so the
  number is named :data:`FID_NAME` and is comparable only to itself.
* :func:`caption_r_at_1`: each caption queries a gallery of its generated image and the real images of the
  *other* captions by an independent ITC model's image–text cosine; a hit is its generated image ranked first.
* :class:`AttributeProbe`: a ridge-regression (closed-form linear) probe on frozen EfficientNet features,
  fitted on real train images to each scene's colours and shapes (multi-hot, from the world's region
  annotations) and its object count. A generated image is scored on what its caption states: the colours and
  shapes named in the caption (each should be predicted present) and the annotated object count. The same
  scoring on the real test images is the probe's ceiling.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grainvl.data.world.ontology import COLORS, OOD_OBJECT_RANGE, SHAPES
from grainvl.errors import DataError
from grainvl.models.vision import load_efficientnet_lite0
from grainvl.utils.fileio import iter_jsonl

FID_NAME = "FID (EfficientNet-Lite0 features, not Inception)"
FID_METRIC = "fid_efficientnet_lite0"  # the results-row metric name of FID_NAME
MAX_COUNT = OOD_OBJECT_RANGE[1]  # count classes 1..MAX_COUNT (OOD scenes are the most crowded)

# English surface forms of the world's closed vocabulary that differ from the canonical names
# (data/world/lang_en.py draws synonyms per use: "disc", "rhombus", "ellipse", "grey").
_SYNONYMS = {"disc": "circle", "rhombus": "diamond", "ellipse": "oval", "grey": "gray"}
_PLURALS = {"crosses": "cross", "rhombuses": "rhombus"}


# ---------------------------------------------------------------------------------------------- FID
def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"a Gaussian fit needs (N >= 2, D) features, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians: ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2)``.

    ``tr((S1 S2)^1/2)`` is computed as ``tr((A S2 A)^1/2)`` with ``A = S1^1/2``: the same eigenvalues, but a
    symmetric PSD matrix, so no complex round-off from a general matrix square root (scipy.linalg.sqrtm).
    """
    root = _psd_sqrt(sigma1)
    inner = np.linalg.eigvalsh(root @ sigma2 @ root)  # eigenvalues of S1^1/2 S2 S1^1/2 == those of S1 S2
    trace_sqrt = float(np.sqrt(np.clip(inner, 0, None)).sum())
    diff = np.asarray(mu1, dtype=np.float64) - np.asarray(mu2, dtype=np.float64)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


class EfficientNetFeatures(nn.Module):
    """The packaged ImageNet EfficientNet-Lite0, classifier removed: images (B, 3, H, W) in [0, 1] -> (B, 1280).

    Images are resized (bilinear) to ``resolution`` so that features of any image size are comparable, then
    mapped to [-1, 1] (the TF-Lite normalisation the weights were trained with). Always in eval mode.
    """

    def __init__(self, resolution: int = 128, pretrained: bool = True) -> None:
        super().__init__()
        self.resolution = resolution
        self.net = load_efficientnet_lite0(pretrained, resolution, drop_connect_rate=0.0)
        self.net._fc = nn.Identity()  # forward now ends at the pooled 1280-d features
        self.eval()

    def train(self, mode: bool = True) -> EfficientNetFeatures:
        return super().train(False)  # a fixed feature extractor: BatchNorm statistics and dropout stay off

    @torch.no_grad()
    def forward(self, images: Tensor, batch_size: int = 32) -> Tensor:
        out = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].float()
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
            out.append(self.net(x * 2 - 1))  # (b, 1280)
        return torch.cat(out) if out else images.new_zeros(0, 1280)


def efficientnet_fid(real_features: Tensor, generated_features: Tensor) -> float:
    """:data:`FID_NAME` of two feature sets (N, 1280) (each needs N >= 2)."""
    return frechet_distance(*gaussian_fit(real_features.double().numpy()), *gaussian_fit(generated_features.numpy()))


# ---------------------------------------------------------------------------------------------- retrieval
def caption_r_at_1(text_features: Tensor, generated_features: Tensor, real_features: Tensor) -> float:
    """R@1 of each caption's generated image among the real images of the other captions.

    ``text_features`` (N, E), ``generated_features`` (N, E), ``real_features`` (N, E): row i of each belongs to
    caption i, all L2-normalised ITC embeddings. Caption i's own real image is left out of its gallery (it is a
    true match too); a hit is ``cos(t_i, g_i)`` above every ``cos(t_i, r_j)``, j != i (ties count as misses).
    """
    n = text_features.shape[0]
    if n < 2:
        raise ValueError("caption R@1 needs at least 2 captions (a gallery of real images)")
    own = (text_features * generated_features).sum(-1)  # (N,)
    others = text_features @ real_features.T  # (N, N)
    others = others.masked_fill(torch.eye(n, dtype=torch.bool, device=others.device), float("-inf"))
    return float((own > others.max(dim=1).values).float().mean())


# ---------------------------------------------------------------------------------------------- attributes
def _canonical(word: str, vocabulary: Sequence[str]) -> str | None:
    word = _PLURALS.get(word, word)
    for form in (word, word[:-1] if word.endswith("s") else word):
        form = _SYNONYMS.get(form, form)
        if form in vocabulary:
            return form
    return None


def _last_word(text: object) -> str:
    words = re.findall(r"[a-z]+", str(text or "").lower())
    return words[-1] if words else ""


def stated_attributes(caption: str) -> tuple[set[str], set[str]]:
    """The colours and shapes (canonical names) a caption names, e.g. "a grey disc" -> ({"gray"}, {"circle"})."""
    words = re.findall(r"[a-z]+", caption.lower())
    colors = {c for c in (_canonical(w, tuple(COLORS)) for w in words) if c}
    shapes = {s for s in (_canonical(w, SHAPES) for w in words) if s}
    return colors, shapes


@dataclass(frozen=True)
class SceneLabels:
    """What the world says an image holds: its objects' colours and shapes and how many objects there are."""

    colors: frozenset[str]
    shapes: frozenset[str]
    count: int


def read_scene_labels(region_file: str | Path) -> dict[str, SceneLabels]:
    """``{image path: SceneLabels}`` from a world's ``annotations/pretrain/{split}/region.jsonl``.

    Each element's ``attributes`` is ``"size texture color"`` and its region phrase ends with the shape noun.
    """
    labels = {}
    for line, record in iter_jsonl(region_file):
        colors, shapes = set(), set()
        for elem in record.get("elems", []):
            color = _canonical(_last_word(elem.get("attributes")), tuple(COLORS))
            shape = _canonical(_last_word(elem.get("caption")), SHAPES)
            if color is None or shape is None:
                raise DataError(region_file, f"line {line}", f"cannot read a colour and a shape from element {elem}")
            colors.add(color)
            shapes.add(shape)
        count = len(record.get("elems", []))
        if not 1 <= count <= MAX_COUNT:
            raise DataError(region_file, f"line {line}", f"{count} objects; the probe counts 1..{MAX_COUNT}")
        labels[str(record["image"])] = SceneLabels(frozenset(colors), frozenset(shapes), count)
    return labels


def label_matrix(labels: Sequence[SceneLabels]) -> Tensor:
    """-> (N, 12 + 10 + MAX_COUNT) targets: colour multi-hot, shape multi-hot, count one-hot."""
    colors, shapes = list(COLORS), list(SHAPES)
    out = torch.zeros(len(labels), len(colors) + len(shapes) + MAX_COUNT)
    for i, label in enumerate(labels):
        for c in label.colors:
            out[i, colors.index(c)] = 1
        for s in label.shapes:
            out[i, len(colors) + shapes.index(s)] = 1
        out[i, len(colors) + len(shapes) + label.count - 1] = 1
    return out


class AttributeProbe:
    """Ridge regression from standardised frozen features to :func:`label_matrix` targets (closed form).

    Colours and shapes are present when their score is above 0.5; the count is the argmax of its block.
    ``fit`` picks the ridge strength among ``alphas`` by accuracy on a held-out set (the world's val split).
    """

    def __init__(self) -> None:
        self.mean = self.std = self.weight = torch.zeros(0)

    def _design(self, features: Tensor) -> Tensor:
        x = (features.double() - self.mean) / self.std  # (N, D)
        return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)  # (N, D+1): a bias column

    def fit(
        self,
        features: Tensor,
        labels: Sequence[SceneLabels],
        val_features: Tensor,
        val_labels: Sequence[SceneLabels],
        alphas: Sequence[float] = (1.0, 10.0, 100.0, 1000.0),
    ) -> dict[str, float]:
        """Fit on (N, D) features; -> the chosen ``alpha`` and the val accuracies at it."""
        self.mean, self.std = features.double().mean(0), features.double().std(0).clamp(min=1e-6)
        x, y = self._design(features), label_matrix(labels).double()  # (N, D+1), (N, K)
        gram, target = x.T @ x, x.T @ y  # (D+1, D+1), (D+1, K)
        best: dict[str, float] = {}
        for alpha in alphas:
            self.weight = torch.linalg.solve(gram + alpha * _bias_free_eye(gram.shape[0]), target)
            scores = self.accuracy(val_features, [stated_of(v) for v in val_labels], [v.count for v in val_labels])
            if not best or scores["attr_acc"] > best["attr_acc"]:
                best = {"alpha": alpha, **scores}
        self.weight = torch.linalg.solve(gram + best["alpha"] * _bias_free_eye(gram.shape[0]), target)
        return best

    def predict(self, features: Tensor) -> tuple[list[set[str]], list[set[str]], list[int]]:
        """-> per image the colours and shapes predicted present and the predicted count."""
        scores = self._design(features) @ self.weight  # (N, K)
        nc, ns = len(COLORS), len(SHAPES)
        colors = [{c for c, s in zip(COLORS, row) if s > 0.5} for row in scores[:, :nc].tolist()]
        shapes = [{sh for sh, s in zip(SHAPES, row) if s > 0.5} for row in scores[:, nc : nc + ns].tolist()]
        counts = (scores[:, nc + ns :].argmax(dim=1) + 1).tolist()
        return colors, shapes, counts

    def accuracy(
        self, features: Tensor, stated: Sequence[tuple[set[str], set[str]]], counts: Sequence[int]
    ) -> dict[str, float]:
        """Share of stated colours / shapes predicted present, share of counts right, and their mean ``attr_acc``."""
        colors, shapes, predicted_counts = self.predict(features)
        color_hits = [c in pred for (want, _), pred in zip(stated, colors) for c in want]
        shape_hits = [s in pred for (_, want), pred in zip(stated, shapes) for s in want]
        out = {
            "attr_color_acc": float(np.mean(color_hits)) if color_hits else float("nan"),
            "attr_shape_acc": float(np.mean(shape_hits)) if shape_hits else float("nan"),
            "attr_count_acc": float(np.mean([p == c for p, c in zip(predicted_counts, counts)])),
        }
        out["attr_acc"] = float(np.nanmean(list(out.values())))
        return out


def _bias_free_eye(size: int) -> Tensor:
    """Identity without its last diagonal entry: the ridge penalty leaves the bias column alone."""
    eye = torch.eye(size, dtype=torch.float64)
    eye[-1, -1] = 0
    return eye


def stated_of(label: SceneLabels) -> tuple[set[str], set[str]]:
    """A real image's own colours and shapes as if a caption stated them all (the probe's selection target)."""
    return set(label.colors), set(label.shapes)


__all__ = [
    "FID_METRIC",
    "FID_NAME",
    "MAX_COUNT",
    "AttributeProbe",
    "EfficientNetFeatures",
    "SceneLabels",
    "caption_r_at_1",
    "efficientnet_fid",
    "frechet_distance",
    "gaussian_fit",
    "label_matrix",
    "read_scene_labels",
    "stated_attributes",
]
