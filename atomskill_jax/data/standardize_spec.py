"""What a per-dataset standardisation says (no TensorFlow): parsed from a plain mapping.

A foreign RLDS dataset (e.g. Open X-Embodiment's) names its fields its own way. A
standardisation maps them onto the project's step schema (ARCHITECTURE.md, data
contract); it is written as a mapping so the registered ones (oxe_standardizations.py)
and inline ones in `config.data.datasets` share one form:

  {"base": "fractal",                       # optional: start from a registered one
   "action": [                              # concatenated, in order, into `action`
       {"key": "action/world_vector", "absolute": "integrate"},
       "action/rotation_delta",             # a bare key: a part with the defaults
       {"key": "action/gripper_closedness_action",
        "gripper": {"kind": "relative", "closed": 1.0, "open": -1.0}}],
   "action_type": "delta",                  # default "absolute" rule of the parts
   "proprio": ["observation/base_pose_tool_reached",
               {"key": "observation/gripper_closed", "scale": -1.0, "offset": 1.0}],
   "state": [],                             # optional: parts of observation/state
   "cameras": {"front": "image"},           # model camera -> observation key
   "instruction": "observation/natural_language_instruction",
   "language_embedding": "encode",          # or the key of a stored embedding
   "skill_label": "rule",                   # or one vocabulary label for every segment
   "ee_position": [0, 1, 2],                # proprio channels of the hand xyz (metres)
   "min_hold": 2, "min_segment_len": 2}     # keyframe debouncing, in steps

Keys are paths inside a step, "/"-separated, with an optional slice of the last axis:
"observation/state[:6]", "action[6]" (one channel), "action[3:6]".

A part's "absolute" says how its `action_abs` columns come about: "same" (the command
is already an absolute target), "integrate" (the running sum of the deltas from the
episode's start: a target relative to where the episode began, in command units) or
{"pose": KEY} (that observed pose plus the delta: an absolute target in the pose's
frame; the pose must have the part's width). Gripper parts are converted to the
project's convention, which is MetaWorld's grab command: +1 closed, -1 open (in
[-1, 1]); their absolute form is the converted command itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any, Mapping

# The project's gripper command convention (MetaWorld's grab effort, the embodiment
# `metaworld_sawyer` in skills/embodiments.py: a larger command is more closed).
CLOSED = 1.0
OPEN = -1.0

ABSOLUTE_RULES = ("same", "integrate")
GRIPPER_KINDS = ("absolute", "relative")
ACTION_TYPES = ("delta", "absolute")
TOP_KEYS = ("base", "description", "action", "action_type", "proprio", "state", "cameras",
            "instruction", "language_embedding", "skill_label", "ee_position", "min_hold",
            "min_segment_len")
ENCODE = "encode"

_REF = re.compile(r"^(?P<path>[^\[\]]+?)(\[(?P<a>-?\d*)(?P<colon>:)?(?P<b>-?\d*)\])?$")


class StandardizationError(ValueError):
    """A standardisation that cannot be parsed; the message names the entry and key."""


@dataclasses.dataclass(frozen=True)
class FieldRef:
    """A field inside a step ("observation/state") and a slice of its last axis."""

    path: tuple[str, ...]
    start: int | None = None
    stop: int | None = None
    text: str = ""

    def __str__(self) -> str:
        return self.text or "/".join(self.path)


def parse_ref(text: Any, where: str) -> FieldRef:
    if not isinstance(text, str) or not text.strip():
        raise StandardizationError(f"{where}: expected a field key such as "
                                   f"'observation/state[:6]', got {text!r}")
    text = text.strip().strip("/")
    match = _REF.match(text)
    if not match:
        raise StandardizationError(f"{where}: cannot read the field key {text!r} (write "
                                   f"'a/b', 'a/b[i]', 'a/b[i:j]')")
    path = tuple(p for p in match["path"].split("/") if p)
    a, b = match["a"], match["b"]
    if match["colon"]:
        start, stop = (int(a) if a else None), (int(b) if b else None)
    elif a:  # one channel: [i] keeps the axis, as [i:i+1]
        start = int(a)
        stop = start + 1 if start != -1 else None
    elif match.group(2):
        raise StandardizationError(f"{where}: empty index in {text!r}")
    else:
        start = stop = None
    return FieldRef(path=path, start=start, stop=stop, text=text)


@dataclasses.dataclass(frozen=True)
class GripperConvention:
    """How a foreign gripper command reads. kind 'absolute': `closed` / `open` are the
    values of a closed / open gripper (e.g. bridge: 0 / 1). kind 'relative': the
    command changes the state, `closed` / `open` are the values that close / open it
    and values within `threshold` (a fraction of the half range) of their midpoint keep
    it (e.g. RT-1: +1 / -1, 0 = keep)."""

    kind: str
    closed: float
    open: float
    binarize: bool = False  # absolute: snap to closed/open at the midpoint
    threshold: float = 0.1  # relative: how far from the midpoint a command acts


@dataclasses.dataclass(frozen=True)
class ActionPart:
    ref: FieldRef
    absolute: str | FieldRef = "integrate"  # "same" | "integrate" | a pose field
    gripper: GripperConvention | None = None


@dataclasses.dataclass(frozen=True)
class ObservationPart:
    ref: FieldRef
    scale: float = 1.0
    offset: float = 0.0


@dataclasses.dataclass(frozen=True)
class Standardization:
    name: str
    action: tuple[ActionPart, ...]
    proprio: tuple[ObservationPart, ...]
    state: tuple[ObservationPart, ...] = ()
    cameras: Mapping[str, str] = dataclasses.field(default_factory=dict)
    instruction: FieldRef | None = None
    language_embedding: FieldRef | None = None  # None: embed the instruction
    skill_label: str = "rule"
    ee_position: tuple[int, ...] = ()
    min_hold: int = 2
    min_segment_len: int = 2
    description: str = ""
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # resolved mapping

    @property
    def tag(self) -> str:
        """Name + content hash: what statistics of standardised data are filed under."""
        text = json.dumps(self.source, sort_keys=True, default=str)
        return f"{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _as_plain(value: Any) -> Any:
    """ConfigDicts / mappings / sequences as plain dicts and lists (for hashing, checks)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_plain(v) for v in value]
    return value


