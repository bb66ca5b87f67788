"""Grids of the tiny generated cohorts the data tests share (the field of view is kept)."""

HCC_SHAPE = (48, 48, 24)  # 8 mm voxels
BRATS_SHAPE = (48, 48, 36)  # 4 mm voxels
