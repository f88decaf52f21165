"""Names OpenRLHF imports from ``flash_attn.bert_padding``; calling any of them is a test bug."""


def _unavailable(name: str):
    def fail(*args, **kwargs):
        raise NotImplementedError(f"flash_attn.bert_padding.{name} is a test stub (sample packing needs flash-attn)")

    fail.__name__ = name
    return fail


index_first_axis = _unavailable("index_first_axis")
pad_input = _unavailable("pad_input")
rearrange = _unavailable("rearrange")
unpad_input = _unavailable("unpad_input")
