"""A scaled integer volume (NIfTI scl_slope / scl_inter) that is scaled one slice at a time.

nibabel hands out a scaled int16 CT as float64: a 987 x 512 x 512 LiTS-size volume is 0.5 GB stored and 2 GB
scaled. The volume path only ever needs a handful of slices and a bounded window sample of it, so the reader keeps
the stored integers (memory-mapped for an uncompressed .nii) and `ScaledVolume` applies nibabel's own read scaling
(`apply_read_scaling`, the same arithmetic and float type as `np.asanyarray(img.dataobj)`) to whatever is taken
out of it: a slice (`vol[z]`), a strided sample (`vol[::s, ::s, ::s]`), or the whole when a caller insists
(`np.asarray(vol)`). Views (indexing that keeps 3 or more axes, np.flip, transpose, reshape) stay lazy, so the
display reorientation (corpus.orientation) and the (Z, Y, X) reordering run on it unchanged.
"""

from __future__ import annotations

import numpy as np


class ScaledVolume:
    def __init__(self, raw: np.ndarray, slope, inter):
        self.raw, self.slope, self.inter = raw, np.asanyarray(slope), np.asanyarray(inter)
        self.dtype = self._scale(np.zeros(1, raw.dtype)).dtype
        # stored integers times a finite slope plus a finite intercept: every value finite, nothing to scan
        self.all_finite = bool(np.all(np.isfinite(self.slope)) and np.all(np.isfinite(self.inter)))

    def _scale(self, a: np.ndarray) -> np.ndarray:
        from nibabel.volumeutils import apply_read_scaling

        return apply_read_scaling(np.asarray(a), self.slope, self.inter)

    def _wrap(self, raw: np.ndarray) -> "ScaledVolume":
        return ScaledVolume(raw, self.slope, self.inter)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.raw.shape

    @property
    def ndim(self) -> int:
        return self.raw.ndim

    @property
    def size(self) -> int:
        return self.raw.size

    def __len__(self) -> int:
        return self.raw.shape[0]

    def __getitem__(self, key):
        sub = self.raw[key]
        return self._wrap(sub) if np.ndim(sub) >= 3 else self._scale(sub)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def transpose(self, *axes) -> "ScaledVolume":
        return self._wrap(self.raw.transpose(*axes))

    def reshape(self, *shape) -> "ScaledVolume":
        return self._wrap(self.raw.reshape(*shape))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._scale(self.raw)
        return out if dtype is None else out.astype(dtype)
