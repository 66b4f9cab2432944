"""Chunking of knowledge-store documents, and the Decision.context hook of dispatch."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.config import ExpertConfig
from orchestrator.dispatch import build_request
from orchestrator.kb.chunking import chunk_text, embedded_text, title_of
from orchestrator.types import Decision, Message, Query
from tests.conftest import ROOT

SPEC = (ROOT / "docs/examples/kb/brindlewave-tarn-40.md").read_text()


def test_chunks_respect_the_size_and_keep_every_sentence() -> None:
    chunks = chunk_text(SPEC, max_chars=200, overlap_chars=60)
    assert len(chunks) > 2
    assert [c.n for c in chunks] == list(range(len(chunks)))
    assert all(len(c.text) <= 200 for c in chunks)
    joined = " ".join(c.text for c in chunks)
    for fact in ("5200 mAh", "41 days", "Corvid-3", "780 grams", "moss green", "Ilse Marquardt"):
        assert fact in joined


def test_a_heading_stays_with_its_paragraph() -> None:
    chunks = chunk_text(SPEC, max_chars=480, overlap_chars=80)
    assert any("Power: The Tarn-40 runs on a 5200 mAh lithium battery." in c.text for c in chunks)
    assert not any(c.text.strip() == "Power" for c in chunks)


def test_overlap_repeats_the_last_sentences_of_the_previous_chunk() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(30))
    chunks = chunk_text(text, max_chars=120, overlap_chars=60)
    for before, after in itertools.pairwise(chunks):
        last = before.text.split(". ")[-1]
        assert after.text.startswith(last.rstrip(".")) or last in after.text
    no_overlap = chunk_text(text, max_chars=120, overlap_chars=0)
    assert sum(len(c.text) for c in no_overlap) < sum(len(c.text) for c in chunks)


def test_long_sentences_and_words_are_split() -> None:
    text = "word " * 300 + "x" * 700
    chunks = chunk_text(text, max_chars=100, overlap_chars=0)
    assert all(len(c.text) <= 100 for c in chunks)
    assert sum(c.text.count("word") for c in chunks) == 300
    assert chunk_text("   \n\n  ") == []
    with pytest.raises(ValueError):
        chunk_text("abc", max_chars=5)


def test_titles() -> None:
    assert title_of(SPEC) == "Brindlewave Tarn-40 field weather station"
    assert title_of("no heading here\n# later") is None
    assert embedded_text("T", "body") == "T\nbody"
    assert embedded_text("T", "T and body") == "T and body"


def test_decision_context_goes_right_after_the_expert_system_prompt() -> None:
    expert = ExpertConfig(name="e", backend="echo", model="x", system_prompt="You are e.")
    query = Query(
        messages=(
            Message("system", "Client rules."),
            Message("user", "Question?"),
        )
    )
    passages = Message("system", "[1] a passage")
    note = Message("user", "context as a turn")
    request = build_request(expert, query, (passages, note))
    assert request.messages[0] == Message("system", "You are e.\n\n[1] a passage\n\nClient rules.")
    assert [m.content for m in request.messages[1:]] == ["context as a turn", "Question?"]
    # no context: what it always was
    assert build_request(expert, query).messages[0].content == "You are e.\n\nClient rules."
    assert Decision("s", ("e",), (), "r").context == ()
