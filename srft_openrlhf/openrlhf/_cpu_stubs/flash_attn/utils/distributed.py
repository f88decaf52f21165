"""``all_gather`` as imported by OpenRLHF's ring-attention helpers; ring attention is refused on CPU."""


def all_gather(*args, **kwargs):
    raise NotImplementedError("flash_attn.utils.distributed.all_gather: flash-attn is not available on CPU")
