"""encode_example: prompt ids, BOS at most once, demo as raw continuation, EOS and truncation."""

from __future__ import annotations

import pytest

from srft_openrlhf.data import SRFT_SYSTEM_PROMPT, encode_example, render_prompt
from srft_openrlhf.data.encode import demo_continuation
from srft_openrlhf.errors import ConfigError, DataError

_CORPUS = [
    "What is 12 + 35? 12 + 35 = 47. The answer is \\boxed{47}.",
    "Question: Answer: reason step by step, and put your final answer within",
]
_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DEMO = "<think>\n12 + 35 = 47</think>\nThe answer is \\boxed{47}."


def make_tokenizer(*, bos: bool = False, eos: bool = True, chat_template: bool = True):
    """A byte-level BPE trained on two lines; ``<think>``/``</think>`` are single added tokens.
    ``bos=True``: the tokenizer prepends ``<s>`` by default, as Llama's do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        _CORPUS,
        trainer=trainers.BpeTrainer(
            vocab_size=350,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"],
        ),
    )
    tok.add_tokens(["<think>", "</think>"])
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>" if eos else None,
        bos_token="<s>" if bos else None,
    )
    hf.chat_template = _TEMPLATE if chat_template else None
    return hf


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("chat_template", [True, False])
def test_srft_demo_continues_the_prompt_without_a_second_think(chat_template):
    tok = make_tokenizer(chat_template=chat_template)
    prompt = render_prompt("What is 12 + 35?", "srft", tok)
    assert prompt.endswith("<think>\n")
    enc = encode_example(tok, prompt, DEMO, max_prompt_len=1000, max_response_len=1000)
    assert enc.prompt_ids == _ids(tok, prompt)
    assert enc.demo_ids == _ids(tok, "12 + 35 = 47</think>\nThe answer is \\boxed{47}.") + [tok.eos_token_id]
    assert not enc.demo_truncated
    full = tok.decode(enc.prompt_ids + enc.demo_ids)
    assert full == prompt + DEMO[len("<think>\n") :] + "<|im_end|>"
    assert full.count("<think>") == SRFT_SYSTEM_PROMPT.count("<think>") + 1  # the system text's, and one opening


def test_demo_continuation_rules():
    srft_prompt = "Answer: <think>\n"
    assert demo_continuation(srft_prompt, "<think>\nabc") == "abc"
    assert demo_continuation(srft_prompt, "<think>abc") == "abc"
    assert demo_continuation(srft_prompt, "\n<think>\n\nabc") == "\nabc"  # only one newline is the opening's
    assert demo_continuation(srft_prompt, "abc <think>") == "abc <think>"
    assert demo_continuation("Answer:", "<think>\nabc") == "<think>\nabc"  # qwen_math / none: kept whole


def test_qwen_math_demo_keeps_its_think(tok):
    prompt = render_prompt("What is 12 + 35?", "qwen_math", tok)
    enc = encode_example(tok, prompt, DEMO, max_prompt_len=1000, max_response_len=1000)
    assert enc.demo_ids == _ids(tok, DEMO) + [tok.eos_token_id]


def test_truncation_boundary(tok):
    n = len(_ids(tok, "abc def ghi"))
    fits = encode_example(tok, "Q", "abc def ghi", 10, max_response_len=n + 1)
    assert fits.demo_ids[-1] == tok.eos_token_id and len(fits.demo_ids) == n + 1 and not fits.demo_truncated
    cut = encode_example(tok, "Q", "abc def ghi", 10, max_response_len=n)  # only EOS lost: still truncated
    assert cut.demo_ids == _ids(tok, "abc def ghi") and cut.demo_truncated
    short = encode_example(tok, "Q", "abc def ghi", 10, max_response_len=2)
    assert short.demo_ids == _ids(tok, "abc def ghi")[:2] and short.demo_truncated
    assert tok.eos_token_id not in short.demo_ids


def test_no_demo(tok):
    enc = encode_example(tok, "What is 12 + 35?", None, 100, 100)
    assert enc.demo_ids is None and not enc.demo_truncated and enc.prompt_ids == _ids(tok, "What is 12 + 35?")


def test_prompt_too_long_names_length_and_limit(tok):
    n = len(_ids(tok, "What is 12 + 35?"))
    assert encode_example(tok, "What is 12 + 35?", None, max_prompt_len=n, max_response_len=8).prompt_ids
    with pytest.raises(
        DataError, match=f"^train.jsonl row 4: prompt has {n} tokens, more than data.max_prompt_len={n - 1} "
    ):
        encode_example(
            tok, "What is 12 + 35?", None, max_prompt_len=n - 1, max_response_len=8, where="train.jsonl row 4"
        )
    with pytest.raises(DataError, match=f"^prompt has {n} tokens"):
        encode_example(tok, "What is 12 + 35?", None, max_prompt_len=n - 1, max_response_len=8)


def test_bos_added_once_only_when_the_tokenizer_adds_it():
    bos_tok = make_tokenizer(bos=True, chat_template=False)
    bos = bos_tok.bos_token_id
    plain = encode_example(bos_tok, "What is 12 + 35?", "47", 100, 100)
    assert plain.prompt_ids == [bos] + _ids(bos_tok, "What is 12 + 35?")
    assert plain.demo_ids == _ids(bos_tok, "47") + [bos_tok.eos_token_id]  # no BOS inside the response
    already = encode_example(bos_tok, "<s>What is 12 + 35?", None, 100, 100)  # a template that writes BOS
    assert already.prompt_ids == plain.prompt_ids
    no_bos = make_tokenizer()
    assert encode_example(no_bos, "What", None, 100, 100).prompt_ids == _ids(no_bos, "What")


def test_errors_for_missing_eos_and_bad_length():
    with pytest.raises(ConfigError, match="no eos_token"):
        encode_example(make_tokenizer(eos=False), "Q", "demo", 100, 100)
    assert encode_example(make_tokenizer(eos=False), "Q", None, 100, 100).demo_ids is None
    with pytest.raises(ConfigError, match="max_response_len must be at least 1"):
        encode_example(make_tokenizer(), "Q", "demo", 100, 0)
