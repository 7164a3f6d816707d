"""Offline language identification on real sentences (the bundled lite model, no download)."""

from __future__ import annotations

from salmon_wf.data.langid import detect_language, detect_languages

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
