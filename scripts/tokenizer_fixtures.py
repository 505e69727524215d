#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizers/llama2-style.json: a small SentencePiece-style BPE
tokenizer in the form of LLaMA-2's tokenizer.json (normalizer Prepend("▁") + Replace(" ",
"▁"), no pre-tokenizer, byte fallback with <0x00>..<0xFF> in the vocabulary), trained with
the `tokenizers` library on the opening of Moby Dick. The tests tokenize long texts in
pieces with it (io::pieces), where a normalizer that acts on the start of the text is the
hard case. Needs `pip install tokenizers` (a developer's machine, not CI).

    python scripts/tokenizer_fixtures.py MOBY_DICK_TXT [--out tests/fixtures/tokenizers]
"""

import argparse
import json
import os

from tokenizers import Tokenizer, decoders, models, normalizers, trainers

SPECIALS = ["<unk>", "<s>", "</s>"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("text")
    ap.add_argument("--out", default="tests/fixtures/tokenizers")
    ap.add_argument("--vocab", type=int, default=1200)
    a = ap.parse_args()
    lines = open(a.text, encoding="utf-8").read().splitlines()[:4000]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(vocab_size=a.vocab, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator([l for l in lines if l.strip()], trainer)
    v = json.loads(tok.to_str())
    # LLaMA-2's layout: specials, then the 256 byte tokens, then the learnt pieces.
    learnt = sorted(v["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in learnt:
        if piece not in vocab:
            vocab[piece] = len(vocab)
    v["model"]["vocab"] = vocab
    v["added_tokens"] = [
        {"id": vocab[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for s in SPECIALS
    ]
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "llama2-style.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(v, f, ensure_ascii=False, separators=(",", ":"))
    back = Tokenizer.from_file(path)
    print(path, back.get_vocab_size(), back.encode("Call me Ishmael. ünï 42").tokens)


if __name__ == "__main__":
    main()
