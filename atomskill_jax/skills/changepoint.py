"""Piecewise-constant change points of a 1-D signal and its two-state reading.

A gripper signal is a few constant levels plus, possibly, noise, ramps (ALOHA's
interpolated position commands) and chatter. Binary segmentation with a penalised
least-squares gain finds the level changes exactly on clean signals and stays quiet
on noise (the penalty scales with the noise variance estimated from first
differences, which ignores the few genuine jumps). The pieces are then read as
open/closed relative to the episode's own levels, with hysteresis, and runs shorter
than `min_hold` are merged away.
"""

from __future__ import annotations

import numpy as np

# A level change must also exceed this many noise stds: with few samples on one
# side, a penalised split of pure noise can still differ by ~1.3 std in mean.
MIN_CONTRAST_NOISE_STDS = 2.5


def robust_noise_std(x: np.ndarray) -> float:
    """Noise std from the MAD of first differences.

    Jumps and constant-slope ramps barely move the median, so a clean
    piecewise-constant (or piecewise-linear) signal gives ~0 and white noise of std s
    gives ~s.
    """
    d = np.diff(np.asarray(x, np.float64))
    if d.size == 0:
        return 0.0
    return float(np.median(np.abs(d - np.median(d))) / (0.6745 * np.sqrt(2.0)))


def binary_segmentation(x: np.ndarray, *, min_len: int, threshold: float) -> list[int]:
    """Change points of `x`: the index of the first sample of each new piece.

    A piece [a, b) is split at the k that most reduces the squared error of a
    constant fit, if that reduction exceeds `threshold` and both parts have at
    least `min_len` samples.
    """
    x = np.asarray(x, np.float64)
    num = x.shape[0]
    cs = np.concatenate([[0.0], np.cumsum(x)])
    cps: list[int] = []
    stack = [(0, num)]
    while stack:
        a, b = stack.pop()
        if b - a < 2 * min_len:
            continue
        ks = np.arange(a + min_len, b - min_len + 1)
        n1 = (ks - a).astype(np.float64)
        n2 = (b - ks).astype(np.float64)
        s1 = cs[ks] - cs[a]
        s2 = cs[b] - cs[ks]
        # SSE(a,b) - SSE(a,k) - SSE(k,b), written without sums of squares (no
        # cancellation on clean signals).
        gain = s1 * s1 / n1 + s2 * s2 / n2 - (s1 + s2) ** 2 / (n1 + n2)
        j = int(np.argmax(gain))
        if gain[j] > threshold:
            k = int(ks[j])
            cps.append(k)
            stack.extend([(a, k), (k, b)])
    return sorted(cps)


def _merge_short_runs(state: np.ndarray, min_hold: int) -> np.ndarray:
    """Flip interior runs shorter than `min_hold` to their neighbours' state.

    Shortest first. Only runs with a neighbour on both sides are chatter; a short
    first run (the expert closes at step 6 of shelf-place) or last run is a real
    event near the episode's edge, left to the segment-length rule.
    """
    state = state.copy()
    while True:
        change = np.flatnonzero(state[1:] != state[:-1]) + 1
        if change.size < 2:
            return state
        starts, ends = change[:-1], change[1:]  # interior runs only
        lengths = ends - starts
        i = int(np.argmin(lengths))
        if lengths[i] >= min_hold:
            return state
        state[starts[i]:ends[i]] = ~state[starts[i]]


def closed_state(x: np.ndarray, *, closed_high: bool, min_contrast: float,
                 hysteresis: float, min_hold: int, penalty: float) -> np.ndarray:
    """Per-step gripper state (True = closed) of one gripper signal `x` [T].

    Levels are relative to this episode. A channel whose levels differ by less than
    `min_contrast` has no open/closed reading (e.g. drawer-close commands 1 all
    along) and is returned as all False: only changes of state are used.
    """
    x = np.asarray(x, np.float64)
    num = x.shape[0]
    if num < 2:
        return np.zeros((num,), bool)
    # The noise floor keeps the threshold positive on clean signals while any level
    # change of min_contrast over min_hold steps still clears it.
    noise = robust_noise_std(x)
    sigma = max(noise, 0.1 * min_contrast)
    threshold = penalty * np.log(max(num, 3)) * sigma ** 2
    # min_len=1 keeps short runs exact; debouncing below decides what is chatter.
    cps = binary_segmentation(x, min_len=1, threshold=threshold)
    bounds = [0, *cps, num]
    means = np.array([x[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])])
    # The episode's levels, from pieces longer than one step when there are any: a
    # lone noise outlier split off as its own piece must not stretch the range.
    lengths = np.diff(bounds)
    ref = means[lengths >= 2] if (lengths >= 2).any() else means
    lo, hi = float(ref.min()), float(ref.max())
    if hi - lo < max(min_contrast, MIN_CONTRAST_NOISE_STDS * noise):
        return np.zeros((num,), bool)
    level = (means - lo) / (hi - lo)  # may leave [0, 1] for outlier pieces: fine
    if not closed_high:
        level = 1.0 - level
    state = np.zeros((num,), bool)
    current = bool(level[0] > 0.5)
    for (a, b), v in zip(zip(bounds[:-1], bounds[1:]), level):
        if v > 0.5 + hysteresis:
            current = True
        elif v < 0.5 - hysteresis:
            current = False
        state[a:b] = current
    return _merge_short_runs(state, min_hold)
