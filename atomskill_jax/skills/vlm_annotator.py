"""Skill labels from a vision-language model behind an OpenAI-compatible endpoint.

For each segment the model gets the instruction, where the segment sits in the
episode, a motion/gripper summary and a few frames (PNG data URLs; text only when
the episode has no images), and must answer {"description": ..., "label": ...}.
Malformed answers, HTTP errors and timeouts are retried with exponential backoff;
validated answers are cached on disk by a hash of (prompt version, model, messages
incl. frames), so a rebuild makes no requests; when every attempt fails the
segment gets the rule label with source 'vlm-fallback' and a note saying why. The
free-text label is mapped onto the canonical vocabulary (`vocabulary.LabelMapper`).

    annotator = make_annotator("vlm", base_url="http://localhost:8000/v1",
                               model="Qwen/Qwen2.5-VL-7B-Instruct")
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atomskill_jax.skills.motion import summarize_motion
from atomskill_jax.skills.png import downscale, png_data_url
from atomskill_jax.skills.rule_annotator import rule_annotation, rule_label
from atomskill_jax.skills.types import SegmentInfo, SkillAnnotation
from atomskill_jax.skills.vlm_client import VLMError, parse_answer, post_chat
from atomskill_jax.skills.vocabulary import LABELS, EmbedFn, LabelMapper, label_id

log = logging.getLogger(__name__)

# Bump when the prompt changes meaning: old cached answers are then not reused.
PROMPT_VERSION = "1"

SYSTEM_PROMPT = (
    "You label short clips of a robot manipulation demonstration. Each clip is one "
    "atomic skill, cut where a gripper opens or closes. Answer with one JSON object "
    'and nothing else: {"description": "<one sentence saying what the robot does in '
    'this clip>", "label": "<short verb phrase naming the skill>"}. Prefer one of '
    "these labels: " + ", ".join(LABELS) + "."
)

_EVENT_TEXT = {"close": "a gripper closes (a grasp)", "open": "a gripper opens (a release)",
               "end": "the demonstration ends"}


def default_cache_dir() -> Path:
    """$ATOMSKILL_CACHE_DIR/vlm_annotations, else ~/.cache/atomskill_jax/vlm_annotations."""
    root = os.environ.get("ATOMSKILL_CACHE_DIR") or os.path.join("~", ".cache", "atomskill_jax")
    return Path(root).expanduser() / "vlm_annotations"


class VLMAnnotator:
    """The 'vlm' backend.

    Args:
      base_url: endpoint root, e.g. http://localhost:8000/v1 (vLLM),
        http://localhost:11434/v1 (Ollama), https://api.openai.com/v1; default
        $ATOMSKILL_VLM_BASE_URL.
      model: model name the server knows; default $ATOMSKILL_VLM_MODEL.
      api_key_env: environment variable holding the API key (sent as a Bearer
        token if set; local servers need none).
      timeout: seconds per request (connect + whole answer).
      max_attempts: requests per segment before falling back to the rule label.
      backoff_s, max_backoff_s: wait backoff_s * 2**k after the k-th failure,
        capped (a server's Retry-After is honoured up to 60 s).
      num_frames: frames per camera, evenly spaced over the segment (first and
        last included).
      cameras: cameras to send; None sends the first one the episode has.
      max_image_side: frames are downscaled (nearest) to at most this many pixels.
      cache_dir: answer cache (default `default_cache_dir()`); use_cache=False
        disables it.
      embed_fn: texts -> [N, D] embeddings for label mapping (default: the
        project's sentence encoder, loaded only if a label is not an exact match).
      give_up_after: after this many consecutive segments fail completely, stop
        sending requests (the endpoint is down) and use rule labels for the rest;
        None never gives up.
      temperature, max_tokens, extra_body: passed in the request body.
      sleep: the wait function (tests pass a fake).
    """

    name = "vlm"

    def __init__(self, base_url: str | None = None, model: str | None = None, *,
                 api_key_env: str | None = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_attempts: int = 4, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 num_frames: int = 4, cameras: Sequence[str] | None = None,
                 max_image_side: int = 256, cache_dir: str | os.PathLike | None = None,
                 use_cache: bool = True, embed_fn: EmbedFn | None = None,
                 give_up_after: int | None = 3, temperature: float = 0.0,
                 max_tokens: int = 256, extra_body: dict[str, Any] | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.base_url = base_url or os.environ.get("ATOMSKILL_VLM_BASE_URL", "")
        self.model = model or os.environ.get("ATOMSKILL_VLM_MODEL", "")
        if not self.base_url or not self.model:
            raise ValueError(
                "the vlm annotator needs base_url and model (e.g. base_url="
                "'http://localhost:8000/v1' for vLLM or 'http://localhost:11434/v1' for "
                "Ollama), or ATOMSKILL_VLM_BASE_URL and ATOMSKILL_VLM_MODEL set")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"vlm base_url must start with http:// or https://, got "
                             f"{self.base_url!r}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_attempts = int(max_attempts)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.num_frames = int(num_frames)
        self.cameras = tuple(cameras) if cameras is not None else None
        self.max_image_side = int(max_image_side)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.use_cache = use_cache
        self.mapper = LabelMapper(embed_fn)
        self.give_up_after = give_up_after
        self.body = {"temperature": temperature, "max_tokens": max_tokens, **(extra_body or {})}
        self.sleep = sleep
        self._failed_in_a_row = 0
        self.requests_sent = 0

    # -- prompt ---------------------------------------------------------------

    def _frames(self, seg: SegmentInfo) -> list[tuple[str, str]]:
        """(camera, data URL) of the frames to send, in time order per camera."""
        if not seg.frames:
            return []
        cams = self.cameras if self.cameras is not None else (next(iter(seg.frames)),)
        missing = [c for c in cams if c not in seg.frames]
        if missing:
            raise KeyError(f"episode {seg.episode_id!r}: no frames for cameras {missing}; "
                           f"has {sorted(seg.frames)}")
        out = []
        for cam in cams:
            video = seg.frames[cam]
            count = max(1, min(self.num_frames, len(video)))
            for t in np.unique(np.linspace(0, len(video) - 1, count).round().astype(int)):
                out.append((cam, png_data_url(downscale(video[t], self.max_image_side))))
        return out

    def build_messages(self, seg: SegmentInfo) -> list[dict[str, Any]]:
        frames = self._frames(seg)
        text = (
            f"Task instruction: {seg.instruction or seg.task or '(none)'}\n"
            f"This clip is skill {seg.index + 1} of {seg.num_segments} of the "
            f"demonstration (steps {seg.start} to {seg.end}); it ends when "
            f"{_EVENT_TEXT.get(seg.event, seg.event)}.\n"
            f"Motion: {summarize_motion(seg).text}.\n"
            + (f"{len(frames)} frames of the clip follow in time order"
               f" (cameras: {', '.join(dict.fromkeys(c for c, _ in frames))})."
               if frames else "No camera frames are available; judge from the text.")
            + '\nAnswer with the JSON object {"description": ..., "label": ...} only.')
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        content += [{"type": "image_url", "image_url": {"url": url}} for _, url in frames]
        return [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": content}]

    def cache_key(self, messages: list[dict[str, Any]]) -> str:
        blob = json.dumps({"v": PROMPT_VERSION, "model": self.model, "messages": messages},
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    # -- cache ----------------------------------------------------------------

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> dict[str, str] | None:
        if not self.use_cache:
            return None
        path = self._cache_path(key)
        try:
            entry = json.loads(path.read_text("utf-8"))
            return {"label": str(entry["label"]), "description": str(entry["description"])}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("Ignoring unreadable VLM cache entry %s (%s); asking again.", path, e)
            return None

    def _cache_put(self, key: str, answer: dict[str, str]) -> None:
        if not self.use_cache:
            return
        path = self._cache_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Temp file + replace: concurrent builders never read a partial entry.
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({**answer, "model": self.model, "prompt_version": PROMPT_VERSION}, f)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("Could not write VLM cache entry %s: %s", path, e)

    # -- requests -------------------------------------------------------------

    def _ask(self, messages) -> tuple[dict[str, str] | None, str, int]:
        """(validated answer or None, last error, attempts made)."""
        api_key = os.environ.get(self.api_key_env) if self.api_key_env else None
        payload = {"model": self.model, "messages": messages, **self.body}
        error = ""
        for attempt in range(self.max_attempts):
            try:
                self.requests_sent += 1
                text = post_chat(self.base_url, payload, api_key=api_key, timeout=self.timeout)
                return parse_answer(text), "", attempt + 1
            except VLMError as e:
                error = str(e)
                log.info("VLM attempt %d/%d failed: %s", attempt + 1, self.max_attempts, e)
                if not e.retryable:
                    return None, error, attempt + 1
                if attempt + 1 < self.max_attempts:
                    wait = min(self.backoff_s * 2 ** attempt, self.max_backoff_s)
                    if e.retry_after is not None:
                        wait = max(wait, min(e.retry_after, 60.0))
                    self.sleep(wait)
        return None, error, self.max_attempts

    def _fallback(self, seg: SegmentInfo, reason: str) -> SkillAnnotation:
        log.warning("Episode %r skill %d: VLM annotation failed (%s); using the rule "
                    "label %r.", seg.episode_id, seg.index, reason, rule_label(seg))
        return rule_annotation(seg, source="vlm-fallback",
                               note=f"VLM failed ({reason}); rule label used")

    def annotate_one(self, seg: SegmentInfo) -> SkillAnnotation:
        messages = self.build_messages(seg)
        key = self.cache_key(messages)
        answer = self._cache_get(key)
        cached = answer is not None
        if answer is None:
            if self.give_up_after is not None and self._failed_in_a_row >= self.give_up_after:
                return self._fallback(seg, f"endpoint gave up after {self._failed_in_a_row} "
                                           "failed skills in a row; not asked")
            answer, error, attempts = self._ask(messages)
            if answer is None:
                self._failed_in_a_row += 1
                return self._fallback(seg, f"{attempts} attempt(s), last error: {error}")
            self._failed_in_a_row = 0
            self._cache_put(key, answer)
        try:
            label, score, how = self.mapper.map(answer["label"])
        except Exception as e:  # e.g. the sentence encoder is not installed
            ann = self._fallback(seg, f"could not map label {answer['label']!r}: {e}")
            ann.description, ann.raw_label = answer["description"], answer["label"]
            return ann
        note = f"label {answer['label']!r} -> {label!r} ({how}, similarity {score:.2f})"
        return SkillAnnotation(label=label, label_id=label_id(label),
                               description=answer["description"], source="vlm",
                               raw_label=answer["label"],
                               note=note + ("; cached answer" if cached else ""))

    def annotate(self, segments: Sequence[SegmentInfo]) -> list[SkillAnnotation]:
        return [self.annotate_one(seg) for seg in segments]
