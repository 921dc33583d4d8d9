"""Noun phrases from a spaCy parse, corrected where the small English model goes wrong on video captions.

spaCy's `noun_chunks` is the base. On captions it fails in known ways, each fixed by one rule below and measured on
the hand-labelled captions (bench/nouns.py, tests/data/noun_phrases.jsonl):
- a verb that is also a plural noun ("slides", "waves", "rolls") is read as the head of its subject's chunk: "a green
  square slides" -> "a green square"; likewise "Sea turtle swimming" -> "Sea turtle" and "the crowd waves flags" ->
  "the crowd", "flags";
- such a verb alone after "and" / "then" becomes a chunk of its own ("... and dances across"): not a phrase;
- a participle clause after a noun starts the next chunk ("feeding pigeons", "Farmer driving tractor"): cut there;
- a noun the parse attached oddly is in no chunk at all ("a dotted line runs ...", "interviews a celebrity"): it
  gets its own phrase, with its determiner and modifiers;
- a quantity or container and its contents are one thing to point at: "a group" + "of" + "people" -> "a group of
  people" (QUANTITY_HEADS);
- "front" of "in front of" is a preposition, not a thing.
A phrase therefore ends at its head noun and never holds a verb; spans index the parsed text.
"""

from __future__ import annotations

# Verbs whose third-person singular is also a plural noun (or that the small model tags as one), as captions use
# them: "a ball rolls", "the girl waves". Only a word of this list, right after a noun, is taken for a verb.
VERBS_S = frozenset("""
    slides rolls walks waves turns falls jumps runs plays dances swings lands sets points hits flies drinks signs
    cuts drops shakes spins kicks throws bats trains watches ducks parks dives plants lights fries cooks races blocks
    rocks interviews speeds winds grazes cheers pans practices leaves moves looks smiles climbs rides swims skates
    skis surfs paints draws writes reads sings laughs cries waits stands sits lies shows holds pulls pushes lifts
    carries opens closes fills pours mixes stirs cleans washes wipes brushes combs dresses ties kisses hugs pets
    feeds chases catches passes shoots scores serves bounces floats sinks flows melts burns smokes grows blooms
    crosses enters exits starts stops steps hops skips flips rolls glides drives parks rides turns spins twists
    marches crawls sleeps eats bites chews cooks bakes grills slices chops peels cracks sprays splashes drips
    answers calls talks speaks points nods waves claps snaps films records sketches zooms tilts crashes""".split())
# Their base forms, the verb of a plural or coordinated subject ("big waves crash", "a man and a dog walk").
VERBS_BASE = frozenset({w[:-2] for w in VERBS_S if w.endswith(("ches", "shes", "sses", "xes"))}
                       | {w[:-1] for w in VERBS_S if not w.endswith(("ches", "shes", "sses", "xes"))})
# Heads that name a quantity or container of what follows "of": one phrase.
QUANTITY_HEADS = frozenset("""
    group pair cup bunch piece slice couple herd bottle glass stack crowd flock box bowl plate bag handful team row
    pile set can jar sheet loaf series number school swarm pack bouquet basket bucket tray carton mug""".split())
# Nouns ending in -ing that are things, not participles ("the office building").
ING_NOUNS = frozenset("""
    building ceiling painting clothing wedding morning evening meeting ring king string wing sibling pudding railing
    drawing parking landing opening crossing filling ending frosting icing lightning spring swing earring
    stocking topping seasoning dressing sling ping""".split())
NOUN_TAGS = ("NN", "NNS", "NNP", "NNPS")
# Tokens that may stand left of an orphan noun in its phrase.
MODIFIER_TAGS = ("DT", "JJ", "JJR", "JJS", "PRP$", "CD", "VBN", "NN", "NNP", "POS")


def _is_noun(tok) -> bool:
    return tok.tag_ in NOUN_TAGS


def _verb_after_noun(doc, i: int) -> bool:
    """Token i reads as the clause's verb: a VERBS_S word (or one tagged VBZ) right after a noun, and the next token
    is no verb (in "bread rolls sit", "rolls" is the noun)."""
    tok = doc[i]
    if i == 0 or not _is_noun(doc[i - 1]):
        return False
    if not (tok.tag_ == "VBZ" or (tok.lower_ in VERBS_S and tok.tag_ in NOUN_TAGS)):
        return False
    nxt = doc[i + 1] if i + 1 < len(doc) else None
    return nxt is None or not (nxt.tag_.startswith("VB") or nxt.tag_ == "MD")


