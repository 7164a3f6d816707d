"""One tokenizer interface over sentencepiece `tokenizer.model` and Hugging Face `tokenizer.json`.

LLaMA / LLaMA-2 / Dromedary ship sentencepiece models; SmolLM2, LLaMA-3 and friends ship a
`tokenizer.json` (with BOS/EOS named in `tokenizer_config.json`, the Hugging Face convention).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

from salmon_wf.errors import CheckpointError


class Tokenizer(ABC):
    bos_id: int | None
    eos_id: int | None
    add_bos: bool  # whether the model was trained with BOS before each text
    path: Path

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def _encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @abstractmethod
    def token_to_id(self, piece: str) -> int | None: ...

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._encode(text)
        if bos:
            if self.bos_id is None:
                raise CheckpointError(f"{self.path}: tokenizer has no BOS token")
            ids = [self.bos_id, *ids]
        if eos:
            if self.eos_id is None:
                raise CheckpointError(f"{self.path}: tokenizer has no EOS token")
            ids = [*ids, self.eos_id]
        return ids

    @property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end a generation: EOS plus chat end-of-turn markers the vocab defines."""
        ids = {self.eos_id} if self.eos_id is not None else set()
        for marker in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>"):
            found = self.token_to_id(marker)
            if found is not None:
                ids.add(found)
        return frozenset(ids)

    def id_after(self, context: str, piece: str) -> int:
        """The single id that `piece` gets when it follows `context` (e.g. "a" after "Output (").

        Found by encoding context and context+piece: the extra token must be exactly one. This is
        what the judge compares, so an ambiguous answer is an error, not a guess.
        """
        base = self._encode(context)
        full = self._encode(context + piece)
        if full[: len(base)] == base and len(full) == len(base) + 1:
            return full[-1]
        raise CheckpointError(
            f"{self.path}: {piece!r} after {context[-20:]!r} does not encode to one extra token "
            f"({base[-3:]} -> {full[-4:]})"
        )


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, path: Path) -> None:
        import sentencepiece as spm

        self.path = path
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        self.add_bos = self.bos_id is not None

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def _encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(list(ids))

    def token_to_id(self, piece: str) -> int | None:
        found = self.sp.piece_to_id(piece)
        return None if found == self.sp.unk_id() and piece != self.sp.id_to_piece(found) else found


def _token_content(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer(Tokenizer):
    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self.path = path
        try:
            self.tok = RustTokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception on malformed files
            raise CheckpointError(f"{path}: cannot read tokenizer ({exc})") from exc
        config_path = path.with_name("tokenizer_config.json")
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.chat_template: str | None = config.get("chat_template")
        self.bos_id = self._special_id(config, "bos_token")
        self.eos_id = self._special_id(config, "eos_token")
        # SmolLM2's BOS is <|im_start|>: a chat marker, not a document start (add_bos_token false).
        self.add_bos = bool(config.get("add_bos_token", False)) and self.bos_id is not None

    def _special_id(self, config: dict, key: str) -> int | None:
        content = _token_content(config.get(key))
        return None if content is None else self.tok.token_to_id(content)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def _encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, piece: str) -> int | None:
        return self.tok.token_to_id(piece)


def load_tokenizer(model_dir: str | Path, override: str | Path | None = None) -> Tokenizer:
    """The tokenizer at `override`, else the model directory's tokenizer.model / tokenizer.json."""
    if override is not None:
        path = Path(override)
        if not path.is_file():
            raise CheckpointError(f"{path}: tokenizer file not found")
        candidates = [path]
    else:
        model_dir = Path(model_dir)
        candidates = [
            p for p in (model_dir / "tokenizer.model", model_dir / "tokenizer.json") if p.is_file()
        ]
        if not candidates:
            raise CheckpointError(
                f"{model_dir}: no tokenizer.model or tokenizer.json (use --tokenizer)"
            )
    path = candidates[0]
    if path.suffix == ".json":
        return HFTokenizer(path)
    try:
        return SentencePieceTokenizer(path)
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path}: not a sentencepiece model ({exc})") from exc
