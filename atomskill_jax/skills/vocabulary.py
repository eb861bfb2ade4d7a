"""The canonical skill vocabulary and mapping of free text onto it.

Labels are stored per step as `skill_label` (string) and `skill_label_id` (its index
here), and the semantic contrastive loss groups skills by id, so the order is part
of the data format: append new skills at the end, never reorder or rename.

Free-text labels (from a VLM) map onto the vocabulary exactly when the normalised
text is a label or synonym; else when it starts with one (the verb phrase: "place
the puck at the goal", "close the gripper around the handle" -- MiniLM embeddings
of such phrases follow their nouns, e.g. "hole" pulls towards `insert`); else by
nearest neighbour in a sentence encoder's embedding space against each skill's
label, description and synonyms.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Skill:
    label: str
    description: str
    synonyms: tuple[str, ...] = ()


VOCABULARY: tuple[Skill, ...] = (
    Skill("grasp", "reach for an object and close the gripper on it",
          ("reach and grasp", "pick up", "pick", "grab", "grip", "take", "seize",
           "get hold of", "approach and grasp", "close the gripper", "close gripper")),
    Skill("place", "carry the held object to a target and put it down",
          ("move and place", "put", "put down", "set down", "drop", "release",
           "deposit", "stack", "transport", "carry", "move the object", "let go",
           "open the gripper", "open gripper")),
    Skill("lift", "raise the held object up or out of something",
          ("lift up", "raise", "pull out", "take out", "pull up", "extract")),
    Skill("insert", "put the held object into an opening or onto a peg",
          ("plug in", "slot in", "fit into", "put into the hole")),
    Skill("retreat", "move the open gripper away after letting go",
          ("move away", "withdraw", "back off", "retract", "return home", "go home")),
    Skill("reach", "move the gripper to a position without touching anything",
          ("move to", "approach", "go to", "move the arm", "move the gripper")),
    Skill("push", "push an object across a surface with the gripper",
          ("shove", "nudge", "slide forward", "push forward")),
    Skill("pull", "pull an object or handle towards the robot or upward",
          ("drag", "tug", "draw back")),
    Skill("press", "press a button or handle down",
          ("push down", "press down", "push the button", "press the button", "tap", "hit")),
    Skill("open", "open a door, drawer, window, lid or faucet",
          ("pull open", "push open", "slide open")),
    Skill("close", "close a door, drawer, window, lid or faucet",
          ("shut", "push closed", "slide closed", "push shut")),
    Skill("turn", "rotate a dial, knob, lock, handle or faucet",
          ("rotate", "twist", "spin", "turn the dial", "unlock", "lock")),
    Skill("sweep", "sweep an object along a surface into a target",
          ("brush", "sweep into")),
    Skill("wipe", "wipe a surface with a held tool", ("clean", "scrub")),
    Skill("pour", "tilt a held container to pour its contents", ("tip", "empty")),
    Skill("handover", "pass an object from one gripper to the other",
          ("hand over", "transfer", "pass")),
)

LABELS: tuple[str, ...] = tuple(s.label for s in VOCABULARY)
_BY_LABEL = {s.label: s for s in VOCABULARY}


def label_id(label: str) -> int:
    """Index of a canonical label (the stored `skill_label_id`)."""
    try:
        return LABELS.index(label)
    except ValueError:
        raise KeyError(f"{label!r} is not a canonical skill label; known: {LABELS}") from None


def skill(label: str) -> Skill:
    return _BY_LABEL[label] if label in _BY_LABEL else VOCABULARY[label_id(label)]


def normalize(text: str) -> str:
    """Lower case, '_' and '-' as spaces, punctuation dropped, spaces collapsed."""
    text = re.sub(r"[_\-]+", " ", str(text).lower())
    text = re.sub(r"[^a-z0-9 ]+", " ", text)
    return " ".join(text.split())


_EXACT = {}
for _s in VOCABULARY:
    for _phrase in (_s.label, *_s.synonyms):
        _EXACT.setdefault(normalize(_phrase), _s.label)


def exact_label(text: str) -> str | None:
    """The canonical label if `text` is a label or synonym (after normalising)."""
    return _EXACT.get(normalize(text))


def _verb_forms(word: str) -> list[str]:
    """The word and crude base forms: 'grasps', 'placing', 'closed' -> 'grasp', ..."""
    forms = [word]
    for suffix, repl in (("ing", ""), ("ing", "e"), ("ed", ""), ("ed", "e"), ("es", ""),
                         ("s", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            forms.append(word[: -len(suffix)] + repl)
    return forms


def prefix_label(text: str) -> str | None:
    """The canonical label of the longest label/synonym that `text` starts with."""
    tokens = normalize(text).split()
    for k in range(min(len(tokens), 4), 0, -1):
        for first in _verb_forms(tokens[0]):
            label = _EXACT.get(" ".join([first, *tokens[1:k]]))
            if label is not None:
                return label
    return None


EmbedFn = Callable[[Sequence[str]], np.ndarray]


def default_embed_fn() -> EmbedFn:
    """The project's sentence encoder (all-MiniLM-L6-v2) with its disk cache."""
    from atomskill_jax.models.sentence_encoder import embed_texts_cached
    return embed_texts_cached


class LabelMapper:
    """Maps free-text skill labels onto `VOCABULARY`.

    `embed_fn(texts) -> [N, D]` embeds text (rows are L2-normalised here, so any
    encoder works); it is only called when a text is not an exact label or synonym.
    By default the project's sentence encoder is loaded on first use.
    """

    def __init__(self, embed_fn: EmbedFn | None = None):
        self._embed_fn = embed_fn
        self._phrases: list[str] = []
        self._phrase_label: list[str] = []
        for s in VOCABULARY:
            for phrase in (s.label, s.description, *s.synonyms):
                self._phrases.append(phrase)
                self._phrase_label.append(s.label)
        self._phrase_emb: np.ndarray | None = None

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._embed_fn is None:
            self._embed_fn = default_embed_fn()
        emb = np.asarray(self._embed_fn(list(texts)), np.float64)
        if emb.ndim != 2 or emb.shape[0] != len(texts):
            raise ValueError(f"embed_fn returned shape {emb.shape} for {len(texts)} texts; "
                             "expected [N, D]")
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def map(self, text: str) -> tuple[str, float, str]:
        """(canonical label, similarity in [-1, 1], 'exact' | 'prefix' | 'embedding')."""
        exact = exact_label(text)
        if exact is not None:
            return exact, 1.0, "exact"
        prefix = prefix_label(text)
        if prefix is not None:
            return prefix, 1.0, "prefix"
        if self._phrase_emb is None:
            self._phrase_emb = self._embed(self._phrases)
        query = self._embed([normalize(text) or str(text)])[0]
        sims = self._phrase_emb @ query
        # Score a skill by its best-matching phrase.
        best = int(np.argmax(sims))
        return self._phrase_label[best], float(sims[best]), "embedding"
