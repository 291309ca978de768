"""Representative slice selection: max-cover greedy vs brute force, budgets, EIA, the plan of a dataset."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nnunet_semisup.trainers.sparsification.selection import (
    PLANE_AXIS,
    SelectionError,
    annotated_mask,
    brute_force_max_cover,
    cosine_similarity_matrix,
    coverage_value,
    equal_interval_slices,
    greedy_max_cover,
    num_selected,
    plane_slices,
)


def _plain_greedy(sim: np.ndarray, k: int) -> list[int]:
    chosen: list[int] = []
    for _ in range(k):
        gains = [
            -np.inf if i in chosen else coverage_value(sim, chosen + [i]) - coverage_value(sim, chosen)
            for i in range(len(sim))
        ]
        chosen.append(int(np.argmax(gains)))
    return chosen


def test_cosine_similarity_matches_the_definition():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(7, 5))
    sim = cosine_similarity_matrix(f)
    for i in range(7):
        for j in range(7):
            expected = f[i] @ f[j] / np.linalg.norm(f[i]) / np.linalg.norm(f[j])
            assert sim[i, j] == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(12))
def test_greedy_is_within_1_minus_1_over_e_of_brute_force_and_exact_for_one_slice(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 10))
    features = rng.normal(size=(n, 4)) + rng.normal(size=4) * (seed % 3)  # some sets clustered
    sim = cosine_similarity_matrix(features)
    for k in range(1, n + 1):
        greedy = greedy_max_cover(sim, k)
        assert len(set(greedy)) == k
        # lazy evaluation gives the plain greedy's choices (up to exact ties in gain)
        assert coverage_value(sim, greedy) == pytest.approx(coverage_value(sim, _plain_greedy(sim, k)))
        best, _ = brute_force_max_cover(sim, k)
        value = coverage_value(sim, greedy)
        assert value >= (1 - 1 / math.e) * best - 1e-9
        assert value <= best + 1e-9
        if k in (1, n):  # one slice: greedy's pick is the argmax; all slices: the only set
            assert value == pytest.approx(best)
    # the full ranking starts with the k-slice greedy sets
    assert greedy_max_cover(sim)[:3] == greedy_max_cover(sim, 3)


def test_greedy_picks_one_slice_per_cluster_first():
    # three tight clusters of sizes 5, 3, 1: the most representative slice lies in the big cluster, and the
    # greedy covers each cluster before taking a second slice of any
    rng = np.random.default_rng(1)
    centers = np.eye(3) * 10
    labels = [0] * 5 + [1] * 3 + [2]
    features = centers[labels] + rng.normal(scale=0.1, size=(9, 3))
    order = greedy_max_cover(cosine_similarity_matrix(features), 3)
    assert [labels[i] for i in order] == [0, 1, 2]


@pytest.mark.parametrize(
    ("depth", "budget", "k"), [(35, 10, 3), (50, 10, 5), (9, 10, 0), (10, 10, 1), (7, 1, 7)]
)
def test_k_is_floor_depth_over_budget_for_both_strategies(depth, budget, k):
    if k == 0:
        with pytest.raises(SelectionError, match=r"case c1, plane xz: only 9 slice\(s\).*--budget 9"):
            num_selected(depth, budget, "case c1, plane xz")
        with pytest.raises(SelectionError, match="K = floor"):
            equal_interval_slices(depth, budget)
        return
    assert num_selected(depth, budget) == k
    eia = equal_interval_slices(depth, budget)
    assert len(eia) == k and np.all(np.diff(eia) == budget)
    assert 0 <= eia[0] and eia[-1] < depth
    # centred: the gaps before the first and after the last slice differ by at most one
    assert abs(eia[0] - (depth - 1 - eia[-1])) <= 1
    rng = np.random.default_rng(depth)
    assert len(greedy_max_cover(cosine_similarity_matrix(rng.normal(size=(depth, 3))), k)) == k


def test_budget_must_be_positive():
    with pytest.raises(SelectionError, match="at least 1"):
        num_selected(10, 0)


def test_plane_slices_and_annotated_mask_follow_the_axis_convention():
    volume = np.zeros((1, 4, 5, 6), dtype=np.float32)
    volume[0, 2] = 1.0  # xy slice 2 (axis 0)
    stacks = {p: plane_slices(volume, p, 8) for p in PLANE_AXIS}
    assert [len(stacks[p]) for p in ("xy", "xz", "yz")] == [4, 5, 6]
    assert stacks["xy"][2].min() == 1.0 and stacks["xy"][1].max() == 0.0
    mask = annotated_mask((4, 5, 6), {"xy": [1], "xz": [0, 4], "yz": [5]})
    expected = np.zeros((4, 5, 6), dtype=bool)
    expected[1] = expected[:, 0] = expected[:, 4] = expected[:, :, 5] = True
    assert np.array_equal(mask, expected)


@pytest.fixture(scope="module")
def small_raw_dataset(tmp_path_factory):
    """A raw nnU-Net dataset (imagesTr/labelsTr) of 3 synthetic cases of size x=24, y=20, z=16."""
    import shutil

    from nnunet_semisup.data.synthetic import write_synthetic_cases

    root = tmp_path_factory.mktemp("sel")
    write_synthetic_cases(str(root / "src"), 3, shape=(24, 20, 16), seed=5)
    ds = root / "Dataset990_Sel"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    for f in sorted((root / "src" / "images").iterdir()):
        case = f.name[: -len(".nii.gz")]
        shutil.copy(f, ds / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.copy(root / "src" / "labels" / f.name, ds / "labelsTr" / f.name)
    (ds / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MRI"},
                "labels": {"background": 0, "a": 1, "b": 2},
                "numTraining": 3,
                "file_ending": ".nii.gz",
            }
        )
    )
    return ds


def test_select_slices_command_writes_plan_and_summary(small_raw_dataset, tmp_path):
    from nnunet_semisup.cli import main

    out = tmp_path / "plan_ra.json"
    assert (
        main(
            ["select-slices", "-d", str(small_raw_dataset), "--budget", "4", "-o", str(out), "--no-progress"]
        )
        == 0
    )
    plan = json.loads(out.read_text())
    assert plan["strategy"] == "ra" and plan["budget"] == 4 and plan["features"] == "autoencoder"
    assert plan["plane_axis"] == {"xy": 0, "xz": 1, "yz": 2}
    assert sorted(plan["cases"]) == ["synth_001", "synth_002", "synth_003"]
    for entry in plan["cases"].values():
        assert entry["shape"] == [16, 20, 24]  # (z, y, x) of an image of size x=24, y=20, z=16
        assert [len(entry[p]) for p in ("xy", "xz", "yz")] == [4, 5, 6]
        for p in ("xy", "xz", "yz"):
            assert len(set(entry[p])) == len(entry[p])
            assert all(0 <= i < entry["shape"][PLANE_AXIS[p]] for i in entry[p])
    summary = (tmp_path / "plan_ra.txt").read_text()
    assert "synth_002 (shape (16, 20, 24)): xy 4/16" in summary and "45 slices to annotate" in summary

    # seeded: the same data gives the same plan
    again = tmp_path / "again.json"
    main(["select-slices", "-d", str(small_raw_dataset), "--budget", "4", "-o", str(again), "--no-progress"])
    assert json.loads(again.read_text())["cases"] == plan["cases"]

    eia = tmp_path / "plan_eia.json"
    main(
        ["select-slices", "-d", str(small_raw_dataset), "--budget", "4", "--strategy", "eia", "-o", str(eia)]
    )
    entry = json.loads(eia.read_text())["cases"]["synth_001"]
    assert entry["xy"] == [1, 5, 9, 13] and entry["yz"] == [1, 5, 9, 13, 17, 21]

    # an existing plan is not overwritten
    assert main(["select-slices", "-d", str(small_raw_dataset), "--budget", "4", "-o", str(out)]) == 2


def test_select_slices_refuses_a_budget_larger_than_a_plane(small_raw_dataset, tmp_path, capsys):
    from nnunet_semisup.cli import main

    out = tmp_path / "plan.json"
    assert main(["select-slices", "-d", str(small_raw_dataset), "--budget", "17", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "case synth_001, plane xy: only 16 slice(s)" in err and "--budget 16" in err
    assert not out.exists()
