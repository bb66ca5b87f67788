"""Tests for models/dicom.py: DICOM series geometry to a RAS+ `Volume`."""

from __future__ import annotations

import copy
import random

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from models.contract import ContractError, Volume
from models.dicom import DicomGeometryError, series_from_volume, volume_from_series


def _volume(shape=(12, 10, 6), spacing=(2.0, 3.0, 5.0)) -> Volume:
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, size=shape).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-10.0, 20.0, 30.0]
    return Volume(array, affine)


def test_round_trip_shuffled_series_gives_same_array_and_affine() -> None:
    volume = _volume()
    datasets = series_from_volume(volume)
    random.Random(1).shuffle(datasets)
    out = volume_from_series(datasets)
    np.testing.assert_allclose(out.array, volume.array, atol=0.5)
    np.testing.assert_allclose(out.affine, volume.affine, atol=1e-6)


def test_round_trip_oblique_flipped_affine() -> None:
    volume = _volume()
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    affine = volume.affine.copy()
    affine[:3, :3] = rotation @ affine[:3, :3]
    volume = Volume(volume.array, affine)
    out = volume_from_series(series_from_volume(volume))
    # Sorting along the normal may reverse k; the world position of every voxel must agree.
    ijk = np.array([[3, 4, 2, 1]]).T
    world = volume.affine @ ijk
    back = np.linalg.solve(out.affine, world).round().astype(int)[:3, 0]
    assert out.array[tuple(back)] == pytest.approx(volume.array[3, 4, 2], abs=0.5)


@pytest.mark.parametrize(
    ("modality", "sop_class"),
    [
        ("CT", "1.2.840.10008.5.1.4.1.1.2"),
        ("MR", "1.2.840.10008.5.1.4.1.1.4"),
        ("PT", "1.2.840.10008.5.1.4.1.1.128"),
    ],
)
def test_a_series_carries_the_sop_class_of_its_own_modality(modality: str, sop_class: str) -> None:
    datasets = series_from_volume(
        _volume(), modality=modality, rescale_intercept=0.0 if modality != "CT" else -1024.0
    )
    assert {(ds.Modality, ds.SOPClassUID, ds.file_meta.MediaStorageSOPClassUID) for ds in datasets} == {
        (modality, sop_class, sop_class)
    }
    with pytest.raises(ValueError, match="modality must be one of"):
        series_from_volume(_volume(), modality="XA")


def test_rescale_slope_and_intercept_applied_per_slice() -> None:
    datasets = series_from_volume(_volume(), rescale_slope=2.0, rescale_intercept=-2048.0)
    out = volume_from_series(datasets)
    np.testing.assert_allclose(out.array, _volume().array, atol=1.0)


def test_integer_values_are_kept_exactly_as_int16_else_float32() -> None:
    """A CT in HU (integers) comes back int16, exact, at half the memory of float32; a rescale
    to fractions, or a slice beyond int16's range (even the last), gives float32 throughout."""
    volume = _volume()
    out = volume_from_series(series_from_volume(volume))
    assert out.array.dtype == np.int16
    np.testing.assert_array_equal(out.array, volume.array)
    halves = volume_from_series(series_from_volume(volume, rescale_slope=0.5, rescale_intercept=-1000.0))
    assert halves.array.dtype == np.float32
    np.testing.assert_allclose(halves.array, volume.array, atol=0.25)
    bright = volume.array.copy()
    bright[:, :, -1] += 40000.0
    wide = volume_from_series(series_from_volume(Volume(bright, volume.affine), rescale_intercept=-1000.0))
    assert wide.array.dtype == np.float32
    np.testing.assert_array_equal(wide.array, bright)


def test_pixel_data_can_be_released_as_it_is_decoded() -> None:
    datasets = series_from_volume(_volume())
    out = volume_from_series(datasets, release_pixels=True)
    np.testing.assert_array_equal(out.array, _volume().array)
    assert not any("PixelData" in ds for ds in datasets)
    assert all("ImagePositionPatient" in ds for ds in datasets)  # the headers stay


def test_single_slice_uses_slice_thickness() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = volume_from_series([ds])
    assert out.array.shape == (ds.Columns, ds.Rows, 1)
    assert out.spacing[2] == pytest.approx(float(ds.SliceThickness))
    # LPS -> RAS: x and y of the origin negated.
    assert out.affine[0, 3] == pytest.approx(-float(ds.ImagePositionPatient[0]))
    assert out.array.min() < -500  # HU after rescale


def test_missing_slice_is_refused() -> None:
    datasets = series_from_volume(_volume())
    del datasets[3]
    with pytest.raises(DicomGeometryError, match="slice\\(s\\) missing"):
        volume_from_series(datasets)


def test_non_uniform_spacing_is_refused() -> None:
    datasets = series_from_volume(_volume())
    datasets[2].ImagePositionPatient[2] += 1.5
    with pytest.raises(DicomGeometryError, match="not uniform"):
        volume_from_series(datasets)


def test_gantry_tilt_is_refused() -> None:
    datasets = series_from_volume(_volume())
    for k, ds in enumerate(datasets):
        ds.ImagePositionPatient[1] += 2.0 * k  # shear along y while z advances 5 mm
    with pytest.raises(DicomGeometryError, match="gantry tilt") as info:
        volume_from_series(datasets)
    assert info.value.field == "GantryDetectorTilt"


def test_mixed_orientation_is_refused() -> None:
    datasets = series_from_volume(_volume())
    datasets[1].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    with pytest.raises(DicomGeometryError, match="different orientations"):
        volume_from_series(datasets)


