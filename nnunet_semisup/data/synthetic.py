"""Synthetic toy cases: the fallback data for the demo and the tests when the real MRI data is absent.

The real data lives in ``shared/data/msd_hippocampus`` beside the repository; where it is missing (e.g. a
bare clone), :func:`write_synthetic_cases` writes a small learnable stand-in in the same Decathlon layout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["write_synthetic_cases"]


def _make_case(rng: np.random.Generator, shape_zyx: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One (image float32, label uint8) pair in numpy (z, y, x) order."""
    extent = np.asarray(shape_zyx, dtype=np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape_zyx], indexing="ij"))

    center = (extent - 1) / 2 + rng.uniform(-0.1, 0.1, 3) * extent
    radii = rng.uniform(0.2, 0.3, 3) * extent.min()
    offsets = (grid - center[:, None, None, None]) / radii[:, None, None, None]
    ellipsoid = (offsets**2).sum(0) <= 1.0

    # The smaller blob sits half way to the ellipsoid's surface in a random direction, so it is
    # mostly inside and sometimes pokes out: label 2 is always adjacent to label 1.
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    blob_center = center + 0.5 * radii * direction
    blob_radius = rng.uniform(0.6, 0.75) * radii.min()
    blob = ((grid - blob_center[:, None, None, None]) ** 2).sum(0) <= blob_radius**2

    label = np.zeros(shape_zyx, dtype=np.uint8)
    label[ellipsoid] = 1
    label[blob] = 2

    means = np.array([0.0, 1.0, 2.0]) + rng.uniform(-0.1, 0.1, 3)
    image = means[label]
    # Smooth multiplicative bias (a linear ramp in a random direction), like an MRI coil field.
    ramp_direction = rng.normal(size=3)
    ramp_direction /= np.linalg.norm(ramp_direction)
    ramp = np.tensordot(ramp_direction, (grid - (extent[:, None, None, None] - 1) / 2) / extent.max(), 1)
    image = image * (1.0 + 0.3 * ramp) + rng.normal(0.0, 0.3, shape_zyx)
    # Arbitrary per-case intensity scale and offset, as between real scans; z-scoring removes them.
    image = image * rng.uniform(50, 150) + rng.uniform(0, 100)
    return image.astype(np.float32), label


def write_synthetic_cases(
    folder: str,
    n_cases: int,
    shape: Sequence[int] = (32, 32, 32),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    seed: int = 0,
    prefix: str = "synth",
) -> None:
    """Write a learnable 2-foreground-class toy problem in Decathlon layout.

    This is the fallback data for the demo and the tests when ``/work/shared/data/msd_hippocampus``
    (``shared/data/msd_hippocampus`` beside the repository) is absent. Each case is a random-radius,
    jittered ellipsoid (label 1) with a smaller sphere at a random spot half way to its surface
    (label 2, overwriting label 1 where they overlap); the image is a class-dependent intensity
    (about 0, 1, 2 for background, label 1, label 2) times a smooth linear bias field, plus Gaussian
    noise (sigma 0.3), then scaled and shifted by a random per-case factor. A tiny nnU-Net reaches
    clearly non-zero Dice on it within a few dozen iterations.

    Files: ``folder/images/<prefix>_XXX.nii.gz`` (float32) and ``folder/labels/<prefix>_XXX.nii.gz``
    (uint8, values 0, 1, 2), XXX = 001 ... n_cases, i.e. single-channel Decathlon naming without the
    ``_0000`` suffix, like msd_hippocampus. Case ``i`` depends only on (seed, i, shape), so a larger
    ``n_cases`` adds cases without changing the first ones.

    Args:
        folder: output folder; ``images/`` and ``labels/`` are created in it.
        n_cases: number of cases, at least 1.
        shape: image size in SimpleITK (x, y, z) order, i.e. ``image.GetSize()``; each at least 8.
        spacing: voxel spacing in mm, (x, y, z) order. Shapes are defined in voxels.
        seed: random seed.
        prefix: case id prefix.

    Raises:
        ValueError: invalid arguments.
        FileExistsError: one of the files to write already exists (nothing is overwritten).
    """
    import SimpleITK as sitk

    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes of at least 8 voxels, got {tuple(shape)}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive numbers, got {tuple(spacing)}")

    images_dir = os.path.join(folder, "images")
    labels_dir = os.path.join(folder, "labels")
    names = [f"{prefix}_{i:03d}.nii.gz" for i in range(1, n_cases + 1)]
    existing = [
        os.path.join(d, n)
        for n in names
        for d in (images_dir, labels_dir)
        if os.path.exists(os.path.join(d, n))
    ]
    if existing:
        raise FileExistsError(f"{len(existing)} file(s) to write already exist, e.g. {existing[0]}")
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(labels_dir, exist_ok=True)

    shape_zyx = tuple(int(s) for s in reversed(shape))
    for i, fname in enumerate(names, start=1):
        image, label = _make_case(np.random.default_rng([seed, i]), shape_zyx)
        for array, out_dir in ((image, images_dir), (label, labels_dir)):
            itk_image = sitk.GetImageFromArray(array)
            itk_image.SetSpacing(tuple(float(s) for s in spacing))
            sitk.WriteImage(itk_image, os.path.join(out_dir, fname), useCompression=True)
