"""The safetensors file format in numpy alone (the exported loader reads parameters
without the `safetensors` package, and writes them the same way).

Layout: an 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__":
{str: str}}, padded with spaces to a multiple of 8, then the tensors' bytes
(little-endian, C order) with offsets relative to the end of the header.
"""

from __future__ import annotations

import json
import struct
from typing import Mapping

import numpy as np

_DTYPES = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16,
           "U32": np.uint32, "I32": np.int32, "U64": np.uint64, "I64": np.int64,
           "F16": np.float16, "F32": np.float32, "F64": np.float64}
_NAMES = {np.dtype(v).newbyteorder("<"): k for k, v in _DTYPES.items()}
MAX_HEADER = 100 * 2**20  # a header longer than this is a corrupt file, not a model


class SafetensorsError(ValueError):
    pass


def save(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])  # (ascontiguousarray would make scalars 1-d)
        dtype = array.dtype.newbyteorder("<")
        if dtype not in _NAMES:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {array.dtype}, which "
                                   f"safetensors cannot hold here ({sorted(_DTYPES)})")
        data = array.astype(dtype, copy=False).tobytes(order="C")
        header[name] = {"dtype": _NAMES[dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def load(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """({name: array}, metadata); a malformed file raises SafetensorsError naming it."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise SafetensorsError(f"{path}: {len(raw)} bytes, too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > MAX_HEADER or 8 + n > len(raw):
        raise SafetensorsError(f"{path}: header length {n} exceeds the file ({len(raw)} bytes)")
    try:
        header = json.loads(raw[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SafetensorsError(f"{path}: header is not JSON ({err})") from err
    metadata = header.pop("__metadata__", {}) or {}
    body = memoryview(raw)[8 + n:]
    out = {}
    for name, entry in header.items():
        try:
            dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise SafetensorsError(f"{path}: tensor {name!r} has a malformed entry {entry!r}") \
                from err
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not 0 <= begin <= end <= len(body) or end - begin != size:
            raise SafetensorsError(f"{path}: tensor {name!r} offsets [{begin}, {end}) do not hold "
                                   f"{shape} x {dtype} in a body of {len(body)} bytes")
        out[name] = np.frombuffer(body[begin:end], dtype).reshape(shape).astype(
            dtype.newbyteorder("="), copy=True)
    return out, dict(metadata)
