"""Representative slice selection for annotation sparsification (``nnunet-semisup select-slices``).

Zheng et al., "An Annotation Sparsification Strategy for 3D Medical Image Segmentation via Representative
Selection and Self-Training", AAAI 2020, Sec. "Representative Selection":

- every 2D slice of a case in one plane is encoded as a feature vector (the paper: an autoencoder fine-tuned from
  ImageNet VGG-19; here, without downloadable weights, a small 2D convolutional autoencoder trained on the
  dataset's own slices, :class:`ConvAutoencoderExtractor`; the extractor is pluggable);
- similarity of two slices = cosine of their feature vectors (Eq. 5);
- representativeness of a selected set S_a for all slices S_u of that case and plane is
  ``F(S_a) = sum_{x in S_u} max_{s in S_a} sim(s, x)`` (Eq. 6-7, a max-cover / facility-location function);
  it is monotone submodular, so the greedy algorithm (Eq. 8: repeatedly add the slice with the largest gain)
  is a (1 - 1/e) approximation of the best set of the same size. Greedy order = representativeness order;
- budget s_k (one slice in k) selects ``K = floor(D / s_k)`` slices of the D slices of a plane.

Equal-interval annotation (EIA, the paper's baseline): K slices one in every s_k, centred in the volume.

Axis convention (stored in every plan): the image array as nnU-Net's reader returns it, i.e. for NIfTI read by
SimpleITK the numpy order (z, y, x) of ``sitk.GetArrayFromImage``. An ``xy`` slice fixes array axis 0 (z),
an ``xz`` slice fixes axis 1 (y), a ``yz`` slice fixes axis 2 (x): slice i of plane p is
``np.take(array, i, axis=PLANE_AXIS[p])``.
"""

from __future__ import annotations

import heapq
import importlib
import itertools
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PLANES: tuple[str, ...] = ("xy", "xz", "yz")
PLANE_AXIS: dict[str, int] = {"xy": 0, "xz": 1, "yz": 2}
AXIS_CONVENTION = (
    "axes of the image array as nnU-Net's reader returns it (SimpleITK/NIfTI: numpy order (z, y, x)); "
    "slice i of plane p is np.take(array, i, axis=plane_axis[p]): xy fixes axis 0, xz axis 1, yz axis 2"
)
PLAN_FORMAT = 1
STRATEGIES = ("ra", "eia")


class SelectionError(ValueError):
    """Bad input to slice selection; the message names the case/plane and the fix."""


# ----------------------------------------------------------------------------------------------------------
# similarity and max-cover


