"""Options of the ``mot`` strategy: serving (``artifact``, ``expert``) and training.

Kept free of torch so that validating a config (which loads every strategy's options) stays
cheap.
"""

from __future__ import annotations

from pydantic import Field

from routers.trainable import TrainableOptions


class MoTOptions(TrainableOptions):
    """Serving options (``artifact``, ``expert``) and training options (the rest)."""

    expert: str | None = Field(
        None,
        description="The pool expert that runs the MoT (backend: mot); default: the only one.",
    )
    members: list[str] = Field(
        default_factory=lambda: ["smollm2", "smollm2@12", "minilm"],
        description="Training: the frozen experts — 'smollm2', a local HF folder, 'minilm', "
        "each optionally '@N' (first N layers only).",
    )
    k: int = Field(2, ge=1, description="Training: experts per query (the primary + k−1 peers).")
    interactions: int = Field(
        2, ge=1, description="Training: interaction layers, at depths q/Q of every member."
    )
    latent: int = Field(128, ge=8, description="Training: shared latent size.")
    heads: int = Field(4, ge=1, description="Training: cross-attention heads.")
    router_hidden: int = Field(64, ge=4, description="Training: router MLP width.")
    steps: int = Field(80, ge=0, description="Training: joint optimisation steps.")
    batch_size: int = Field(4, ge=1, description="Training: pairs per step.")
    lr: float = Field(2e-3, gt=0, description="Training: AdamW learning rate.")
    gate_lr: float = Field(2e-2, gt=0, description="Training: learning rate of the tanh gates.")
    router_lr: float = Field(3e-3, gt=0, description="Training: learning rate of the router.")
    warmup_steps: int = Field(200, ge=0, description="Training: router-only ranking steps.")
    rank_weight: float = Field(0.5, ge=0, description="Training: weight of the ranking term.")
    rank_temperature: float = Field(
        0.1, gt=0, description="Training: τ of the ranking target (nats per character)."
    )
    balance_weight: float = Field(0.01, ge=0, description="Training: load-balancing weight.")
    max_prompt_chars: int = Field(200, ge=16, description="Training: question tail kept.")
    max_answer_chars: int = Field(64, ge=1, description="Training: answer head kept.")
    max_pairs: int | None = Field(
        400, ge=2, description="Training: at most this many pairs (by hash); none = all."
    )
    max_peer_tokens: int = Field(
        256, ge=8, description="Peers read at most this many prompt tokens (the tail)."
    )
    threads: int | None = Field(
        None, ge=1, le=2, description="Training: torch threads (default: torch's, at most 2)."
    )