def test_mismatched_matrix_is_refused() -> None:
    datasets = series_from_volume(_volume())
    datasets[1].Rows = 11
    with pytest.raises(DicomGeometryError, match="matrix sizes"):
        volume_from_series(datasets)


def test_duplicate_position_is_refused() -> None:
    datasets = series_from_volume(_volume())
    datasets.append(copy.deepcopy(datasets[0]))
    datasets[-1].SOPInstanceUID = generate_uid()  # a second acquisition at the same place
    with pytest.raises(DicomGeometryError, match="share one position"):
        volume_from_series(datasets)


def test_instances_sharing_one_sop_instance_uid_are_refused() -> None:
    datasets = series_from_volume(_volume())
    for ds in datasets:
        ds.SOPInstanceUID = datasets[0].SOPInstanceUID  # each slice elsewhere, one identity
    with pytest.raises(DicomGeometryError, match="share one SOPInstanceUID") as info:
        volume_from_series(datasets)
    assert info.value.field == "SOPInstanceUID"


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("PixelSpacing", [-2.0, 3.0], "must be positive"),  # would mirror the image
        ("PixelSpacing", [0.0, 0.0], "must be positive"),
        ("ImagePositionPatient", ["nan", "0", "0"], "not a finite number"),  # would sort anywhere
        ("RescaleSlope", 0, "every pixel the intercept"),  # was read as 1: a guessed image
    ],
)
def test_impossible_header_numbers_are_refused(keyword: str, value: list, message: str) -> None:
    datasets = series_from_volume(_volume())
    setattr(datasets[2], keyword, value)
    with pytest.raises(DicomGeometryError, match=message) as raised:
        volume_from_series(datasets)
    assert raised.value.field == keyword


def test_empty_rescale_tags_mean_the_identity() -> None:
    volume = _volume()
    datasets = series_from_volume(volume)
    slope, intercept = float(datasets[0].RescaleSlope), float(datasets[0].RescaleIntercept)
    assert intercept != 0
    for ds in datasets:
        ds.RescaleSlope, ds.RescaleIntercept = "", ""
    stored = volume_from_series(datasets).array  # the stored values as they are
    assert np.allclose(stored, (volume.array - intercept) / slope, atol=0.5 + 1e-3)


def test_several_series_are_refused() -> None:
    a = series_from_volume(_volume())
    b = series_from_volume(_volume())
    with pytest.raises(DicomGeometryError, match="different series"):
        volume_from_series(a + b)


def test_empty_and_no_pixels_are_refused() -> None:
    with pytest.raises(ContractError, match="no DICOM instances"):
        volume_from_series([])
    ds = series_from_volume(_volume())[0]
    del ds.PixelData
    with pytest.raises(DicomGeometryError, match="no pixel data"):
        volume_from_series([ds])


def test_corrupt_pixel_data_is_refused() -> None:
    datasets = series_from_volume(_volume())
    datasets[0].PixelData = datasets[0].PixelData[:10]
    with pytest.raises(DicomGeometryError, match="cannot be decoded") as info:
        volume_from_series(datasets)
    assert info.value.field == "PixelData"


def test_colour_image_is_refused() -> None:
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm"))
    with pytest.raises(DicomGeometryError, match="not a greyscale image"):
        volume_from_series([ds])


def _enhanced(volume: Volume) -> Dataset:
    """An enhanced multi-frame instance built from the classic series of `volume`."""
    slices = series_from_volume(volume)
    ds = copy.deepcopy(slices[0])
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
        delattr(ds, keyword)
    ds.NumberOfFrames = len(slices)
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = slices[0].ImageOrientationPatient
    measures = Dataset()
    measures.PixelSpacing = slices[0].PixelSpacing
    measures.SliceThickness = slices[0].SliceThickness
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    order = list(range(len(slices)))[::-1]  # frames stored in reverse: reading must sort
    for index in order:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = slices[index].ImagePositionPatient
        item.PlanePositionSequence = DicomSequence([position])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = b"".join(slices[i].PixelData for i in order)
    return ds


def test_enhanced_multiframe_is_read_from_functional_groups() -> None:
    volume = _volume()
    out = volume_from_series([_enhanced(volume)])
    np.testing.assert_allclose(out.array, volume.array, atol=0.5)
    np.testing.assert_allclose(out.affine, volume.affine, atol=1e-6)


def test_multiframe_without_functional_groups_is_refused() -> None:
    ds = _enhanced(_volume())
    del ds.PerFrameFunctionalGroupsSequence
    with pytest.raises(DicomGeometryError, match="not an enhanced image"):
        volume_from_series([ds])


@pytest.mark.parametrize("claimed", [3, 10**8], ids=["fewer", "a billion-pixel claim"])
def test_multiframe_counting_other_frames_than_it_describes_is_refused(claimed: int) -> None:
    ds = _enhanced(_volume())  # 6 frames, each with its position
    ds.NumberOfFrames = claimed
    with pytest.raises(DicomGeometryError, match="per-frame functional groups") as info:
        volume_from_series([ds])
    assert info.value.field == "NumberOfFrames"


def test_multiframe_pixel_data_holding_more_frames_than_counted_is_refused() -> None:
    ds = _enhanced(_volume())
    ds.PixelData = ds.PixelData * 2  # 12 frames of pixels for 6 described
    with pytest.raises(DicomGeometryError, match="the file is inconsistent") as info:
        volume_from_series([ds])
    assert info.value.field == "PixelData"
