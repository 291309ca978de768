"""Tests for nnunet_semisup.data.benchmark (splits, source discovery, dataset building)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_semisup.data import benchmark
from nnunet_semisup.data.benchmark import (
    MANIFEST_NAME,
    BenchmarkSplit,
    find_duplicate_images,
    find_source_cases,
    make_benchmark,
    split_cases,
)
from nnunet_semisup.data.synthetic import write_synthetic_cases

HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "msd_hippocampus"
HIPPOCAMPUS_LABELS = {"background": 0, "anterior": 1, "posterior": 2}
N_SYNTH = 14


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of everything under folder, to prove it was not touched."""
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def synth_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synth_source")
    write_synthetic_cases(str(folder), N_SYNTH, shape=(16, 16, 16), seed=3)
    return folder


# ---------------------------------------------------------------- split_cases


IDS = [f"case_{i:03d}" for i in range(40)]


def test_split_is_deterministic_and_order_independent() -> None:
    a = split_cases(IDS, n_labeled=5, n_test=10, seed=1)
    b = split_cases(list(reversed(IDS)), n_labeled=5, n_test=10, seed=1)
    assert a == b
    assert a.labeled == sorted(a.labeled) and a.test == sorted(a.test)
    c = split_cases(IDS, n_labeled=5, n_test=10, seed=2)
    assert (c.labeled, c.test) != (a.labeled, a.test)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_nested_with_fixed_test_set(seed: int) -> None:
    splits = {n: split_cases(IDS, n_labeled=n, n_test=10, seed=seed) for n in (1, 5, 10, 20, 30)}
    test_sets = {tuple(s.test) for s in splits.values()}
    assert len(test_sets) == 1, "the test set must not depend on n_labeled"
    assert set(splits[1].labeled) < set(splits[5].labeled) < set(splits[10].labeled) < set(splits[20].labeled)
    for n, s in splits.items():
        assert len(s.labeled) == n and len(s.test) == 10
        assert len(s.unlabeled) == 30 - n  # default: all the rest
        assert not set(s.labeled) & set(s.test)
        assert not set(s.unlabeled) & set(s.test)
        assert not set(s.labeled) & set(s.unlabeled)
        assert set(s.labeled) | set(s.unlabeled) | set(s.test) == set(IDS)


def test_split_explicit_unlabeled_count_is_nested_too() -> None:
    small = split_cases(IDS, n_labeled=5, n_test=10, n_unlabeled=4, seed=0)
    large = split_cases(IDS, n_labeled=5, n_test=10, n_unlabeled=12, seed=0)
    assert len(small.unlabeled) == 4 and len(large.unlabeled) == 12
    assert set(small.unlabeled) < set(large.unlabeled)
    assert small.labeled == large.labeled and small.test == large.test
    assert len(set(small.labeled) | set(small.unlabeled) | set(small.test)) == 19
    # Labeled sets do not depend on n_test either (documented property).
    assert split_cases(IDS, n_labeled=5, n_test=0, seed=0).labeled == small.labeled


def test_split_test_set_depends_only_on_ids_n_test_seed() -> None:
    base = split_cases(IDS, n_labeled=3, n_test=8, seed=4).test
    assert split_cases(IDS, n_labeled=20, n_test=8, n_unlabeled=2, seed=4).test == base
    assert split_cases(IDS, n_labeled=3, n_test=8, seed=5).test != base


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_labeled": 31, "n_test": 10}, "only 40 are available"),
        ({"n_labeled": 5, "n_test": 41}, "only 40 are available"),
        ({"n_labeled": 5, "n_test": 10, "n_unlabeled": 26}, "exceeds the 25 cases available"),
        ({"n_labeled": 0, "n_test": 10}, "n_labeled must be at least 1"),
        ({"n_labeled": 5, "n_test": -1}, "n_test"),
        ({"n_labeled": 5, "n_test": 10, "n_unlabeled": -1}, "n_unlabeled"),
    ],
)
def test_split_rejects_bad_counts(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_cases(IDS, **kwargs)


def test_split_rejects_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="case_001"):
        split_cases([*IDS, "case_001"], n_labeled=1, n_test=1)


def test_split_uses_everything_when_counts_match_exactly() -> None:
    s = split_cases(IDS, n_labeled=30, n_test=10)
    assert len(s.labeled) == 30 and s.unlabeled == [] and len(s.test) == 10


