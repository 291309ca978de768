"""Dataset fingerprint of labeled + unlabeled images.

nnU-Net's fingerprint (``DatasetFingerprintExtractor``, file ``dataset_fingerprint.json``) holds, per labeled
case, the spacing and the shape after cropping to the nonzero region, plus the foreground intensity statistics
that CT normalisation uses. :class:`SemiSupervisedFingerprintExtractor` runs that extractor unchanged on the
labeled cases, adds the spacing and shape of every image in ``imagesUnlabeled/``, and writes the result to
``dataset_fingerprint_semisup.json`` beside the stock file, which stays exactly what
``nnUNetv2_extract_fingerprint`` writes.

What comes from where:

- ``spacings``, ``shapes_after_crop``: labeled cases (in nnU-Net's order), then unlabeled cases (sorted by id).
  These decide the target spacing, the median shape and so the patch size and network topology.
- ``foreground_intensity_properties_per_channel``: labeled foreground only, as in nnU-Net. Unlabeled images
  have no foreground mask. Only ``CTNormalization`` reads these statistics; the other schemes (z-score, rescale
  to 0-1, RGB) normalise each image by its own values, so for them the statistics are unused.
- ``median_relative_size_after_cropping``: labeled cases only, so the ``use_mask_for_norm`` decision (made on
  it) stays nnU-Net's and the normalisation of the semi-supervised plans equals the stock plans'.
- ``labeled_case_ids``, ``unlabeled_case_ids``: which cases the lists describe (the unlabeled count also sets
  the batch-size cap, see :mod:`nnunet_semisup.planners.experiment_planners`).

The stock extractor is extended by wrapping its ``run`` rather than overriding its per-case hook:
``analyze_case`` is a static method that ``run`` calls through the class name (``DatasetFingerprintExtractor.
analyze_case``), so a subclass's override would be ignored; it also reads a label file for every case and
writes to the fixed name ``dataset_fingerprint.json``.
"""

from __future__ import annotations

import multiprocessing

from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, save_json
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

from nnunet_semisup.data.unlabeled import find_unlabeled_cases, image_is_2d, read_unlabeled_case

SEMISUP_FINGERPRINT_FILE = "dataset_fingerprint_semisup.json"


def analyze_unlabeled_case(
    case_id: str,
    image_files: list[str],
    reader_writer_class: type,
    dataset_json: dict,
    dataset_is_2d: bool = False,
) -> tuple[list[float], list[int]]:
    """Spacing (mm) and shape after cropping to the nonzero region (voxels) of one unlabeled case, both in
    nnU-Net's axis order, computed as nnU-Net's ``DatasetFingerprintExtractor.analyze_case`` computes them for
    a labeled case (``crop_to_nonzero`` without a label map).

    Raises :class:`~nnunet_semisup.data.unlabeled.UnlabeledDataError` (naming the file and the fix) for an
    image that cannot be read or fails the checks of :func:`~nnunet_semisup.data.unlabeled.read_unlabeled_case`
    (``dataset_is_2d``: the labeled images are 2D, so the unlabeled ones must be).
    """
    images, properties = read_unlabeled_case(
        case_id, image_files, reader_writer_class, dataset_json, dataset_is_2d
    )
    cropped, _, _ = crop_to_nonzero(images)
    return [float(s) for s in properties["spacing"]], [int(s) for s in cropped.shape[1:]]


def _analyze_unlabeled_case_star(args: tuple) -> tuple[list[float], list[int]]:
    return analyze_unlabeled_case(*args)


class SemiSupervisedFingerprintExtractor(DatasetFingerprintExtractor):
    """nnU-Net's fingerprint extractor plus the geometry of ``imagesUnlabeled/`` (see the module docstring).

    ``run`` writes two files into ``nnUNet_preprocessed/DatasetX/``: nnU-Net's ``dataset_fingerprint.json``
    (labeled cases, by the stock code) and ``dataset_fingerprint_semisup.json`` (labeled + unlabeled geometry).
    Every unlabeled image is read and checked before either file is written, so a corrupt image stops the run
    with nothing written. The constructor already raises
    :class:`~nnunet_semisup.data.unlabeled.UnlabeledDataError` for badly named unlabeled files.
    """

    def __init__(self, dataset_name_or_id: str | int, num_processes: int = 8, verbose: bool = False):
        super().__init__(dataset_name_or_id, num_processes, verbose)
        self.unlabeled_cases = find_unlabeled_cases(self.input_folder, self.dataset_json)

    @property
    def semisup_fingerprint_file(self) -> str:
        return join(nnUNet_preprocessed, self.dataset_name, SEMISUP_FINGERPRINT_FILE)

    def run(self, overwrite_existing: bool = False) -> dict:
        """Extract (or load) the fingerprint of labeled + unlabeled cases and return it.

        As with nnU-Net, an existing fingerprint is reused unless ``overwrite_existing``; the semi-supervised one
        is also redone when the set of unlabeled case ids differs from the one it records.
        """
        if isfile(self.semisup_fingerprint_file) and not overwrite_existing:
            fingerprint = load_json(self.semisup_fingerprint_file)
            if fingerprint.get("unlabeled_case_ids") == list(self.unlabeled_cases) and isfile(
                join(nnUNet_preprocessed, self.dataset_name, "dataset_fingerprint.json")
            ):
                return fingerprint
        unlabeled_geometry = self._analyze_unlabeled_cases()
        fingerprint = dict(super().run(overwrite_existing))
        fingerprint["spacings"] = [[float(s) for s in x] for x in fingerprint["spacings"]] + [
            spacing for spacing, _ in unlabeled_geometry
        ]
        fingerprint["shapes_after_crop"] = [[int(s) for s in x] for x in fingerprint["shapes_after_crop"]] + [
            shape for _, shape in unlabeled_geometry
        ]
        fingerprint["labeled_case_ids"] = list(self.dataset)
        fingerprint["unlabeled_case_ids"] = list(self.unlabeled_cases)
        save_json(fingerprint, self.semisup_fingerprint_file, sort_keys=False)
        return fingerprint

    def _analyze_unlabeled_cases(self) -> list[tuple[list[float], list[int]]]:
        if not self.unlabeled_cases:
            return []
        # the reader nnU-Net picks for the labeled images, which the plans then name for all images
        first_labeled = next(iter(self.dataset.values()))["images"]
        reader_writer_class = determine_reader_writer_from_dataset_json(self.dataset_json, first_labeled[0])
        # unlabeled images must have the labeled images' dimensionality (2D datasets: 2D files or 1-slice 999)
        dataset_is_2d = image_is_2d(reader_writer_class().read_images(first_labeled)[1])
        args = [
            (case_id, files, reader_writer_class, self.dataset_json, dataset_is_2d)
            for case_id, files in self.unlabeled_cases.items()
        ]
        if self.num_processes <= 1 or len(args) == 1:
            return [analyze_unlabeled_case(*a) for a in args]
        with multiprocessing.get_context("spawn").Pool(min(self.num_processes, len(args))) as pool:
            return pool.map(_analyze_unlabeled_case_star, args)
