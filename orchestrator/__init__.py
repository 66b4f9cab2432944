"""expert-orchestrator: one OpenAI-compatible endpoint in front of many expert LLMs."""

__version__ = "0.1.0"
