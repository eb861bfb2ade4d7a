"""msgpack with an explicit numpy encoding (serving/PROTOCOL.md). Never pickle.

Arrays travel as {"__ndarray__": 1, "dtype": "<f4", "shape": [...], "data": bytes};
only bool, integer and float dtypes, little endian. Decoding checks every array (dtype
allowed, shape well formed, data length = prod(shape) * itemsize) and names the field
at fault ("observation.state") in a `CodecError`.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

ALLOWED_DTYPES = frozenset({"|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8",
                            "<f2", "<f4", "<f8"})
MAX_DIMS = 8
MAX_DEPTH = 16  # nesting of maps/lists a request may have


class CodecError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field, self.message = field, message


def _default(obj):
    if isinstance(obj, (np.ndarray, np.generic)):
        array = np.asarray(obj)
        dtype = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
        if dtype.str not in ALLOWED_DTYPES:
            raise TypeError(f"arrays of dtype {array.dtype} cannot be sent "
                            f"(allowed: bool, integers, floats)")
        return {"__ndarray__": 1, "dtype": dtype.str, "shape": list(array.shape),
                "data": array.astype(dtype, copy=False).tobytes(order="C")}
    raise TypeError(f"cannot encode {type(obj).__name__}")


def encode(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def _array(node: dict, field: str) -> np.ndarray:
    dtype, shape, data = node.get("dtype"), node.get("shape"), node.get("data")
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise CodecError(field, f"array dtype {dtype!r} is not allowed (bool, integers, "
                                f"floats, little endian)")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31
                       for d in shape)):
        raise CodecError(field, f"array shape {shape!r} is not a list of at most {MAX_DIMS} "
                                f"non-negative integers")
    if not isinstance(data, bytes):
        raise CodecError(field, "array data must be bytes")
    np_dtype = np.dtype(dtype)
    want = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if len(data) != want:
        raise CodecError(field, f"array data holds {len(data)} bytes, shape {shape} x {dtype} "
                                f"needs {want}")
    return np.frombuffer(data, np_dtype).reshape(shape).astype(np_dtype.newbyteorder("="))


def _arrays(node, field: str, depth: int = 0):
    if depth > MAX_DEPTH:
        raise CodecError(field, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, dict):
        if "__ndarray__" in node:
            return _array(node, field)
        out = {}
        for key, value in node.items():
            if not isinstance(key, str):
                raise CodecError(field, f"map keys must be strings, got {type(key).__name__}")
            out[key] = _arrays(value, f"{field}.{key}" if field else key, depth + 1)
        return out
    if isinstance(node, list):
        return [_arrays(v, f"{field}[{i}]", depth + 1) for i, v in enumerate(node)]
    return node


def decode(data: bytes) -> Any:
    """The message, arrays as numpy; malformed input raises CodecError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError("", "frames must be binary msgpack (text frames are refused)")
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=False,
                              max_bin_len=len(data), max_str_len=len(data),
                              max_array_len=len(data), max_map_len=len(data), max_ext_len=0)
    except Exception as err:  # msgpack raises several types for bad bytes
        raise CodecError("", f"not a msgpack message ({type(err).__name__})") from None
    return _arrays(obj, "")
