"""Language: each object's noun phrase, the caption that names every object once, and the events read off the
motion and visibility."""

from __future__ import annotations

import numpy as np

from annotate.synthetic.params import SIZE_WORDS, WorldParams


def noun_phrase(rng, colour: str, shape: str, texture: str, size_word: str | None) -> tuple[str, str]:
    """(phrase as written in the caption, its core without the determiner)."""
    style = rng.choice(["colour", "texture", "texture_colour", "size_colour"], p=[0.45, 0.2, 0.2, 0.15])
    if style == "size_colour" and size_word is None:
        style = "colour"
    words = {
        "colour": [colour, shape],
        "texture": [texture, shape],
        "texture_colour": [texture, colour, shape],
        "size_colour": [str(rng.choice(SIZE_WORDS[size_word])) if size_word else "", colour, shape],
    }[style]
    core = " ".join(w for w in words if w)
    det = "the" if rng.random() < 0.2 else ("an" if core[0] in "aeiou" else "a")
    return f"{det} {core}", core


# Progressive verbs ("is drifting") on purpose: spaCy's small model reads "a purple diamond moves about" as one noun
# chunk ("diamond moves") about a fifth of the time, and then the nouns stage cannot find the object's phrase.
ROAM = ["is drifting around", "is wandering slowly", "is moving about the scene", "is sliding gently around",
        "is floating across the scene", "is meandering around"]
STOP = ["is pausing briefly", "is stopping for a moment", "is resting for a moment before moving on"]
ENTER = ["is sliding in from the {side}", "is entering the frame from the {side}", "is coming in from the {side}"]
EXIT = ["is leaving the frame on the {side}", "is moving out of view to the {side}", "is heading off to the {side}"]
GROW = ["growing a little", "getting a bit bigger", "gradually growing"]
SHRINK = ["shrinking a little", "getting a bit smaller", "gradually shrinking"]
IN_FRONT = ["is passing over {other}", "is drifting past {other}", "is crossing over {other}"]
BEHIND = ["is slipping behind {other}", "is passing behind {other}"]
INTROS = ["In this short video,", "In this clip,", "Here,", "Over a mottled background,", "In the footage,",
          "While the camera slowly moves,", "On a textured background,"]


def _side(xy: np.ndarray, W: int, H: int) -> str:
    gaps = {"left": xy[0], "top": xy[1], "right": W - xy[0], "bottom": H - xy[1]}
    return min(gaps, key=gaps.get)


def _runs(flags: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """[start, end) runs of True at least min_len long."""
    out, start = [], None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            if i - start >= min_len:
                out.append((start, i))
            start = None
    return out


def describe_clip(rng, p: WorldParams, objects: list[dict], centres: np.ndarray, in_frame_frac: np.ndarray,
              occ_frac: np.ndarray, z: np.ndarray, crossing: tuple[int, int] | None) -> tuple[str, list[dict]]:
    """Caption (every object named once by its phrase) and events read off the actual motion and visibility."""
    T, fps, W, H = p.frames, p.fps, p.width, p.height
    sec = lambda f: round(float(f) / fps, 3)  # noqa: E731
    events, verbs = [], {}
    min_stop = max(3, int(round(0.5 * fps)))
    for k, o in enumerate(objects):
        the = f"the {o['core']}"
        present = np.flatnonzero(in_frame_frac[k] > 0)
        speed = np.r_[np.linalg.norm(np.diff(centres[k], axis=0), axis=1), np.inf]
        stops = [(a, b) for a, b in _runs(speed < 0.15, min_stop) if in_frame_frac[k, (a + b) // 2] > 0.5]
        for a, b in stops:
            events.append({"start": sec(a), "end": sec(b), "text": f"{the} stops"})
        parts = []
        if len(present) and present[0] > 0:
            first = present[0]
            full = np.flatnonzero(in_frame_frac[k, first:] >= 0.95)
            end = first + (full[0] if len(full) else 0) + 1
            events.append({"start": sec(first), "end": sec(min(end, T)), "text": f"{the} enters the frame"})
            side = _side(centres[k, first], W, H)
            parts.append(str(rng.choice(ENTER)).format(side=side))
        if len(present) and present[-1] < T - 1:
            last = present[-1]
            full = np.flatnonzero(in_frame_frac[k, : last + 1] >= 0.95)
            start = full[-1] if len(full) else last
            events.append({"start": sec(start), "end": sec(last + 1), "text": f"{the} leaves the frame"})
            side = _side(centres[k, last], W, H)
            parts.append(str(rng.choice(EXIT)).format(side=side))
        if not parts:
            parts.append(str(rng.choice(STOP if stops else ROAM)))
        verb = ", then ".join([parts[0]] + [q.removeprefix("is ") for q in parts[1:]])
        growth = o["scale_end"]
        if growth > 1.15:
            verb += " and " + str(rng.choice(GROW))
        elif growth < 1 / 1.15:
            verb += " and " + str(rng.choice(SHRINK))
        verbs[k] = verb
    for k in range(len(objects)):  # occlusions: k is partly hidden by the nearer j
        for j in range(len(objects)):
            for a, b in _runs(occ_frac[k, j] > 0.1, 2):
                events.append({"start": sec(a), "end": sec(b),
                               "text": f"the {objects[j]['core']} passes in front of the {objects[k]['core']}"})
    events.sort(key=lambda e: (e["start"], e["end"], e["text"]))

    return _caption(rng, objects, verbs, z, crossing), events


def _caption(rng, objects: list[dict], verbs: dict, z: np.ndarray, crossing: tuple[int, int] | None) -> str:
    """One clause per object (the crossing's mover names the other too), in an order drawn from `rng`, joined."""
    clauses, named = [], set()
    if crossing is not None:  # the mover's clause also names the object it crosses
        mover, other = crossing
        tmpl = IN_FRONT if z[mover] > z[other] else BEHIND
        clauses.append(f"{objects[mover]['phrase']} {str(rng.choice(tmpl)).format(other=objects[other]['phrase'])}")
        named |= {mover, other}
    for k in rng.permutation(len(objects)):
        if k not in named:
            clauses.append(f"{objects[k]['phrase']} {verbs[k]}")
    intro = str(rng.choice(INTROS))
    if len(clauses) == 1:
        text = f"{intro} {clauses[0]}."
    elif len(clauses) == 2:
        text = f"{intro} {clauses[0]} while {clauses[1]}."
    elif len(clauses) == 3:
        text = f"{intro} {clauses[0]}, {clauses[1]}, and {clauses[2]}."
    else:
        rest = ", ".join(clauses[2:-1]) + f" and {clauses[-1]}"
        text = f"{intro} {clauses[0]} while {clauses[1]}. Meanwhile, {rest}."
    return text
