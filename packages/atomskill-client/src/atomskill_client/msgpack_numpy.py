"""The wire encoding of PROTOCOL.md: msgpack maps, numpy arrays as explicit maps.

An array (or numpy scalar) travels as

    {"__ndarray__": 1, "dtype": "<f4", "shape": [7], "data": <bytes, C order>}

Only bool, integer and float dtypes cross the wire, little endian; nothing is
pickled. Encoding and decoding walk the message themselves instead of using
msgpack's `default`/`object_hook`, so every refusal names the field at fault
(`observation.state: ...`).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
NDARRAY_KEY = "__ndarray__"
# numpy's dtype.str of every dtype the protocol allows.
ALLOWED_DTYPES = frozenset(
    ["|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"])


class EncodingError(ValueError):
    """A value that cannot cross the wire, or a malformed array map."""


def _wire_dtype(dtype: np.dtype, where: str) -> np.dtype:
    """The little-endian dtype an array is sent as; refuses what the protocol refuses."""
    little = dtype.newbyteorder("<") if dtype.str.startswith(">") else dtype
    if little.str not in ALLOWED_DTYPES:
        raise EncodingError(f"{where}: dtype {dtype} ({dtype.str}) cannot be sent; the protocol "
                            f"allows bool, integer and float arrays only (no object, string, "
                            f"complex, void or datetime data): {sorted(ALLOWED_DTYPES)}")
    return little


def encode_array(value: Any, where: str = "value") -> dict:
    """The protocol map of one numpy array or scalar."""
    array = np.asarray(value)
    dtype = _wire_dtype(array.dtype, where)
    # ascontiguousarray + astype give C-order little-endian bytes whatever the input.
    data = np.ascontiguousarray(array.astype(dtype, copy=False)).tobytes()
    return {NDARRAY_KEY: 1, "dtype": dtype.str, "shape": list(array.shape), "data": data}


def decode_array(obj: dict, where: str = "value") -> np.ndarray:
    """The numpy array of one protocol map (a writable copy, C order)."""
    dtype_str = obj.get("dtype")
    if dtype_str not in ALLOWED_DTYPES:
        raise EncodingError(f"{where}: dtype {dtype_str!r} refused; allowed: "
                            f"{sorted(ALLOWED_DTYPES)}")
    shape = obj.get("shape")
    if (not isinstance(shape, (list, tuple))
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise EncodingError(f"{where}: shape {shape!r} is not a list of non-negative ints")
    data = obj.get("data")
    if not isinstance(data, (bytes, bytearray)):
        raise EncodingError(f"{where}: data is {type(data).__name__}, expected bytes")
    dtype = np.dtype(dtype_str)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise EncodingError(f"{where}: data has {len(data)} bytes; shape {list(shape)} of "
                            f"{dtype_str} needs {expected}")
    extra = set(obj) - {NDARRAY_KEY, "dtype", "shape", "data"}
    if extra:
        raise EncodingError(f"{where}: unexpected keys {sorted(extra)} in an array map")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def to_wire(value: Any, where: str = "message") -> Any:
    """`value` with every numpy array/scalar replaced by its map; refuses other objects."""
    if isinstance(value, str):  # before np.generic: np.str_ is both
        return str(value)
    if isinstance(value, (np.ndarray, np.generic)):  # before float: np.float64 is both
        return encode_array(value, where)
    if value is None or isinstance(value, (bool, int, float, bytes)):
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodingError(f"{where}: map key {key!r} is not a string")
            out[key] = to_wire(item, f"{where}.{key}" if where else key)
        return out
    if isinstance(value, (list, tuple)):
        return [to_wire(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise EncodingError(f"{where}: {type(value).__name__} cannot be sent; use numpy arrays, "
                        f"numbers, strings, lists or dicts")


def from_wire(value: Any, where: str = "message") -> Any:
    """`value` with every array map replaced by its numpy array."""
    if isinstance(value, dict):
        if NDARRAY_KEY in value:
            return decode_array(value, where)
        return {key: from_wire(item, f"{where}.{key}" if where else str(key))
                for key, item in value.items()}
    if isinstance(value, list):
        return [from_wire(item, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def packb(message: Any) -> bytes:
    """One binary frame holding `message` (a dict)."""
    return msgpack.packb(to_wire(message, ""), use_bin_type=True)


def unpackb(frame: bytes) -> Any:
    """The message of one binary frame, arrays decoded."""
    try:
        message = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise EncodingError(f"frame of {len(frame)} bytes is not valid msgpack: {exc}") from exc
    return from_wire(message, "")
