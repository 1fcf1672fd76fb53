"""``bench serve`` in a real browser (slow): the CLI started as a subprocess on a free local
port (tiny CLIP, one epoch, a 48-image gallery), driven by headless Chromium through selenium.
Skipped with the reason when selenium or Debian's chromium / chromium-driver is missing
(``.ci/run`` installs them)."""

from __future__ import annotations

import pytest

from tests.serve_browser import browser_missing, chromium, search_refresh, start_server

K = 6


@pytest.mark.slow
def test_search_mark_and_refresh_in_headless_chromium(tmp_path):
    why = browser_missing()
    if why:
        pytest.skip(f"browser test skipped: {why}")
    args = [
        "--model",
        "clip",
        "--epochs",
        "1",
        "--top-k",
        str(K),
        "--set",
        "data.max_eval_images=48",
        "--results-dir",
        str(tmp_path / "results"),
    ]
    with start_server(args) as url, chromium() as driver:
        assert url.startswith("http://127.0.0.1:")
        seen = search_refresh(driver, url, "Find images of a red circle.", K)
    assert len(seen["before"]) == K and seen["images"] == K  # k thumbnails came back and rendered
    assert len(seen["scores"]) == K and all("score" in s for s in seen["scores"])
    assert seen["marked"] == "true"
    assert seen["before"][0] not in seen["after"] and seen["excluded"] == "1"
    assert seen["after"] != seen["before"]  # the ranking changed
    assert seen["message"].startswith("Scores refreshed")
