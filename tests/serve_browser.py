"""Drive ``bench serve`` in headless Chromium: the helper of the browser test, and the script
that takes the README's screenshot.

:func:`start_server` runs ``bench serve --port 0`` as a subprocess and reads the address it
prints; :func:`chromium` starts Debian's ``chromium`` through ``chromium-driver`` (selenium)
with a fresh profile and every background network feature off (the machine is offline);
:func:`search_refresh` types a query, waits for the results, marks the first not relevant,
refreshes and returns the rankings before and after.

Screenshot (from the repository root)::

    python -m tests.serve_browser --out docs/images/serve.png --model ours -- --no-train
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver",)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1100,900",
)


def browser_missing() -> str | None:
    """Why the browser test cannot run here (None: it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not any(Path(p).exists() for p in CHROMIUM) or not any(Path(p).exists() for p in CHROMEDRIVER):
        return "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
    return None


@contextmanager
def start_server(args: Sequence[str], *, timeout_s: float = 900.0, env: dict | None = None) -> Iterator[str]:
    """``bench serve --port 0 ARGS`` in a subprocess; yields its URL once it serves."""
    cmd = [sys.executable, "-c", "from benchmark.cli import main; main()", "serve", "--port", "0", *args]
    run_env = dict(os.environ) | (env or {}) | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, env=run_env)
        try:
            url, seen = None, []
            deadline = time.monotonic() + timeout_s
            assert proc.stdout is not None
            while url is None:
                line = proc.stdout.readline()
                if not line:
                    log.seek(0)
                    raise RuntimeError(f"bench serve exited ({proc.wait()}): {''.join(seen)}{log.read()[-3000:]}")
                seen.append(line)
                if line.startswith("serving on "):
                    url = line.split()[-1]
                if time.monotonic() > deadline:
                    raise TimeoutError("bench serve did not start in time")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def chromium() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="serve-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = next(p for p in CHROMIUM if Path(p).exists())
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(next(p for p in CHROMEDRIVER if Path(p).exists())), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _ranking(driver) -> list[int]:
    from selenium.webdriver.common.by import By

    return [int(e.get_attribute("data-index")) for e in driver.find_elements(By.CSS_SELECTOR, "#results .result")]


def search_refresh(driver, url: str, query: str, k: int, *, timeout_s: float = 60.0) -> dict:
    """Search, mark the first result not relevant, refresh; what the page showed at each step."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout_s)
    driver.get(url)
    box = wait.until(ec.element_to_be_clickable((By.ID, "query")))
    box.clear()
    box.send_keys(query)
    driver.find_element(By.ID, "search-btn").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == k)
    wait.until(
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
        )
    )
    before = _ranking(driver)
    loaded_images = driver.execute_script(
        "return [...document.querySelectorAll('#results img')].filter(i => i.naturalWidth > 0).length"
    )
    scores = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .score")]
    length = driver.find_element(By.ID, "query-length").text
    first = driver.find_element(By.CSS_SELECTOR, "#results .result .mark-not_relevant")
    first.click()
    marked = first.get_attribute("aria-pressed")
    driver.find_element(By.ID, "refresh-btn").click()
    wait.until(lambda d: d.find_element(By.ID, "round").text == "1")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == k)
    return {
        "before": before,
        "after": _ranking(driver),
        "images": loaded_images,
        "scores": scores,
        "query_length": length,
        "marked": marked,
        "message": driver.find_element(By.ID, "message").text,
        "excluded": driver.find_element(By.ID, "excluded").text,
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Screenshot bench serve's page with results.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="ours")
    p.add_argument("--query", default="Find images of a large red circle on a striped background.")
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("serve_args", nargs="*", help="more bench serve options (after --)")
    a = p.parse_args(argv)
    why = browser_missing()
    if why:
        sys.exit(why)
    args = ["--model", a.model, "--top-k", str(a.top_k), *a.serve_args]
    with start_server(args) as url, chromium() as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        search_refresh(driver, url, a.query, a.top_k)
        first = driver.find_element(By.CSS_SELECTOR, "#results .result .mark-relevant")
        first.click()
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1100, min(max(int(height) + 140, 600), 1400))
        driver.execute_script("window.scrollTo(0, 0)")
        WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")
        a.out.parent.mkdir(parents=True, exist_ok=True)
        png = driver.get_screenshot_as_png()
    from benchmark.atomic import atomic_write_bytes

    atomic_write_bytes(a.out, png)
    print(f"wrote {a.out} ({len(png) // 1024} KiB)")


if __name__ == "__main__":
    main()
