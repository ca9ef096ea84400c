"""The one display convention of every volume with patient axes (docs/datasets.md, "Orientation").

Derived from the direction of each array axis in patient (world) coordinates: the axis that points most along the
patient's left-right axis becomes X, increasing towards the patient's LEFT; the one along anterior-posterior
becomes Y, increasing towards POSTERIOR; the third is Z, its slices kept in the order given (a NIfTI file's
stored order, a DICOM series sorted along its slice normal). Radiological display, as the laterality rule
(§6.4) assumes. NIfTI affines are RAS; DICOM patient coordinates are LPS (LPS_TO_RAS converts).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def display_axes(directions_ras: np.ndarray) -> tuple[str, tuple[int, ...]]:
    """directions_ras: (3, 3), column i the direction (any length) of array axis i in RAS world coordinates.
    Returns the letters naming each array axis in the display convention ("XYZ" order of the array's axes) and
    the array axes to flip."""
    from nibabel.orientations import io_orientation

    affine = np.eye(4)
    affine[:3, :3] = directions_ras
    ornt = io_orientation(affine)  # per array axis: (world axis 0=R-L 1=A-P 2=S-I, +1 towards R/A/S)
    letters, flips = [], []
    for axis, (world, sign) in enumerate(ornt[:3]):
        letters.append("XYZ"[int(world)])
        if int(world) in (0, 1) and sign > 0:  # towards the right or anterior: reversed, to the left / posterior
            flips.append(axis)
    return "".join(letters), tuple(flips)


def dicom_directions_ras(row_cosine: Sequence[float], column_cosine: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The (3, 3) RAS directions of a DICOM series' array axes in (column index, row index, slice) order, and the
    LPS slice normal its slices are sorted along. ImageOrientationPatient's first triple is the direction of
    increasing column index (along a row), its second that of increasing row index; the normal is their cross
    product, signed so that its largest component is positive (an axial series runs foot to head, by
    ImagePositionPatient[2] ascending, whichever way its rows run)."""
    row = np.asarray(row_cosine, dtype=float)
    col = np.asarray(column_cosine, dtype=float)
    normal = np.cross(row, col)
    if normal[np.argmax(np.abs(normal))] < 0:
        normal = -normal
    return LPS_TO_RAS @ np.column_stack([row, col, normal]), normal


def zyx_to_display(vol: np.ndarray, directions_ras: np.ndarray) -> np.ndarray:
    """A (Z, Y, X[, ...]) array (stored slice, row, column) shown in the display convention, as (Z, Y, X[, ...]).
    directions_ras: the array's axes in (column, row, slice) order (dicom_directions_ras)."""
    letters, flips = display_axes(directions_ras)
    xyz = np.swapaxes(vol, 0, 2)  # (column, row, slice)
    if flips:
        xyz = np.flip(xyz, flips)
    return np.transpose(xyz, [letters.index(c) for c in "ZYX"] + list(range(3, vol.ndim)))


def zyx_index_to_display(index_zyx: Sequence[float], shape_zyx: Sequence[int], directions_ras: np.ndarray
                         ) -> tuple[float, float, float]:
    """Where a stored (slice, row, column) index lands in zyx_to_display's output, as (z, y, x); a flipped axis
    of n pixels maps c to n - 1 - c (pixel centres)."""
    letters, flips = display_axes(directions_ras)
    stored = [index_zyx[2], index_zyx[1], index_zyx[0]]  # (column, row, slice)
    n = [shape_zyx[2], shape_zyx[1], shape_zyx[0]]
    shown = {letters[a]: (n[a] - 1 - c if a in flips else c) for a, c in enumerate(stored)}
    return shown["Z"], shown["Y"], shown["X"]
