"""The label page in a real browser: ranked by keyboard alone, an undo, the database checked, model text inert."""

import json
import sqlite3

import pytest

pytest.importorskip("playwright", reason="playwright is not installed (the test extra)")
from playwright.sync_api import expect  # noqa: E402

from label_browser import browser_page, chromium_path
from label_helpers import UNTRUSTED, RunningServer, make_project

if chromium_path() is None:
    pytest.skip("no system Chromium (apt-get install chromium)", allow_module_level=True)


def stored_votes(store):
    rows = sqlite3.connect(store.path).execute("SELECT item, ranking, shown_order, retracted_at FROM votes ORDER BY id").fetchall()
    return [(item, json.loads(ranking) if ranking else None, json.loads(order), retracted) for item, ranking, order, retracted in rows]


def test_rank_by_keyboard_undo_and_nothing_in_a_model_text_runs(tmp_path):
    project, store, people = make_project(tmp_path, items=4, k=3, people=("민지",), per_item=1, untrusted=True)
    items = store.items()
    with RunningServer(project, store) as server, browser_page() as page:
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{server.url}/label/{people['민지'].token}")
        page.wait_for_selector("#answers li")

        # The first item's prompt and answers are markup written by a model: shown as text, run as nothing.
        assert page.inner_text("#prompt") == items[0].prompt and items[0].prompt.startswith("<b>굵게</b>")
        shown = page.locator("#answers .text").all_inner_texts()
        assert sorted(shown) == sorted(items[0].completions) and all(text.startswith(tuple(UNTRUSTED)) for text in shown)
        assert page.locator("#answers img, #answers script, #answers a, #prompt b").count() == 0
        page.locator("#answers li").first.click()  # a click places an answer too
        assert page.evaluate("window.__pwned") is None
        assert page.inner_text("#count") == "0 / 4"

        # Item 1: place 1, then Backspace takes it back, then 3 first and 1 second; the left-over 2 goes last.
        page.keyboard.press("Backspace")
        assert page.inner_text("#order") == ""
        page.keyboard.press("3")
        page.keyboard.press("1")
        assert page.inner_text("#order") == "순서: 3 > 1 > 2"
        page.keyboard.press("Enter")
        expect(page.locator("#count")).to_have_text("1 / 4")

        # Item 2: 2 ties with 1, 3 last.
        second_prompt = page.inner_text("#prompt")
        assert second_prompt == items[1].prompt
        page.keyboard.press("2")
        page.keyboard.press("=")
        page.keyboard.press("1")
        assert page.inner_text("#order") == "순서: 2 = 1 > 3"
        page.keyboard.press("Enter")
        expect(page.locator("#count")).to_have_text("2 / 4")
        assert page.inner_text("#prompt") == items[2].prompt

        # u undoes the last vote: item 2 comes back to be ranked again.
        page.keyboard.press("u")
        expect(page.locator("#count")).to_have_text("1 / 4")
        assert page.inner_text("#prompt") == second_prompt
        page.screenshot(path=str(tmp_path / "label-page.png"), full_page=True)
        assert page.evaluate("window.__pwned") is None and errors == []

    votes = stored_votes(store)
    assert [item for item, *_ in votes] == [items[0].id, items[1].id]
    (first, first_ranking, first_order, first_undone), (_, second_ranking, second_order, second_undone) = votes
    assert first_undone is None and second_undone is not None  # the undo kept the row, marked retracted
    assert [first_ranking[answer] for answer in first_order] == [1, 2, 0]  # places 3 > 1 > 2
    assert [second_ranking[answer] for answer in second_order] == [0, 0, 2]  # places 2 = 1 > 3
    assert [vote.item for vote in store.votes()] == [items[0].id]
    assert (tmp_path / "label-page.png").stat().st_size > 10_000