def _base_verb_after_plural(doc, i: int) -> bool:
    """Token i is the base-form verb of a plural subject ("big waves crash") or of a coordinated one ("the man and
    the woman dance"): a VERBS_BASE word after a noun, and no noun follows (that would make it a compound)."""
    tok = doc[i]
    if i == 0 or tok.lower_ not in VERBS_BASE or not _is_noun(doc[i - 1]) or tok.tag_ not in NOUN_TAGS + ("VB", "VBP"):
        return False
    if i + 1 < len(doc) and _is_noun(doc[i + 1]):
        return False
    coordinated = any(t.lower_ == "and" for t in doc[max(0, i - 5):i])
    return doc[i - 1].tag_ in ("NNS", "NNPS") or coordinated


def _participle_after_noun(doc, i: int) -> bool:
    tok = doc[i]
    return (i > 0 and _is_noun(doc[i - 1]) and tok.lower_.endswith("ing") and tok.lower_ not in ING_NOUNS
            and tok.tag_ in ("VBG", "NN"))


def _split(doc, start: int, end: int) -> list[tuple[int, int]]:
    """A chunk [start, end) cut at any verb or participle that follows a noun inside it."""
    out, lo = [], start
    for i in range(start + 1, end):
        if _verb_after_noun(doc, i) or _participle_after_noun(doc, i) or _base_verb_after_plural(doc, i):
            out.append((lo, i))
            lo = i + 1
    out.append((lo, end))
    out = [(a, b) for a, b in out if b > a]
    # A leading participle that continues a clause after a noun ("bench feeding pigeons") is not in the phrase.
    return [(a + 1, b) if b - a > 1 and doc[a].tag_ == "VBG" and a > 0 and _is_noun(doc[a - 1]) else (a, b)
            for a, b in out]


def _stray_verb(doc, start: int, end: int) -> bool:
    """A one-word chunk that is a VERBS_S verb coordinated after "and" / "then" / a comma ("... and dances")."""
    if end - start != 1 or doc[start].lower_ not in VERBS_S or start == 0:
        return False
    return doc[start - 1].lower_ in ("and", "then", "or", ",")


def _orphans(doc, covered: set[int]) -> list[tuple[int, int]]:
    """Nouns in no chunk, each with the determiner and modifiers right before it; the last of a noun run heads it."""
    out = []
    for i, tok in enumerate(doc):
        if i in covered or not _is_noun(tok) or tok.lower_ in VERBS_S or _base_verb_after_plural(doc, i):
            continue
        nxt = i + 1
        if (nxt < len(doc) and _is_noun(doc[nxt]) and nxt not in covered and doc[nxt].lower_ not in VERBS_S
                and not _base_verb_after_plural(doc, nxt)):
            continue  # a compound: the next noun heads it
        lo = i
        while lo > 0 and lo - 1 not in covered and doc[lo - 1].tag_ in MODIFIER_TAGS:
            lo -= 1
        out.append((lo, i + 1))
        covered.update(range(lo, i + 1))
    return out


def _merge_quantities(doc, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """"a group" "of" "people" -> one span."""
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if out:
            pa, pb = out[-1]
            if (pb + 1 == a and doc[pb].lower_ == "of" and doc[pb - 1].lemma_.lower() in QUANTITY_HEADS):
                out[-1] = (pa, b)
                continue
        out.append((a, b))
    return out


def _preposition_part(doc, a: int, b: int) -> bool:
    """"front" of "in front of", "top" of "on top of": part of a preposition."""
    return (b - a == 1 and a > 0 and b < len(doc) and doc[a - 1].lower_ in ("in", "on")
            and doc[b].lower_ == "of" and doc[a].lower_ in ("front", "top"))


def phrase_spans(doc) -> list[tuple[int, int]]:
    """Token spans [start, end) of the caption's noun phrases, in order, each ending at its head noun."""
    spans: list[tuple[int, int]] = []
    covered: set[int] = set()  # tokens of spaCy's chunks, kept or cut: no orphan is made of them
    for chunk in doc.noun_chunks:
        covered.update(range(chunk.start, chunk.end))
        if _stray_verb(doc, chunk.start, chunk.end):
            continue
        spans += _split(doc, chunk.start, chunk.end)
    spans = [(a, b) for a, b in spans if not _preposition_part(doc, a, b)]
    spans = sorted(spans + _orphans(doc, covered))
    return _merge_quantities(doc, spans)
