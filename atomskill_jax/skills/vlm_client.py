"""OpenAI-compatible chat-completions client (urllib) and answer parsing.

Works with vLLM, Ollama, llama.cpp server and hosted APIs: POST
{base_url}/chat/completions with {"model", "messages", ...}; the answer text is
choices[0].message.content. Standard library only.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
import urllib.error
import urllib.request
from typing import Any

# Statuses worth retrying: the server is busy or failing transiently. Others (400
# bad request, 401/403 auth, 404 wrong URL or model) will not fix themselves.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0


class VLMError(Exception):
    """A request that gave no usable answer; `retryable` says whether to try again."""

    def __init__(self, message: str, retryable: bool = True, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def _read_with_deadline(resp, deadline: float) -> bytes:
    # urlopen's timeout bounds each socket operation; a server trickling bytes could
    # still take forever, so the whole read is bounded too.
    chunks = []
    while True:
        if time.monotonic() > deadline:
            raise VLMError("timed out reading the response")
        chunk = resp.read(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def post_chat(base_url: str, payload: dict[str, Any], *, api_key: str | None,
              timeout: float) -> str:
    """Send one chat-completions request; return the answer text or raise VLMError."""
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"),
                                 headers=headers, method="POST")
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = _read_with_deadline(resp, deadline)
    except urllib.error.HTTPError as e:
        detail = e.read(500).decode("utf-8", "replace") if e.fp is not None else ""
        retry_after = None
        try:
            retry_after = float(e.headers.get("Retry-After", ""))
        except (TypeError, ValueError, AttributeError):
            pass
        raise VLMError(f"HTTP {e.code} from {url}: {detail.strip()[:200]}",
                       retryable=e.code in RETRYABLE_STATUS, retry_after=retry_after) from None
    except (TimeoutError, socket.timeout):
        raise VLMError(f"no answer from {url} within {timeout:g} s") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (TimeoutError, socket.timeout)):
            raise VLMError(f"no answer from {url} within {timeout:g} s") from None
        raise VLMError(f"cannot reach {url}: {e.reason}") from None
    except (ConnectionError, OSError, http.client.HTTPException) as e:
        raise VLMError(f"connection to {url} failed: {e!r}") from None
    try:
        data = json.loads(body.decode("utf-8"))
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise VLMError(f"response from {url} is not a chat completion: "
                       f"{body[:200].decode('utf-8', 'replace')!r}") from None
    if isinstance(content, list):  # content parts, as some servers return
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise VLMError(f"response from {url} has no text content")
    return content


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def _candidates(text: str):
    """JSON objects in `text`: fenced blocks first, then the whole text, then any
    object embedded in prose."""
    decoder = json.JSONDecoder()
    for block in _FENCE.findall(text):
        yield block.strip()
    yield text.strip()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        yield obj


def parse_answer(text: str, max_label_chars: int = 80) -> dict[str, str]:
    """{"description", "label"} from a model's answer, or VLMError (retryable).

    Tolerates ``` fences and text around the object; rejects answers without a
    JSON object, with missing or empty fields, or with an overlong label.
    """
    problem = "no JSON object in the answer"
    for cand in _candidates(text):
        if isinstance(cand, str):
            try:
                cand = json.loads(cand)
            except ValueError:
                continue
        if not isinstance(cand, dict):
            continue
        fields = {str(k).strip().lower(): v for k, v in cand.items()}
        label, desc = fields.get("label"), fields.get("description")
        if not isinstance(label, str) or not label.strip():
            problem = "missing or empty 'label'"
            continue
        if not isinstance(desc, str) or not desc.strip():
            problem = "missing or empty 'description'"
            continue
        label = " ".join(label.split())
        if len(label) > max_label_chars:
            problem = f"label longer than {max_label_chars} characters"
            continue
        return {"label": label, "description": " ".join(desc.split())}
    raise VLMError(f"malformed answer ({problem}): {text[:200]!r}")
