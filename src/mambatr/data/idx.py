"""Reader for IDX files (the MNIST / Fashion-MNIST format), raw or gzip-compressed.

Layout: 2 zero bytes, a dtype code, the number of dims n, n big-endian uint32 sizes, then the
values in big-endian C order (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from mambatr.data.errors import DatasetError, DatasetNotFoundError

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (``.gz`` decompressed by name), in native byte order.

    Raises DatasetNotFoundError if the file is missing and DatasetError if the magic number is wrong or
    the payload size differs from the one the header announces (truncated or corrupt file).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"IDX file not found: {path}")
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise DatasetError(f"{path}: corrupt or truncated gzip data ({error})") from error
    return parse_idx(data, source=str(path))


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file; ``source`` names it in error messages."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DatasetError(
            f"{source}: not an IDX file (magic bytes {data[:4].hex() or 'missing'}; "
            f"expected 00 00, a dtype code in {sorted(IDX_DTYPES)}, and the number of dims)"
        )
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{source}: truncated IDX header ({len(data)} bytes, {ndim} dims need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(
            f"{source}: header says shape {shape} ({expected:,} bytes of data) but the file "
            f"has {len(data) - header:,}: truncated or corrupt"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))  # astype copies: writable and native-endian
