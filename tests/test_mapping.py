"""``lightning_modules.components.mapping``: a file larger than this machine's RAM + swap maps
(copy-on-write without reserving memory), writes stay private, and ``.npy`` arrays read as
``np.load(mmap_mode="c")`` reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_modules.components.mapping import map_npy, map_private, map_tensor


def _ram_and_swap_bytes() -> int:
    fields = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            fields[key] = int(value.split()[0]) * 1024
    return fields["MemTotal"] + fields.get("SwapTotal", 0)


@pytest.mark.skipif(
    Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "2",
    reason="strict overcommit: the kernel ignores MAP_NORESERVE (module docstring)",
)
def test_a_sparse_file_larger_than_memory_maps(tmp_path):
    size = 2 * _ram_and_swap_bytes()  # a private writable mapping of this size fails with ENOMEM
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: no disk used
    flat = map_tensor(path)
    assert flat.numel() == size and int(flat[size - 1]) == 0
    flat[7] = 5  # copy-on-write: this page only, the file keeps its zeros
    assert int(flat[7]) == 5
    with open(path, "rb") as f:
        assert f.read(16) == bytes(16)
    header = tmp_path / "big.npy"
    with open(header, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": (size // 4096, 2048)})
        f.truncate(f.tell() + size // 4096 * 4096)
    a = map_npy(header)
    assert a.shape == (size // 4096, 2048) and a.dtype == np.float16 and float(a[-1, -1]) == 0.0


def test_npy_arrays_read_as_numpy_reads_them(tmp_path):
    for i, array in enumerate(
        [np.arange(24, dtype=np.float32).reshape(4, 6), np.asfortranarray(np.arange(12.0).reshape(3, 4))]
    ):
        path = tmp_path / f"a{i}.npy"
        np.save(path, array)
        mapped = map_npy(path)
        assert mapped.dtype == array.dtype and np.array_equal(mapped, array)
        assert np.array_equal(torch.from_numpy(mapped).numpy(), np.load(path, mmap_mode="c"))
    mm = map_private(tmp_path / "a0.npy")
    assert len(mm) == (tmp_path / "a0.npy").stat().st_size