# ---------------------------------------------------------------- find_source_cases


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_find_source_cases_decathlon_naming(tmp_path: Path) -> None:
    for case in ("hippocampus_001", "hippocampus_003"):
        _touch(tmp_path / "images" / f"{case}.nii.gz")
        _touch(tmp_path / "labels" / f"{case}.nii.gz")
    # macOS junk is skipped silently, a foreign file with a warning.
    _touch(tmp_path / "images" / "._hippocampus_001.nii.gz")
    _touch(tmp_path / "labels" / "._hippocampus_001.nii.gz")
    _touch(tmp_path / "images" / "notes.txt")
    with pytest.warns(UserWarning, match="notes.txt"):
        cases = find_source_cases(str(tmp_path / "images"), str(tmp_path / "labels"))
    assert list(cases) == ["hippocampus_001", "hippocampus_003"]
    assert cases["hippocampus_001"] == {
        "images": [str(tmp_path / "images" / "hippocampus_001.nii.gz")],
        "label": str(tmp_path / "labels" / "hippocampus_001.nii.gz"),
    }


def test_find_source_cases_nnunet_naming_multichannel(tmp_path: Path) -> None:
    for case in ("b_case", "a_case"):
        for c in (1, 0):
            _touch(tmp_path / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        _touch(tmp_path / "labelsTr" / f"{case}.nii.gz")
    cases = find_source_cases(str(tmp_path / "imagesTr"), str(tmp_path / "labelsTr"))
    assert list(cases) == ["a_case", "b_case"]
    assert cases["a_case"]["images"] == [
        str(tmp_path / "imagesTr" / "a_case_0000.nii.gz"),
        str(tmp_path / "imagesTr" / "a_case_0001.nii.gz"),
    ]
    assert cases["b_case"]["label"] == str(tmp_path / "labelsTr" / "b_case.nii.gz")

    unlabeled = find_source_cases(str(tmp_path / "imagesTr"), None)
    assert all(c["label"] is None for c in unlabeled.values()) and len(unlabeled) == 2


def test_find_source_cases_decathlon_ids_with_four_digit_suffix(tmp_path: Path) -> None:
    # "patient_0001" looks like a channel suffix, but the label of the same name says it is a case id.
    for case in ("patient_0001", "patient_0002"):
        _touch(tmp_path / "images" / f"{case}.nii.gz")
        _touch(tmp_path / "labels" / f"{case}.nii.gz")
    cases = find_source_cases(str(tmp_path / "images"), str(tmp_path / "labels"))
    assert list(cases) == ["patient_0001", "patient_0002"]


def test_find_source_cases_errors(tmp_path: Path) -> None:
    _touch(tmp_path / "images" / "a.nii.gz")
    _touch(tmp_path / "images" / "b.nii.gz")
    _touch(tmp_path / "labels" / "a.nii.gz")
    with pytest.raises(ValueError, match="'b' has no label"):
        find_source_cases(str(tmp_path / "images"), str(tmp_path / "labels"))

    _touch(tmp_path / "mc" / "x_0000.nii.gz")
    _touch(tmp_path / "mc" / "x_0001.nii.gz")
    _touch(tmp_path / "mc" / "y_0000.nii.gz")
    with pytest.raises(ValueError, match=r"'y' .* has channels"):
        find_source_cases(str(tmp_path / "mc"), None)

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        find_source_cases(str(tmp_path / "empty"), None)


# ---------------------------------------------------------------- make_benchmark


def _check_dataset(folder: Path, n_labeled: int, n_unlabeled: int, n_test: int, n_channels: int = 1) -> dict:
    """Check layout, names, dataset.json and manifest against the files on disk; return the manifest."""
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["numTraining"] == n_labeled
    assert dataset_json["numUnlabeled"] == n_unlabeled and dataset_json["numTest"] == n_test
    assert dataset_json["file_ending"] == ".nii.gz"
    assert manifest["counts"] == {
        "labeled": n_labeled,
        "unlabeled": n_unlabeled,
        "test": n_test,
        "source_cases": manifest["counts"]["source_cases"],
    }

    channels = [f"_{c:04d}.nii.gz" for c in range(n_channels)]
    expected = set()
    for sub, label_sub, key in (
        ("imagesTr", "labelsTr", "labeled"),
        ("imagesUnlabeled", None, "unlabeled"),
        ("imagesTs", "labelsTs", "test"),
    ):
        ids = manifest[key]
        assert len(ids) == dataset_json["numTraining" if key == "labeled" else f"num{key.capitalize()}"]
        expected |= {f"{sub}/{i}{ch}" for i in ids for ch in channels}
        if label_sub:
            expected |= {f"{label_sub}/{i}.nii.gz" for i in ids}
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*.nii.gz")}
    assert on_disk == expected == set(manifest["files"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["dataset.json", MANIFEST_NAME, "imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs"]
    )
    for rel, src in manifest["files"].items():
        assert (folder / rel).read_bytes() == Path(src).read_bytes()
    return manifest


def test_make_benchmark_from_folder_pair(synth_source: Path, tmp_path: Path) -> None:
    before = _snapshot(synth_source)
    raw = tmp_path / "nnUNet_raw"
    out = make_benchmark(
        str(raw),
        7,
        "Synth",
        images_dir=str(synth_source / "images"),
        labels_dir=str(synth_source / "labels"),
        n_labeled=3,
        n_test=4,
        n_unlabeled=5,
        seed=0,
    )
    assert Path(out) == raw / "Dataset007_Synth"
    manifest = _check_dataset(Path(out), 3, 5, 4)
    split = split_cases([f"synth_{i:03d}" for i in range(1, N_SYNTH + 1)], 3, 4, 5, seed=0)
    assert (manifest["labeled"], manifest["unlabeled"], manifest["test"]) == (
        split.labeled,
        split.unlabeled,
        split.test,
    )
    assert manifest["seed"] == 0 and manifest["counts"]["source_cases"] == N_SYNTH
    assert manifest["source"] == {
        "images_dir": str(synth_source / "images"),
        "labels_dir": str(synth_source / "labels"),
    }
    assert manifest["files"][f"labelsTs/{split.test[0]}.nii.gz"] == str(
        synth_source / "labels" / f"{split.test[0]}.nii.gz"
    )
    dataset_json = json.loads((Path(out) / "dataset.json").read_text())
    # Inferred from the label values: the synthetic labels are 0, 1, 2.
    assert dataset_json["labels"] == {"background": 0, "label_1": 1, "label_2": 2}
    assert dataset_json["channel_names"] == {"0": "MRI"}
    assert not any(p.name.startswith(".") for p in raw.iterdir()), "temporary folder left behind"
    assert _snapshot(synth_source) == before, "the source must never be modified"


def test_make_benchmark_is_deterministic_and_never_overwrites(synth_source: Path, tmp_path: Path) -> None:
    before = _snapshot(synth_source)
    raw = tmp_path / "nnUNet_raw"
    kwargs = {
        "images_dir": str(synth_source / "images"),
        "labels_dir": str(synth_source / "labels"),
        "n_labeled": 2,
        "n_test": 3,
        "seed": 5,
        "label_names": {"background": 0, "outer": 1, "inner": 2},
        "channel_names": {"0": "T1"},
    }
    a = Path(make_benchmark(str(raw), 11, "A", **kwargs))
    b = Path(make_benchmark(str(raw), 12, "B", **kwargs))
    for name in (MANIFEST_NAME, "dataset.json"):
        ja, jb = json.loads((a / name).read_text()), json.loads((b / name).read_text())
        ja.pop("name", None)
        jb.pop("name", None)
        assert ja == jb
    assert json.loads((a / "dataset.json").read_text())["labels"] == kwargs["label_names"]
    assert json.loads((a / "dataset.json").read_text())["channel_names"] == {"0": "T1"}
    _check_dataset(a, 2, N_SYNTH - 5, 3)

    existing = _snapshot(a)
    with pytest.raises(FileExistsError, match=r"Dataset011_A.*another --out-id"):
        make_benchmark(str(raw), 11, "Other", **kwargs)
    assert _snapshot(a) == existing
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset011_A", "Dataset012_B"]
    assert _snapshot(synth_source) == before


def test_make_benchmark_link(synth_source: Path, tmp_path: Path) -> None:
    out = Path(
        make_benchmark(
            str(tmp_path),
            3,
            "Linked",
            images_dir=str(synth_source / "images"),
            labels_dir=str(synth_source / "labels"),
            n_labeled=2,
            n_test=2,
            n_unlabeled=2,
            label_names={"background": 0, "a": 1, "b": 2},
            link=True,
        )
    )
    manifest = _check_dataset(out, 2, 2, 2)
    for rel, src in manifest["files"].items():
        assert (out / rel).is_symlink() and os.readlink(out / rel) == src


def test_make_benchmark_crash_leaves_nothing(
    synth_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def failing_copy(src: str, dst: str) -> None:
        calls.append(src)
        if len(calls) == 4:
            raise OSError("disk full")
        shutil.copyfile(src, dst)

    monkeypatch.setattr(benchmark.shutil, "copy2", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        make_benchmark(
            str(tmp_path),
            9,
            "Crash",
            images_dir=str(synth_source / "images"),
            labels_dir=str(synth_source / "labels"),
            n_labeled=3,
            n_test=3,
            label_names={"background": 0, "a": 1, "b": 2},
        )
    assert list(tmp_path.iterdir()) == []


def test_make_benchmark_argument_errors(synth_source: Path, tmp_path: Path) -> None:
    pair = {"images_dir": str(synth_source / "images"), "labels_dir": str(synth_source / "labels")}
    with pytest.raises(ValueError, match="exactly one source"):
        make_benchmark(str(tmp_path), 1, "X", n_labeled=1, n_test=1)
    with pytest.raises(ValueError, match="only 14 are available"):
        make_benchmark(str(tmp_path), 1, "X", n_labeled=10, n_test=5, **pair)
    with pytest.raises(ValueError, match="dataset_id"):
        make_benchmark(str(tmp_path), 1000, "X", n_labeled=1, n_test=1, **pair)
    with pytest.raises(ValueError, match="channel_names"):
        make_benchmark(
            str(tmp_path), 1, "X", n_labeled=1, n_test=1, channel_names={"0": "a", "1": "b"}, **pair
        )
    assert list(tmp_path.iterdir()) == []


def test_make_benchmark_from_nnunet_raw_dataset(synth_source: Path, tmp_path: Path) -> None:
    # A two-channel nnU-Net raw dataset built by hand; its dataset.json must be reused.
    src = tmp_path / "Dataset050_Source"
    for sub in ("imagesTr", "labelsTr"):
        (src / sub).mkdir(parents=True)
    case_ids = [f"synth_{i:03d}" for i in range(1, 11)]
    for case in case_ids:
        for c in range(2):
            shutil.copy(
                synth_source / "images" / f"{case}.nii.gz", src / "imagesTr" / f"{case}_{c:04d}.nii.gz"
            )
        shutil.copy(synth_source / "labels" / f"{case}.nii.gz", src / "labelsTr" / f"{case}.nii.gz")
    source_json = {
        "channel_names": {"0": "CT", "1": "noNorm"},
        "labels": {"background": 0, "outer": 1, "inner": 2},
        "numTraining": 10,
        "file_ending": ".nii.gz",
    }
    (src / "dataset.json").write_text(json.dumps(source_json))
    before = _snapshot(src)

    out = Path(
        make_benchmark(
            str(tmp_path / "raw"), 51, "FromRaw", source_dataset_dir=str(src), n_labeled=4, n_test=3, seed=2
        )
    )
    manifest = _check_dataset(out, 4, 3, 3, n_channels=2)
    dataset_json = json.loads((out / "dataset.json").read_text())
    assert dataset_json["labels"] == source_json["labels"]
    assert dataset_json["channel_names"] == source_json["channel_names"]
    assert manifest["source"] == {"source_dataset_dir": str(src)}
    split = split_cases(case_ids, 4, 3, seed=2)
    assert manifest["labeled"] == split.labeled and manifest["test"] == split.test
    assert _snapshot(src) == before


@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason=f"real data not available at {HIPPOCAMPUS}")
def test_make_benchmark_on_real_hippocampus_cases(tmp_path: Path) -> None:
    # 12 real cases via symlinks, so the test reads real files without copying all 208.
    all_ids = sorted(p.name[: -len(".nii.gz")] for p in (HIPPOCAMPUS / "images").glob("hippocampus_*.nii.gz"))
    assert len(all_ids) >= 12
    subset = tmp_path / "subset"
    for sub in ("images", "labels"):
        (subset / sub).mkdir(parents=True)
        for case in all_ids[:12]:
            (subset / sub / f"{case}.nii.gz").symlink_to(HIPPOCAMPUS / sub / f"{case}.nii.gz")

    out = Path(
        make_benchmark(
            str(tmp_path / "raw"),
            4,
            "Hippocampus",
            images_dir=str(subset / "images"),
            labels_dir=str(subset / "labels"),
            n_labeled=3,
            n_test=4,
            seed=0,
            label_names=HIPPOCAMPUS_LABELS,
        )
    )
    manifest = _check_dataset(out, 3, 5, 4)
    assert json.loads((out / "dataset.json").read_text())["labels"] == HIPPOCAMPUS_LABELS
    case = manifest["labeled"][0]
    image = sitk.ReadImage(str(out / "imagesTr" / f"{case}_0000.nii.gz"))
    label = sitk.ReadImage(str(out / "labelsTr" / f"{case}.nii.gz"))
    assert image.GetSize() == label.GetSize()
    assert set(np.unique(sitk.GetArrayViewFromImage(label))) <= {0, 1, 2}
    # The whole-folder discovery sees every real case, none of the hidden files.
    assert list(find_source_cases(str(HIPPOCAMPUS / "images"), str(HIPPOCAMPUS / "labels"))) == all_ids


# ---------------------------------------------------------------- label values and duplicate images


def _copy_source(synth_source: Path, tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    shutil.copytree(synth_source, src)
    return src / "images", src / "labels"


def test_label_values_the_labels_do_not_declare_are_refused(synth_source: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    images, labels = _copy_source(synth_source, tmp_path)
    # a source whose labels skip a value: 0, 1, 3 (what a user with a removed class has)
    for path in sorted(labels.glob("*.nii.gz")):
        img = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(img)
        arr[arr == 2] = 3
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        sitk.WriteImage(out, str(path))
    raw = tmp_path / "raw"
    kwargs = dict(images_dir=str(images), labels_dir=str(labels), n_labeled=4, n_test=3)
    names = {"background": 0, "a": 1, "b": 2}
    with pytest.raises(ValueError, match=r"holds value\(s\) \[3\].*declare only \[0, 1, 2\].*relabel"):
        make_benchmark(str(raw), 21, "Gap", label_names=names, **kwargs)
    assert not raw.exists() or not list(raw.iterdir())  # nothing written
    # declaring the value it holds is fine (nnU-Net's own check then decides); inference names the gap
    with pytest.raises(ValueError, match="not consecutive"):
        make_benchmark(str(raw), 21, "Gap", **kwargs)
    # the console script: the message and the fix, exit 2, no traceback
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "nnunet-semisup"), "make-benchmark", "--images", str(images),
         "--labels", str(labels), "--labeled", "4", "--test", "3", "--out-id", "21", "--name", "Gap",
         "--label-names", "a,b", "--raw-dir", str(raw)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "holds value(s) [3]" in proc.stderr and "Traceback" not in proc.stderr


def test_a_test_image_copied_into_another_part_is_refused(synth_source: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    images, labels = _copy_source(synth_source, tmp_path)
    split = split_cases([p.name[: -len(".nii.gz")] for p in images.glob("*.nii.gz")], 4, 3, seed=0)
    test_case = split.test[0]
    # the same voxels under another name and another header (origin): only the content gives it away
    img = sitk.ReadImage(str(images / f"{test_case}.nii.gz"))
    img.SetOrigin((5.0, 5.0, 5.0))
    sitk.WriteImage(img, str(images / "zz_copy.nii.gz"))
    shutil.copy(labels / f"{test_case}.nii.gz", labels / "zz_copy.nii.gz")
    copied = BenchmarkSplit(labeled=split.labeled, unlabeled=[*split.unlabeled, "zz_copy"], test=split.test)
    raw = tmp_path / "raw"
    with pytest.raises(ValueError, match=rf"unlabeled case 'zz_copy' = test case '{test_case}'.*remove"):
        make_benchmark(str(raw), 22, "Leak", images_dir=str(images), labels_dir=str(labels), split=copied)
    assert not raw.exists() or not list(raw.iterdir())
    # in the same part a duplicate leaks nothing: built
    same_part = BenchmarkSplit(
        labeled=split.labeled, unlabeled=split.unlabeled, test=[*split.test, "zz_copy"]
    )
    make_benchmark(str(raw), 22, "Ok", images_dir=str(images), labels_dir=str(labels), split=same_part)
    assert find_duplicate_images(
        {"test": {test_case: [str(images / f"{test_case}.nii.gz")]},
         "unlabeled": {"zz_copy": [str(images / "zz_copy.nii.gz")], split.unlabeled[0]:
                       [str(images / f"{split.unlabeled[0]}.nii.gz")]}}
    ) == [("test", test_case, "unlabeled", "zz_copy")]  # fmt: skip
