"""Expert backends behind one base class, registered by name (imports are lazy)."""

from __future__ import annotations

from orchestrator.config import ExpertConfig
from orchestrator.registry import Registry
from workers.base import Backend

BACKENDS: Registry[Backend] = Registry(
    "backend",
    Backend,
    {
        "transformers": "workers.transformers_backend:TransformersBackend",
        "openai": "workers.openai_backend:OpenAIBackend",
        "vllm": "workers.vllm_backend:VLLMBackend",
        "replay": "workers.replay:ReplayBackend",
        "echo": "workers.echo:EchoBackend",
        "mot": "workers.mot_backend:MoTBackend",
    },
)


def list_backends() -> list[str]:
    return BACKENDS.names()


def create_backend(expert: ExpertConfig) -> Backend:
    return BACKENDS.get(expert.backend)(expert)


__all__ = ["BACKENDS", "Backend", "create_backend", "list_backends"]