def _gripper(raw: Any, where: str) -> GripperConvention:
    if not isinstance(raw, Mapping):
        raise StandardizationError(f"{where}: 'gripper' must be a mapping such as "
                                   f"{{'kind': 'absolute', 'closed': 0.0, 'open': 1.0}}")
    unknown = set(raw) - {"kind", "closed", "open", "binarize", "threshold"}
    if unknown:
        raise StandardizationError(f"{where}: unknown gripper keys {sorted(unknown)}")
    kind = raw.get("kind", "absolute")
    if kind not in GRIPPER_KINDS:
        raise StandardizationError(f"{where}: gripper kind {kind!r}; expected one of "
                                   f"{GRIPPER_KINDS}")
    try:
        closed, open_ = float(raw["closed"]), float(raw["open"])
    except KeyError as err:
        raise StandardizationError(f"{where}: gripper needs 'closed' and 'open' (the "
                                   f"values that mean closed and open)") from err
    if closed == open_:
        raise StandardizationError(f"{where}: gripper 'closed' and 'open' are both {closed}")
    return GripperConvention(kind=kind, closed=closed, open=open_,
                             binarize=bool(raw.get("binarize", False)),
                             threshold=float(raw.get("threshold", 0.1)))


def _action_part(raw: Any, where: str, default_absolute: str) -> ActionPart:
    if isinstance(raw, str):
        raw = {"key": raw}
    if not isinstance(raw, Mapping) or "key" not in raw:
        raise StandardizationError(f"{where}: an action part is a key or a mapping with "
                                   f"'key', got {raw!r}")
    unknown = set(raw) - {"key", "absolute", "gripper"}
    if unknown:
        raise StandardizationError(f"{where}: unknown keys {sorted(unknown)} (known: key, "
                                   f"absolute, gripper)")
    ref = parse_ref(raw["key"], f"{where} key")
    gripper = _gripper(raw["gripper"], f"{where} ({ref})") if raw.get("gripper") else None
    absolute = raw.get("absolute", default_absolute)
    if isinstance(absolute, Mapping):
        if set(absolute) != {"pose"}:
            raise StandardizationError(f"{where}: 'absolute' as a mapping is {{'pose': KEY}}")
        absolute = parse_ref(absolute["pose"], f"{where} absolute pose")
    elif absolute not in ABSOLUTE_RULES:
        raise StandardizationError(f"{where} ({ref}): 'absolute' is {absolute!r}; expected "
                                   f"one of {ABSOLUTE_RULES} or {{'pose': KEY}}")
    return ActionPart(ref=ref, absolute=absolute, gripper=gripper)