def cosine_similarity_matrix(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pairwise cosine similarity (Eq. 5) of N feature vectors, vectorized.

    Args:
        features: (N, F).

    Returns:
        (N, N) float64 matrix, ``sim[i, j] = <f_i, f_j> / (|f_i| |f_j|)``; an all-zero vector has similarity 0
        to everything (and 1 to itself, so a slice always covers itself).
    """
    f = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, F), got shape {tuple(f.shape)}")
    norms = f.norm(dim=1, keepdim=True)
    unit = f / norms.clamp_min(1e-12)
    sim = (unit @ unit.T).numpy()
    np.fill_diagonal(sim, 1.0)
    return sim


def coverage_value(similarity: np.ndarray, selected: Sequence[int]) -> float:
    """``F(S_a) = sum_j max(0, max_{i in S_a} sim[i, j])`` (Eq. 6-7; the max over the empty set is 0).

    Args:
        similarity: (N, N).
        selected: indices of S_a.
    """
    if len(selected) == 0:
        return 0.0
    return float(np.maximum(similarity[list(selected)].max(axis=0), 0.0).sum())


def greedy_max_cover(similarity: np.ndarray, k: int | None = None) -> list[int]:
    """Greedy maximization of :func:`coverage_value` (Eq. 8) with lazy evaluation.

    Marginal gains of a submodular function only shrink as the set grows, so a gain computed earlier is an
    upper bound: candidates sit in a max-heap by their last computed gain, and only the top one is recomputed
    until it stays on top (Minoux's accelerated greedy). Same result as the plain greedy, with ties broken
    towards the lower index.

    Args:
        similarity: (N, N) slice similarities.
        k: number of slices to pick (default: all N, i.e. a full representativeness ranking).

    Returns:
        The picked indices in the order the greedy added them (most representative first).
    """
    sim = np.maximum(np.asarray(similarity, dtype=np.float64), 0.0)
    n = sim.shape[0]
    if sim.ndim != 2 or sim.shape[1] != n:
        raise ValueError(f"similarity must be square (N, N), got shape {sim.shape}")
    k = n if k is None else k
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    cover = np.zeros(n)
    # heap entries: (-gain, index, round in which the gain was computed)
    heap = [(-float(sim[i].sum()), i, 0) for i in range(n)]
    heapq.heapify(heap)
    order: list[int] = []
    while len(order) < k:
        _, i, computed_at = heapq.heappop(heap)
        if computed_at == len(order):
            order.append(i)
            cover = np.maximum(cover, sim[i])
            continue
        gain = float(np.maximum(sim[i] - cover, 0.0).sum())
        heapq.heappush(heap, (-gain, i, len(order)))
    return order


def brute_force_max_cover(similarity: np.ndarray, k: int) -> tuple[float, tuple[int, ...]]:
    """The best set of ``k`` slices by exhaustive search (for tests on tiny sets): (value, indices)."""
    n = similarity.shape[0]
    return max((coverage_value(similarity, s), s) for s in itertools.combinations(range(n), k))


# ----------------------------------------------------------------------------------------------------------
# budgets


def num_selected(depth: int, budget: int, where: str = "") -> int:
    """``K = floor(D / s_k)``: slices annotated out of ``depth`` = D at budget s_k (one slice in ``budget``).

    Raises:
        SelectionError: budget < 1, or K = 0 (fewer slices than the budget), naming ``where``.
    """
    if budget < 1:
        raise SelectionError(f"budget must be at least 1 (one slice in every s_k), got {budget}")
    k = depth // budget
    if k == 0:
        raise SelectionError(
            f"{where + ': ' if where else ''}only {depth} slice(s) but a budget of one slice in {budget}: "
            f"K = floor({depth} / {budget}) = 0 slices would be annotated. Use --budget {max(depth, 1)} or less."
        )
    return k


def equal_interval_slices(depth: int, budget: int, where: str = "") -> list[int]:
    """Equal-interval annotation (EIA): K = floor(D / s_k) slices ``s_k`` apart, the block centred in [0, D)."""
    k = num_selected(depth, budget, where)
    start = (depth - 1 - (k - 1) * budget) // 2
    return [start + i * budget for i in range(k)]


# ----------------------------------------------------------------------------------------------------------
# slices and feature extractors


def plane_slices(volume: np.ndarray, plane: str, size: int) -> torch.Tensor:
    """All slices of ``volume`` in ``plane``, each resized to ``size`` x ``size`` (bilinear).

    Args:
        volume: (C, A0, A1, A2) in the plan's axis convention, already intensity-normalized.
        plane: "xy", "xz" or "yz".
        size: output side length.

    Returns:
        (D, C, size, size) float32, D = ``volume.shape[1 + PLANE_AXIS[plane]]``.
    """
    v = torch.as_tensor(np.ascontiguousarray(volume), dtype=torch.float32)
    slices = v.movedim(1 + PLANE_AXIS[plane], 0)  # (D, C, H, W)
    return F.interpolate(slices, size=(size, size), mode="bilinear", align_corners=False)


def normalize_volume(volume: np.ndarray) -> np.ndarray:
    """Per-channel z-score of a (C, A0, A1, A2) image (scanner intensity scales differ between cases)."""
    v = volume.astype(np.float32)
    mean = v.reshape(v.shape[0], -1).mean(1)[:, None, None, None]
    std = v.reshape(v.shape[0], -1).std(1)[:, None, None, None]
    return (v - mean) / np.maximum(std, 1e-8)


class SliceFeatureExtractor(Protocol):
    """What :func:`select_slices` needs from a feature extractor (pass your own class via
    ``--features package.module:ClassName``; it is constructed without arguments)."""

    name: str
    slice_size: int

    def fit(self, slices: torch.Tensor) -> None:
        """Learn from (N, C, S, S) slices of the dataset (may do nothing)."""

    def encode(self, slices: torch.Tensor) -> np.ndarray:
        """(N, C, S, S) slices -> (N, F) feature vectors."""


class PixelExtractor:
    """Baseline extractor: the resized slice itself (16 x 16) as the feature vector; no training."""

    name = "pixels"
    slice_size = 16

    def fit(self, slices: torch.Tensor) -> None:
        pass

    def encode(self, slices: torch.Tensor) -> np.ndarray:
        return slices.flatten(1).numpy()


class _ConvAutoencoder(nn.Module):
    """32x32 -> (64, 4, 4) bottleneck -> 32x32."""

    def __init__(self, channels: int, width: int = 16):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, w, 3, 2, 1), nn.LeakyReLU(0.1),
            nn.Conv2d(w, 2 * w, 3, 2, 1), nn.LeakyReLU(0.1),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.LeakyReLU(0.1),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.1),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.LeakyReLU(0.1),
            nn.ConvTranspose2d(w, channels, 4, 2, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class ConvAutoencoderExtractor:
    """Default extractor: a small 2D convolutional autoencoder trained (MSE reconstruction) on the dataset's
    own slices of all three planes; the feature of a slice is its flattened 64 x 4 x 4 bottleneck.

    Stands in for the paper's VGG-19-initialized autoencoder (no weights can be downloaded here). Kept small so
    that it trains in seconds on a CPU: slices resized to 32 x 32, at most ``max_training_slices`` random slices,
    ``epochs`` passes, Adam 1e-3, seeded (the same data gives the same plan).
    """

    name = "autoencoder"
    slice_size = 32
    epochs = 15
    batch_size = 64
    learning_rate = 1e-3
    max_training_slices = 8192
    seed = 0

    def __init__(self) -> None:
        self.model: _ConvAutoencoder | None = None
        self.final_loss: float | None = None

    def fit(self, slices: torch.Tensor) -> None:
        # tiny convolutions: one intra-op thread is many times faster than several on a shared CPU
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._fit(slices)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, slices: torch.Tensor) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            self.model = _ConvAutoencoder(slices.shape[1])
        if len(slices) > self.max_training_slices:
            slices = slices[torch.randperm(len(slices), generator=generator)[: self.max_training_slices]]
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.learning_rate)
        self.model.train()
        for _ in range(self.epochs):
            total = 0.0
            for batch in torch.randperm(len(slices), generator=generator).split(self.batch_size):
                x = slices[batch]
                loss = F.mse_loss(self.model(x), x)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            self.final_loss = total / len(slices)
        self.model.eval()

    @torch.no_grad()
    def encode(self, slices: torch.Tensor) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("ConvAutoencoderExtractor.encode called before fit")
        return torch.cat([self.model.encoder(b).flatten(1) for b in slices.split(256)]).numpy()


FEATURE_EXTRACTORS: dict[str, Callable[[], SliceFeatureExtractor]] = {
    "autoencoder": ConvAutoencoderExtractor,
    "pixels": PixelExtractor,
}


def make_extractor(spec: str) -> SliceFeatureExtractor:
    """A registered extractor name (``autoencoder``, ``pixels``) or ``package.module:ClassName``."""
    if spec in FEATURE_EXTRACTORS:
        return FEATURE_EXTRACTORS[spec]()
    if ":" not in spec:
        raise SelectionError(
            f"unknown feature extractor {spec!r}: use one of {sorted(FEATURE_EXTRACTORS)} or package.module:Class"
        )
    module, cls = spec.split(":", 1)
    return getattr(importlib.import_module(module), cls)()


# ----------------------------------------------------------------------------------------------------------
# the plan


def _read_training_images(raw_dataset_folder: str) -> tuple[dict, dict[str, np.ndarray]]:
    """dataset.json and {case: (C, A0, A1, A2) image} of the raw dataset's training cases."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    json_file = os.path.join(raw_dataset_folder, "dataset.json")
    if not os.path.isfile(json_file):
        raise SelectionError(f"{json_file} not found: is {raw_dataset_folder} an nnU-Net raw dataset?")
    with open(json_file) as f:
        dataset_json = json.load(f)
    files = get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json)
    if not files:
        raise SelectionError(f"no training images in {os.path.join(raw_dataset_folder, 'imagesTr')}")
    first = next(iter(files.values()))["images"][0]
    rw = determine_reader_writer_from_dataset_json(dataset_json, first, verbose=False)()
    images = {}
    for case in sorted(files):
        data, _ = rw.read_images(files[case]["images"])
        if data.ndim != 4:
            raise SelectionError(f"case {case}: expected a 3D image, got array shape {data.shape[1:]}")
        images[case] = data
    return dataset_json, images


def select_slices(
    raw_dataset_folder: str,
    budget: int,
    strategy: str = "ra",
    extractor: SliceFeatureExtractor | None = None,
    progress: bool = True,
) -> dict:
    """The annotation plan of every training case of a raw nnU-Net dataset.

    Args:
        raw_dataset_folder: ``nnUNet_raw/DatasetXXX_NAME``.
        budget: s_k, one slice in every ``budget`` per plane (K = floor(D / s_k)).
        strategy: "ra" (representative annotation: greedy max-cover on slice features) or "eia" (equal
            intervals).
        extractor: feature extractor for "ra" (default :class:`ConvAutoencoderExtractor`).
        progress: tqdm progress bars.

    Returns:
        The plan (JSON-serializable): ``cases[case][plane]`` = the selected slice indices, most representative
        first for "ra" (ascending for "eia"), plus the axis convention and settings.

    Raises:
        SelectionError: unknown strategy, budget < 1, or a plane with fewer slices than the budget.
    """
    from tqdm import tqdm

    if strategy not in STRATEGIES:
        raise SelectionError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if budget < 1:
        raise SelectionError(f"budget must be at least 1 (one slice in every s_k), got {budget}")
    _, images = _read_training_images(raw_dataset_folder)
    shapes = {case: tuple(int(s) for s in img.shape[1:]) for case, img in images.items()}
    for case, shape in shapes.items():  # fail before any training
        for plane in PLANES:
            num_selected(shape[PLANE_AXIS[plane]], budget, f"case {case}, plane {plane}")

    plan: dict = {
        "format": PLAN_FORMAT,
        "dataset": os.path.basename(os.path.normpath(raw_dataset_folder)),
        "strategy": strategy,
        "budget": budget,
        "axis_convention": AXIS_CONVENTION,
        "plane_axis": dict(PLANE_AXIS),
        "cases": {},
    }
    if strategy == "eia":
        for case, shape in shapes.items():
            plan["cases"][case] = {"shape": list(shape)} | {
                p: equal_interval_slices(shape[PLANE_AXIS[p]], budget, f"case {case}, plane {p}")
                for p in PLANES
            }
        return plan

    extractor = extractor or ConvAutoencoderExtractor()
    plan["features"] = getattr(extractor, "name", type(extractor).__name__)
    size = int(extractor.slice_size)
    stacks = {
        (case, p): plane_slices(normalize_volume(img), p, size)
        for case, img in tqdm(images.items(), desc="slicing", disable=not progress)
        for p in PLANES
    }
    extractor.fit(torch.cat(list(stacks.values())))
    for case, shape in tqdm(shapes.items(), desc="selecting", disable=not progress):
        plan["cases"][case] = {"shape": list(shape)}
        for p in PLANES:
            similarity = cosine_similarity_matrix(extractor.encode(stacks[case, p]))
            k = num_selected(shape[PLANE_AXIS[p]], budget, f"case {case}, plane {p}")
            plan["cases"][case][p] = [int(i) for i in greedy_max_cover(similarity, k)]
    return plan


def validate_plan(plan: dict, shapes: dict[str, Sequence[int]] | None = None) -> None:
    """Check a plan's structure (and, if given, that every case exists with the planned shape and every slice
    index is inside the image). Raises :class:`SelectionError` naming the case."""
    if plan.get("format") != PLAN_FORMAT or "cases" not in plan:
        raise SelectionError("not an annotation plan of nnunet-semisup select-slices (format 1)")
    if plan.get("plane_axis", PLANE_AXIS) != PLANE_AXIS:
        raise SelectionError(f"plan uses plane axes {plan.get('plane_axis')}, expected {PLANE_AXIS}")
    for case, entry in plan["cases"].items():
        shape = entry.get("shape")
        if shapes is not None:
            if case not in shapes:
                raise SelectionError(f"case {case} of the plan is not a training case of the dataset")
            if list(shapes[case]) != list(shape):
                raise SelectionError(
                    f"case {case}: the plan was made for an image of shape {shape}, the image has shape "
                    f"{list(shapes[case])}; make a new plan for this dataset"
                )
        for p in PLANES:
            bad = [i for i in entry.get(p, []) if not 0 <= int(i) < shape[PLANE_AXIS[p]]]
            if bad:
                raise SelectionError(
                    f"case {case}, plane {p}: slice indices {bad} outside [0, {shape[PLANE_AXIS[p]]})"
                )
    if shapes is not None:
        missing = sorted(str(c) for c in set(shapes) - set(plan["cases"]))
        if missing:
            raise SelectionError(f"the plan has no slices for training case(s) {missing}")


def annotated_mask(shape: Sequence[int], entry: dict) -> np.ndarray:
    """Boolean (A0, A1, A2) mask of the voxels on the planned slices of one case (union of the three planes)."""
    mask = np.zeros(tuple(shape), dtype=bool)
    for p in PLANES:
        index: list = [slice(None)] * 3
        index[PLANE_AXIS[p]] = [int(i) for i in entry.get(p, [])]
        mask[tuple(index)] = True
    return mask


def plan_summary(plan: dict) -> str:
    """Human-readable summary: per case and plane the slice count out of D and the slices, then totals."""
    lines = [
        f"Annotation plan of {plan['dataset']}: strategy {plan['strategy'].upper()}, budget one slice in "
        f"{plan['budget']} per plane (K = floor(D / {plan['budget']}))"
        + (f", features: {plan['features']}" if "features" in plan else ""),
        f"Axes: {plan['axis_convention']}",
        "",
    ]
    total_slices = total_voxels = annotated = 0
    for case, entry in plan["cases"].items():
        shape = entry["shape"]
        parts = []
        for p in PLANES:
            d = shape[PLANE_AXIS[p]]
            parts.append(f"{p} {len(entry[p])}/{d}: {entry[p]}")
            total_slices += len(entry[p])
        n = int(annotated_mask(shape, entry).sum())
        annotated += n
        total_voxels += math.prod(shape)
        lines.append(f"{case} (shape {tuple(shape)}): " + "; ".join(parts))
    lines += [
        "",
        f"{len(plan['cases'])} cases, {total_slices} slices to annotate, "
        f"{annotated / max(total_voxels, 1):.1%} of the voxels lie on a planned slice",
    ]
    return "\n".join(lines)
