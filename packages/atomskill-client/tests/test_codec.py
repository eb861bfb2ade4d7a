"""The explicit numpy encoding of PROTOCOL.md: wire format, round trips, refusals."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from atomskill_client.msgpack_numpy import (ALLOWED_DTYPES, EncodingError, decode_array,
                                            packb, unpackb)

ALL = ["|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"]


def test_allowed_dtypes_are_the_protocols():
    assert ALLOWED_DTYPES == frozenset(ALL)


@pytest.mark.parametrize("dtype", ALL)
def test_round_trip_every_allowed_dtype(dtype):
    rng = np.random.default_rng(0)
    if dtype == "|b1":
        array = rng.random((2, 3)) > 0.5
    else:
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
        array = np.array([[info.min, 0, info.max], [1, 2, 3]], dtype=dtype)
    message = {"a": array, "nested": {"list": [array[0], 3, "s"]}, "scalar": array.flat[2]}
    out = unpackb(packb(message))
    for got, want in [(out["a"], array), (out["nested"]["list"][0], array[0])]:
        assert got.dtype.str == dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert out["nested"]["list"][1:] == [3, "s"]
    assert out["scalar"].shape == () and out["scalar"].dtype.str == dtype
    assert out["scalar"] == array.flat[2]
    out["a"][...] = array.flat[0]  # decoded arrays are writable copies


def test_wire_format_is_the_protocols_map():
    array = np.arange(6, dtype=np.float32).reshape(2, 3).T  # not C-contiguous
    raw = msgpack.unpackb(packb({"x": array, "b": np.bool_(True)}), raw=False)
    assert raw["x"] == {"__ndarray__": 1, "dtype": "<f4", "shape": [3, 2],
                        "data": np.ascontiguousarray(array).tobytes()}
    assert raw["b"] == {"__ndarray__": 1, "dtype": "|b1", "shape": [], "data": b"\x01"}


def test_big_endian_arrays_go_little_endian():
    array = np.arange(4, dtype=">i4")
    raw = msgpack.unpackb(packb({"x": array}), raw=False)["x"]
    assert raw["dtype"] == "<i4"
    np.testing.assert_array_equal(unpackb(packb({"x": array}))["x"], [0, 1, 2, 3])


@pytest.mark.parametrize("bad", [np.array([None, 1], dtype=object), np.array(["ab"]),
                                 np.array([1j]), np.array(["2024-01-01"], "datetime64[D]"),
                                 np.zeros(2, dtype="V4"), {1, 2}])
def test_encoder_refuses_other_dtypes_and_objects_naming_the_field(bad):
    with pytest.raises(EncodingError, match=r"observation\.bad: .* cannot be sent"):
        packb({"observation": {"ok": np.zeros(2), "bad": bad}})


def test_strings_and_numpy_strings_are_plain_strings():
    raw = msgpack.unpackb(packb({"s": np.str_("hi")}), raw=False)
    assert raw == {"s": "hi"}


def _frame(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize("length", [11, 13, 0])
def test_decoder_refuses_a_data_length_that_does_not_match(length):
    frame = _frame({"actions": {"__ndarray__": 1, "dtype": "<f4", "shape": [3],
                                "data": b"\x00" * length}})
    with pytest.raises(EncodingError, match=r"actions: data has %d bytes.*needs 12" % length):
        unpackb(frame)


@pytest.mark.parametrize("dtype", ["|O", "<U3", "<c8", ">f4", "|V4", "<M8[D]", "float32"])
def test_decoder_refuses_dtypes_outside_the_protocol(dtype):
    with pytest.raises(EncodingError, match="dtype"):
        decode_array({"__ndarray__": 1, "dtype": dtype, "shape": [1], "data": b"\x00" * 4})


@pytest.mark.parametrize("shape", [[-1], [1.5], "3", None, [True]])
def test_decoder_refuses_bad_shapes(shape):
    with pytest.raises(EncodingError, match="shape"):
        decode_array({"__ndarray__": 1, "dtype": "|u1", "shape": shape, "data": b"\x00"})


def test_decoder_refuses_garbage_frames():
    with pytest.raises(EncodingError, match="not valid msgpack"):
        unpackb(b"\xc1\xc1")
