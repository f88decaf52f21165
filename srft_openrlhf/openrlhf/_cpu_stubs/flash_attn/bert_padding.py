"""Names OpenRLHF imports from ``flash_attn.bert_padding``; sample packing is refused on CPU."""


def _unavailable(name: str):
    def fail(*args, **kwargs):
        raise NotImplementedError(
            f"flash_attn.bert_padding.{name}: flash-attn is not available on CPU (sample packing needs it)"
        )

    fail.__name__ = name
    return fail


index_first_axis = _unavailable("index_first_axis")
pad_input = _unavailable("pad_input")
rearrange = _unavailable("rearrange")
unpad_input = _unavailable("unpad_input")
