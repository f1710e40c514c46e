"""Request encodings written out, for the scoring tests to compare ptft's with."""


def eos_encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's (context, continuation) encoding for a tokenizer that adds no special tokens (and
    ptft's for every tokenizer before ``evaluate.add_bos``): the context's trailing spaces move to
    the continuation, an empty context is EOS."""
    if not context:
        return [tok.eos_token_id], tok.encode(continuation, add_special_tokens=False)
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    whole = tok.encode(stripped + continuation, add_special_tokens=False)
    ctx = tok.encode(stripped, add_special_tokens=False)
    return ctx, whole[len(ctx) :]