def _observation_part(raw: Any, where: str) -> ObservationPart:
    if isinstance(raw, str):
        raw = {"key": raw}
    if not isinstance(raw, Mapping) or "key" not in raw:
        raise StandardizationError(f"{where}: expected a key or {{'key': ..., 'scale': ..., "
                                   f"'offset': ...}}, got {raw!r}")
    unknown = set(raw) - {"key", "scale", "offset"}
    if unknown:
        raise StandardizationError(f"{where}: unknown keys {sorted(unknown)}")
    return ObservationPart(ref=parse_ref(raw["key"], f"{where} key"),
                           scale=float(raw.get("scale", 1.0)),
                           offset=float(raw.get("offset", 0.0)))


def resolve_mapping(raw: Any, where: str, registry: Mapping[str, Mapping] | None = None
                    ) -> tuple[str, dict]:
    """(name, full mapping): a registered name, or a mapping (with its 'base' merged in:
    the mapping's top-level keys replace the base's)."""
    if registry is None:
        from atomskill_jax.data.oxe_standardizations import STANDARDIZATIONS as registry
    if isinstance(raw, str):
        name = raw.strip()
        if name not in registry:
            raise StandardizationError(f"{where}: unknown standardisation {name!r}; "
                                       f"registered: {', '.join(sorted(registry))}")
        return name, _as_plain(registry[name])
    raw = _as_plain(raw)
    if not isinstance(raw, Mapping):
        raise StandardizationError(f"{where}: 'standardize' is a registered name or a "
                                   f"mapping, got {type(raw).__name__}")
    unknown = set(raw) - set(TOP_KEYS)
    if unknown:
        raise StandardizationError(f"{where}: unknown standardisation keys {sorted(unknown)}"
                                   f" (known: {', '.join(TOP_KEYS)})")
    base = raw.get("base")
    merged: dict = {}
    name = "inline"
    if base:
        base_name, merged = resolve_mapping(base, f"{where} base", registry)
        name = f"{base_name}+inline"
    merged.update({k: v for k, v in raw.items() if k != "base"})
    return name, merged


def parse_standardization(raw: Any, where: str = "standardize",
                          registry: Mapping[str, Mapping] | None = None) -> Standardization:
    """A Standardization from a registered name or a mapping (see the module docstring)."""
    name, m = resolve_mapping(raw, where, registry)
    where = f"{where} ({name})"
    action_type = m.get("action_type", "delta")
    if action_type not in ACTION_TYPES:
        raise StandardizationError(f"{where}: action_type {action_type!r}; expected one of "
                                   f"{ACTION_TYPES}")
    default_absolute = "integrate" if action_type == "delta" else "same"
    if not m.get("action"):
        raise StandardizationError(f"{where}: 'action' lists no parts")
    if "proprio" not in m:
        raise StandardizationError(f"{where}: 'proprio' missing (the observation fields "
                                   f"that form observation/proprio)")
    action = tuple(_action_part(p, f"{where} action[{i}]", default_absolute)
                   for i, p in enumerate(m["action"]))
    proprio = tuple(_observation_part(p, f"{where} proprio[{i}]")
                    for i, p in enumerate(m["proprio"]))
    state = tuple(_observation_part(p, f"{where} state[{i}]")
                  for i, p in enumerate(m.get("state") or ()))
    cameras = m.get("cameras") or {}
    if not isinstance(cameras, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in cameras.items()):
        raise StandardizationError(f"{where}: 'cameras' maps model camera names to "
                                   f"observation keys, e.g. {{'front': 'image'}}")
    instruction = m.get("instruction")
    embedding = m.get("language_embedding", ENCODE)
    if embedding in (None, "", ENCODE) and not instruction:
        raise StandardizationError(f"{where}: neither 'instruction' (a text field to "
                                   f"embed) nor 'language_embedding' (a stored embedding "
                                   f"field) is given")
    for key in ("min_hold", "min_segment_len"):
        if int(m.get(key, 2)) < 1:
            raise StandardizationError(f"{where}: {key} must be >= 1")
    label = str(m.get("skill_label", "rule"))
    if label != "rule":
        from atomskill_jax.skills.vocabulary import LABELS
        if label not in LABELS:
            raise StandardizationError(f"{where}: skill_label {label!r} is neither 'rule' nor "
                                       f"a vocabulary label ({', '.join(LABELS)})")
    return Standardization(
        name=name, action=action, proprio=proprio, state=state, cameras=dict(cameras),
        instruction=parse_ref(instruction, f"{where} instruction") if instruction else None,
        language_embedding=(None if embedding in (None, "", ENCODE)
                            else parse_ref(embedding, f"{where} language_embedding")),
        skill_label=label, ee_position=tuple(int(c) for c in m.get("ee_position") or ()),
        min_hold=int(m.get("min_hold", 2)), min_segment_len=int(m.get("min_segment_len", 2)),
        description=str(m.get("description", "")), source=m)
