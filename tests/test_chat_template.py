"""Prompt style chat_template: the tokenizer's own Jinja template, rendered as HF renders it,
with exactly one BOS in the token ids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hf_tiny import write_tokenizer

from salmon_wf.engine.chat import STYLES, format_prompt
from salmon_wf.engine.chat_template import ChatTemplate, template_of
from salmon_wf.errors import ChatTemplateError
from salmon_wf.model.tokenizer import load_tokenizer

# Written for these tests in the shape of the models' own templates (multi-line, relying on
# trim_blocks / lstrip_blocks as the originals do).
LLAMA3 = """{{- bos_token }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
    {{- message['content'] | trim }}{{ '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}"""

MISTRAL = """{{ bos_token }}
{%- for message in messages %}
    {% if message['role'] == 'system' %}
        {{ raise_exception('Only user and assistant roles are supported!') }}
    {% endif %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {{- '[INST] ' + message['content'] + ' [/INST]' -}}
    {% else %}
        {{- message['content'] + eos_token -}}
    {% endif %}
{% endfor %}"""

QWEN = """{% for message in messages %}
    {% if loop.first and messages[0]['role'] != 'system' %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}
    {% endif %}
    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}
{% endfor %}
{% if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' -}}
{% endif %}"""

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def test_llama3_prompt_and_one_bos(tmp_path: Path) -> None:
    path = write_tokenizer(tmp_path, chat_template=LLAMA3)
    tok = load_tokenizer(tmp_path)
    template = template_of(tok)
    text = format_prompt("chat_template", "Why is the sky blue?", "", "Be brief.", template)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhy is the sky blue?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = template.encode(tok, text)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert ids == tok.encode(text)  # the BOS text is the special token: one id, not doubled
    assert tok.decode(ids) == text and path.is_file()


def test_mistral_prompt_on_sentencepiece_and_system_refused(tiny_dir: Path, tmp_path: Path):
    shutil.copy(tiny_dir / "tokenizer.model", tmp_path / "tokenizer.model")
    config = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": MISTRAL}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    template = template_of(tok)
    text = format_prompt("chat_template", "Name a colour.", "red or blue", "", template)
    assert text == "<s>[INST] Name a colour.\n\nred or blue [/INST]"
    ids = template.encode(tok, text)
    assert ids == [tok.bos_id, *tok.encode("[INST] Name a colour.\n\nred or blue [/INST]")]
    assert ids.count(tok.bos_id) == 1  # "<s>" is the BOS id, not the pieces "<", "s", ">"
    with pytest.raises(ChatTemplateError, match=r"rejects a system message.*Only user and"):
        template.render("Name a colour.", "You are Dromedary.")


def test_qwen_prompt_default_system_and_no_bos(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, QWEN_SPECIALS, bos=None, eos="<|im_end|>", chat_template=QWEN)
    tok = load_tokenizer(tmp_path)
    template = template_of(tok)
    assert template.render("Hi") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    text = template.render("Hi", "You are Dromedary.")
    assert text == (
        "<|im_start|>system\nYou are Dromedary.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = template.encode(tok, text)
    assert tok.bos_id is None and ids == tok.encode(text)
    assert ids[0] == tok.token_to_id("<|im_start|>")


def test_template_sources_and_errors(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": {"content": "<s>"},
                "chat_template": [
                    {"name": "tool_use", "template": "tools"},
                    {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"},
                ],
            }
        )
    )
    assert ChatTemplate.load(tmp_path).render("hello") == "<s>hello"
    (tmp_path / "chat_template.jinja").write_text("[{{ messages | length }}]")
    assert ChatTemplate.load(tmp_path).render("hello", "sys") == "[2]"
    (tmp_path / "chat_template.jinja").write_text("{{ messages.append({'role': 'x'}) }}")
    with pytest.raises(ChatTemplateError, match="chat template failed"):
        ChatTemplate.load(tmp_path).render("hello")  # immutable sandbox: no mutation
    (tmp_path / "chat_template.jinja").write_text("{% for %}")
    with pytest.raises(ChatTemplateError, match="does not parse"):
        ChatTemplate.load(tmp_path).render("hello")
    (tmp_path / "chat_template.jinja").unlink()
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ChatTemplateError, match="no chat template"):
        ChatTemplate.load(tmp_path)
    with pytest.raises(ValueError, match="needs the tokenizer's chat template"):
        format_prompt("chat_template", "hi")
    assert "chat_template" in STYLES


@pytest.mark.parametrize("template", [LLAMA3, MISTRAL, QWEN])
@pytest.mark.parametrize("system", ["", "You are Dromedary."])
def test_same_text_and_ids_as_transformers(tmp_path: Path, template: str, system: str) -> None:
    transformers = pytest.importorskip("transformers")
    write_tokenizer(tmp_path, chat_template=template, eos="<|eot_id|>")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tokenizer.json"),
        bos_token=config["bos_token"],
        eos_token=config["eos_token"],
        chat_template=template,
    )
    messages = [{"role": "user", "content": "Name a colour.\n\nred or blue"}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    ours = template_of(load_tokenizer(tmp_path))
    try:
        expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # transformers raises jinja's TemplateError
        with pytest.raises(ChatTemplateError, match="rejects a system message"):
            ours.render("Name a colour.\n\nred or blue", system)
        assert template is MISTRAL and system and "Only user" in str(exc)
        return
    text = format_prompt("chat_template", "Name a colour.", "red or blue", system, ours)
    assert text == expected
    ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ours.encode(load_tokenizer(tmp_path), text) == list(ids)


def test_sample_stage_encodes_one_bos(tmp_path: Path) -> None:
    """The tokenizer asks for BOS (add_bos_token) and the template writes it: one BOS."""
    from salmon_wf.stages.sample import encode_prompt

    write_tokenizer(tmp_path, chat_template=LLAMA3)
    tok = load_tokenizer(tmp_path)
    assert tok.add_bos
    ids = encode_prompt(tok, "chat_template", {"instruction": "Hi", "input": "there"}, "Meta.")
    assert ids.count(tok.bos_id) == 1 and ids[0] == tok.bos_id
    assert tok.decode(ids) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nMeta.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi\n\nthere<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_import_hf_keeps_a_separate_chat_template_file(tiny_dir: Path, tmp_path: Path) -> None:
    """transformers 5 saves the template as chat_template.jinja: the import must carry it."""
    pytest.importorskip("transformers")
    from hf_tiny import write_hf_llama

    from salmon_wf.model.hf_import import import_hf

    hf_dir = write_hf_llama(tiny_dir, tmp_path / "hf")
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    (hf_dir / "chat_template.jinja").write_text(config.pop("chat_template"))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(config))
    out = import_hf(hf_dir, tmp_path / "meta", log=None)
    template = ChatTemplate.load(out)
    assert template.path == out / "chat_template.jinja"
    expected = "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"
    assert template.render("Hi", "Be brief.") == expected
    import_hf(hf_dir, out, log=None)  # a second import replaces the folder it wrote
