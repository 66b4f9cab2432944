"""Small local experts for MoT experiments and tests: a BPE tokenizer trained with
``tokenizers`` on the given text, wrapped with a chat template, and a tiny causal LM (Qwen2 or
Llama config) optionally trained on that text.

Nothing is downloaded: the tokenizer and weights are built here. A tiny LM trained on a task
set's *training* questions and answers is a genuine specialist (it learns the answer formats —
a letter for multiple choice, a number for arithmetic) and a member of a different width,
depth, family and tokenizer than SmolLM2. Random weights (``steps=0``) serve mechanics tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def train_tokenizer(texts: Sequence[str], vocab_size: int = 2048) -> Any:
    """A byte-level BPE tokenizer over ``texts`` with the chat template above."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token="<|end|>",
        pad_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        additional_special_tokens=SPECIAL[1:4],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_lm(
    folder: str | Path,
    pairs: Sequence[tuple[str, str]],
    *,
    family: Literal["qwen2", "llama"] = "qwen2",
    hidden: int = 256,
    layers: int = 4,
    heads: int = 4,
    vocab_size: int = 2048,
    steps: int = 0,
    batch_size: int = 16,
    max_tokens: int = 96,
    lr: float = 3e-3,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Build (and with ``steps`` > 0, train on ``pairs`` of (question, answer)) a tiny causal
    LM with its own tokenizer; save it as an HF folder and return the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    texts = [f"{q}\n{a}" for q, a in pairs]
    tokenizer = train_tokenizer(texts, vocab_size)
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    model: Any = (
        Qwen2ForCausalLM(Qwen2Config(**common))  # type: ignore[no-untyped-call]
        if family == "qwen2"
        else LlamaForCausalLM(LlamaConfig(**common))  # type: ignore[no-untyped-call]
    )
    if steps > 0:
        seqs = []
        for q, a in pairs:
            chat = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            ids = tokenizer.apply_chat_template(chat, tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            seqs.append(list(ids)[-max_tokens:])
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for step in range(steps):
            rows = torch.randint(len(seqs), (min(batch_size, len(seqs)),), generator=gen).tolist()
            width = max(len(seqs[r]) for r in rows)
            ids = torch.full((len(rows), width), tokenizer.pad_token_id)
            labels = torch.full((len(rows), width), -100)
            for i, r in enumerate(rows):
                ids[i, : len(seqs[r])] = torch.tensor(seqs[r])
                labels[i, : len(seqs[r])] = torch.tensor(seqs[r])
            loss = model(input_ids=ids, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / 20) * (1 - step / steps) ** 0.5
            opt.step()
            if progress is not None:
                progress(step + 1, steps, float(loss.detach()))
        model.eval()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
