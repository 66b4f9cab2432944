"""Documents → chunks small enough for MiniLM to read whole.

MiniLM reads at most 128 word pieces (≈500 characters of English), and the shared embedder
keeps only the last 512 characters of a text (:mod:`routers.embeddings`), so a chunk is at most
``max_chars`` (≤ 512) characters *including* the document title it is embedded with: a passage
like "## Power / The Tarn-40 runs on a 5200 mAh battery" is found by "Tarn-40 battery" only if
the title travels with it.

Splitting keeps structure where it can: paragraphs (blank lines) first, a markdown heading stays
with the paragraph under it, then sentences, then words for a sentence longer than a chunk.
Pieces are packed greedily; each chunk after the first starts with the last sentences of the
previous one, up to ``overlap_chars``, so a fact split across a boundary is whole in one chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")


@dataclass(frozen=True, slots=True)
class Chunk:
    n: int
    text: str


def title_of(text: str) -> str | None:
    """The first markdown heading of ``text`` (a document's title), if it has one."""
    for line in text.splitlines():
        m = _HEADING.match(line)
        if m:
            return m.group(1).strip()
        if line.strip():
            return None
    return None


def embedded_text(title: str | None, chunk: str) -> str:
    """What is embedded for a chunk: its document's title, then the chunk."""
    return f"{title}\n{chunk}" if title and not chunk.startswith(title) else chunk


def chunk_text(text: str, max_chars: int = 480, overlap_chars: int = 80) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``max_chars`` characters (whitespace-normalised
    within lines), in document order. Empty text gives no chunks."""
    if max_chars < 20:
        raise ValueError("max_chars must be at least 20")
    pieces = _pieces(text, max_chars)
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        extra = len(piece) + (1 if current else 0)
        if current and size + extra > max_chars:
            chunks.append(" ".join(current))
            current = _overlap(current, overlap_chars, max_chars - len(piece) - 1)
            size = len(" ".join(current))
            extra = len(piece) + (1 if current else 0)
        current.append(piece)
        size += extra
    if current:
        chunks.append(" ".join(current))
    return [Chunk(i, c) for i, c in enumerate(chunks)]


def _pieces(text: str, max_chars: int) -> list[str]:
    """Sentences (and headings joined to their paragraph's first sentence), none too long."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
        if not lines:
            continue
        heading = ""
        if _HEADING.match(lines[0]):
            heading = _HEADING.match(lines[0]).group(1).strip()  # type: ignore[union-attr]
            lines = lines[1:]
        sentences = _SENTENCE.split(" ".join(lines)) if lines else []
        if heading:
            if sentences and len(heading) + 2 + len(sentences[0]) <= max_chars:
                sentences[0] = f"{heading}: {sentences[0]}"
            else:
                sentences.insert(0, heading)
        for s in sentences:
            out.extend(_split_long(s, max_chars))
    return out


def _split_long(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    parts: list[str] = []
    current = ""
    for word in sentence.split():
        while len(word) > max_chars:  # a single enormous token (a URL, a hash)
            if current:
                parts.append(current)
                current = ""
            parts.append(word[:max_chars])
            word = word[max_chars:]
        if current and len(current) + 1 + len(word) > max_chars:
            parts.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        parts.append(current)
    return parts


def _overlap(previous: list[str], overlap_chars: int, room: int) -> list[str]:
    """The last sentences of the previous chunk that fit in ``overlap_chars`` (and ``room``)."""
    kept: list[str] = []
    size = 0
    for s in reversed(previous):
        if size + len(s) + 1 > min(overlap_chars, room):
            break
        kept.insert(0, s)
        size += len(s) + 1
    return kept
