#!/usr/bin/env python3
"""Writes tests/fixtures/chat/expected.json: what transformers' apply_chat_template gives for
the chat templates in tests/fixtures/chat/ (src/infer/chat.rs renders the same cases and
compares), and tests/fixtures/chat/smollm2.jinja, the template of the default model, read
from its GGUF (`tokenizer.chat_template`).

    python scripts/chat_fixtures.py --gguf ~/.cache/sparsetune/SmolLM2-135M-Instruct.Q4_1.gguf \
        [--out tests/fixtures/chat]

Each template is rendered for every conversation below, with and without
add_generation_prompt, by `tokenizer.apply_chat_template(messages, chat_template=...,
tokenize=False, add_generation_prompt=...)` on a tokenizer whose only special tokens are the
template's BOS and EOS (what our renderer passes). A case records the text ("rendered"), the
message of the template's raise_exception ("raised"), or any other failure ("error").

Needs transformers, jinja2 and gguf (`pip install transformers gguf`; torch is not needed).
A developer's machine, not CI.
"""

import argparse
import json
import os

import jinja2
import transformers
from gguf import GGUFReader
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

# template file -> (bos_token, eos_token), as the models' tokenizer_config.json name them.
TEMPLATES = {
    "smollm2.jinja": ("<|im_start|>", "<|im_end|>"),
    "llama2.jinja": ("<s>", "</s>"),
    "llama3.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama31.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "mistral_v01.jinja": ("<s>", "</s>"),
    "mistral_v03.jinja": ("<s>", "</s>"),
    "features.jinja": ("<s>", "</s>"),
}

SYSTEM_USER = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]

CONVERSATIONS = {
    "system_user": SYSTEM_USER,
    "multi_turn": [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    "assistant_last": [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ],
    "messy": [
        {"role": "system", "content": "  Be brief.\n"},
        {"role": "user", "content": " Spaces around \t\n"},
        {"role": "assistant", "content": '"Quoted" — ünïcödé 🙂 and a\\backslash '},
        {"role": "user", "content": "Next?"},
    ],
    "tool": [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "tool", "content": '{"temperature": 21, "unit": "C"}\nsecond "line"\t\u0001'},
    ],
    "alternation": [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ],
    "empty": [],
}

# features.jinja probes Jinja/Python features, not a conversation format.
FEATURES = [
    {"role": "system", "content": "Be brief. "},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "skip", "content": "hidden"},
    {"role": "assistant", "content": " 4, and a half é🙂 "},
    {"role": "stop", "content": "end"},
    {"role": "user", "content": "after the stop"},
]


def tokenizer_with(bos, eos):
    vocab = {"<unk>": 0, bos: 1, eos: 2}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), bos_token=bos, eos_token=eos
    )
    assert tok.special_tokens_map == {"bos_token": bos, "eos_token": eos}, tok.special_tokens_map
    return tok


def render(tok, template, messages, agp):
    case = {"messages": messages, "add_generation_prompt": agp}
    try:
        case["rendered"] = tok.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=agp
        )
    except jinja2.exceptions.TemplateError as e:
        # raise_exception raises TemplateError itself; jinja2's own errors are subclasses.
        if type(e) is jinja2.exceptions.TemplateError:
            case["raised"] = str(e)
        else:
            case["error"] = f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - any failure is a case to match
        case["error"] = f"{type(e).__name__}: {e}"
    return case


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="tests/fixtures/chat")
    a = ap.parse_args()

    field = GGUFReader(a.gguf).fields["tokenizer.chat_template"]
    with open(os.path.join(a.out, "smollm2.jinja"), "w", encoding="utf-8", newline="") as f:
        f.write(field.contents())

    cases = []
    for name, (bos, eos) in TEMPLATES.items():
        with open(os.path.join(a.out, name), encoding="utf-8", newline="") as f:
            template = f.read()
        tok = tokenizer_with(bos, eos)
        runs = (
            {"features": FEATURES, "system_user": SYSTEM_USER} if name == "features.jinja" else CONVERSATIONS
        )
        for conversation, messages in runs.items():
            for agp in (True, False):
                case = {"template": name, "conversation": conversation, "bos_token": bos, "eos_token": eos}
                case.update(render(tok, template, messages, agp))
                cases.append(case)

    out = {
        "made_by": "scripts/chat_fixtures.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "cases": cases,
    }
    with open(os.path.join(a.out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    counts = {}
    for c in cases:
        kind = "rendered" if "rendered" in c else "raised" if "raised" in c else "error"
        counts[kind] = counts.get(kind, 0) + 1
    print(f"{len(cases)} cases: {counts}")


if __name__ == "__main__":
    main()
