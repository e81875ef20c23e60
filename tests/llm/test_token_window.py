"""Backends say how long their context is and count tokens with the serving model's tokenizer."""

from __future__ import annotations

from pathlib import Path

from recgpt.llm.backends.fake import FakeBackend
from recgpt.llm.backends.openai_backend import OpenAIBackend
from recgpt.llm.server import LlamaServer
from recgpt.llm.types import APPROX_WINDOW, Backend, ChatMessage, approx_tokens

TEXT = "3 days ago (purchased) | Borosilicate Glass Beaker 250ml [Lab/Beakers]"


def test_the_fake_backends_window_is_its_n_ctx_and_a_word_count() -> None:
    window = FakeBackend(n_ctx=512).token_window()
    assert window.n_ctx == 512 and window.count(TEXT) == approx_tokens(TEXT) and not window.exact
    msgs = [ChatMessage(role="user", content=TEXT)]
    assert window.count_messages(msgs) > window.count(TEXT)  # the chat template's markers count too
    assert FakeBackend(n_ctx=None).token_window().n_ctx is None


def test_an_unknown_backend_has_no_context_limit() -> None:
    class Plain(Backend):
        name = "plain"
        model_id = "m"

        def generate(self, inputs):  # type: ignore[no-untyped-def]
            return []

    assert Plain().token_window() is APPROX_WINDOW


def test_a_server_without_a_tokenizer_is_approximated() -> None:
    backend = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", n_ctx=2048, timeout_s=1)
    window = backend.token_window()
    assert window.n_ctx == 2048 and window.counter == "approx" and window.count(TEXT) == approx_tokens(TEXT)


def test_a_llama_cpp_server_counts_with_its_own_tokenizer(
    llama_server: LlamaServer, smollm2_gguf: Path
) -> None:
    from recgpt.llm.backends.llamacpp_backend import LlamaCppBackend

    backend = OpenAIBackend(llama_server.model, base_url=llama_server.base_url, n_ctx=2048)
    window = backend.token_window()
    assert window.counter.startswith("server:") and window.n_ctx == 2048
    model = LlamaCppBackend(smollm2_gguf, n_ctx=256)
    local = model.token_window()
    model.close()  # a window outlives its backend safely (it counts with a vocabulary-only copy then)
    assert local.exact and window.count(TEXT) == local.count(TEXT) > 0
    backend.close()
