"""Frozen language-model embeddings of task descriptions, cached on disk (the method's item 1 in the README).

One cache file per (model, pooling) under ``<cache_dir>/embeddings/`` maps each text to its vector, so
training and evaluation never load the language model once the cache holds their descriptions.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from llmdpd.prompts.language_model import PACKAGED_MODELS, load_language_model, resolve_local_folder

POOLINGS = ("mean", "last", "cls")
CACHE_FORMAT = 1


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool [B, T, E] hidden states into [B, E], reading only positions where `attention_mask` is 1.

    ``mean`` averages the real tokens, ``last`` takes the last real token and ``cls`` the first one; both
    work with left or right padding. For a causal decoder only ``last`` and ``mean`` see the whole text.
    """
    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
    if pooling == "last":
        positions = torch.arange(hidden.shape[1], device=hidden.device, dtype=hidden.dtype)
        index = (mask * positions).argmax(1)
    elif pooling == "cls":
        index = mask.argmax(1)  # argmax returns the first maximum: the first real token
    else:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def cache_key(model: str) -> str:
    """File-name-safe key for a model name; a local folder also gets a hash of its resolved path."""
    local = resolve_local_folder(model) if model not in PACKAGED_MODELS else None
    if local is None:
        return re.sub(r"[^A-Za-z0-9_.-]+", "--", model).strip("-.") or "model"
    digest = hashlib.sha1(str(local).encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', local.name) or 'model'}-{digest}"


class TextEmbedder:
    """Embeds texts with a frozen language model, through an on-disk cache shared by all processes.

    `embed` returns one float32 CPU vector per text. Texts already in the cache never load the model;
    missing ones are computed by one process at a time (a file lock), so DDP ranks that start together
    compute them once and the others read the result. `model_loaded` tells whether the model was loaded.
    """

    def __init__(
        self,
        model: str = "smollm2",
        pooling: str = "mean",
        cache_dir: str | Path = ".cache/llmdpd",
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int = 512,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        self.model_name = model
        self.pooling = pooling
        self.cache_dir = Path(cache_dir)
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.cache_path = self.cache_dir / "embeddings" / f"{cache_key(model)}__{pooling}.pt"
        self.model_loaded = False
        self._tokenizer: Any = None
        self._model: Any = None
        self._vectors: dict[str, torch.Tensor] = {}
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        """Width E of the embeddings (read from the cache when it has any, else from the model)."""
        if self._dim is None:
            self._read_cache()
        if self._dim is None:
            config = self._language_model()[1].config
            self._dim = int(getattr(config, "hidden_size", None) or config.d_model)
        return self._dim

    def embed(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), E] float32 embeddings on the CPU, computing and caching only the missing texts."""
        if not self._missing(texts):
            return self._stack(texts)
        self._read_cache()
        if self._missing(texts):
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.cache_path) + ".lock"):
                self._read_cache()  # another process may have added them while this one waited
                # Similar lengths share a batch, so little compute goes to padding.
                missing = sorted(self._missing(texts), key=len)
                if missing:
                    self._vectors.update(zip(missing, self._compute(missing)))
                    self._write_cache()
        return self._stack(texts)

    def _missing(self, texts: list[str]) -> list[str]:
        return [text for text in dict.fromkeys(texts) if text not in self._vectors]

    def _stack(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._vectors[text] for text in texts])

    def _language_model(self) -> tuple[Any, Any]:
        if self._model is None:
            self._tokenizer, self._model = load_language_model(self.model_name, self.cache_dir, self.device)
            self.model_loaded = True
        return self._tokenizer, self._model

    @torch.no_grad()
    def _compute(self, texts: list[str]) -> list[torch.Tensor]:
        tokenizer, model = self._language_model()
        vectors = []
        for start in range(0, len(texts), self.batch_size):
            batch = tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            pooled = pool_hidden_states(hidden, batch["attention_mask"], self.pooling)
            vectors.extend(pooled.float().cpu())
        self._dim = int(vectors[0].shape[0])
        return [vector.clone() for vector in vectors]  # clone: rows must not keep the whole batch alive

    def _read_cache(self) -> None:
        if not self.cache_path.exists():
            return
        try:
            # weights_only: the file holds only strings, ints and tensors, so nothing in it can run code.
            content = torch.load(self.cache_path, map_location="cpu", weights_only=True)
            if content["format"] != CACHE_FORMAT:
                raise ValueError(f"format {content['format']!r}, expected {CACHE_FORMAT}")
            texts, vectors, dim = content["texts"], content["vectors"], int(content["dim"])
            if vectors.shape != (len(texts), dim):
                raise ValueError(f"{len(texts)} texts but vectors of shape {tuple(vectors.shape)}")
        except Exception as error:  # any unreadable file is recomputed, never fatal
            warnings.warn(f"ignoring unreadable embedding cache {self.cache_path} ({error}); recomputing")
            return
        self._dim = dim
        for text, vector in zip(texts, vectors.float()):
            self._vectors.setdefault(text, vector)

    def _write_cache(self) -> None:
        texts = list(self._vectors)
        content = {
            "format": CACHE_FORMAT,
            "model": self.model_name,
            "pooling": self.pooling,
            "dim": self.dim,
            "texts": texts,
            "vectors": torch.stack([self._vectors[text] for text in texts]),
        }
        partial = self.cache_path.with_name(f".{self.cache_path.name}.{os.getpid()}.tmp")
        torch.save(content, partial)
        os.replace(partial, self.cache_path)  # readers see the old file or the new one, never half of one


def make_text_embedder(cfg: Any) -> "TextEmbedder | None":
    """The experiment's text embedder (`text.model`, `text.pooling`, cached under `paths.cache_dir`), or None
    when text prompts are off."""
    if not cfg.text.enabled:
        return None
    return TextEmbedder(cfg.text.model, cfg.text.pooling, cache_dir=cfg.paths.cache_dir)
