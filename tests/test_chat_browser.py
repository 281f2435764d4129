"""The chat page in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven by Selenium)
opens the broker's page, joins as 小王, gets the message 小张 stored for it while it was away, and talks with 小张,
who is on OpenBSD nc. The page is checked at a phone's size; the screenshot is saved (``SOCKCAT_SCREENSHOT=PATH``
keeps a copy there: docs/images/chat-browser.png was made that way)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, Proc, headless_chromium, require, sockcat

from sockcat import Address

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with headless_chromium(tmp_path / "profile", phone=True) as driver:
        yield driver


def test_chromium_joins_gets_stored_mail_and_talks_with_nc(procs: list[Proc], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    p = Proc(sockcat("chat", "--db", ":memory:", "tcp://127.0.0.1:0", "ws://127.0.0.1:0/"))
    procs.append(p)
    p.read_listening()
    lines = p.wait_stderr("listening on", count=2)
    tcp = Address.parse(next(x.split()[-1] for x in lines if "tcp://" in x)).port
    ws = Address.parse(next(x.split()[-1] for x in lines if "ws://" in x)).port

    nc = subprocess.Popen([require("nc"), "-N", "127.0.0.1", str(tcp)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert nc.stdin is not None and nc.stdout is not None

    def nc_says(text: str) -> None:
        assert nc.stdin is not None
        nc.stdin.write(f"{text}\n".encode())
        nc.stdin.flush()

    def nc_reads(prefix: str) -> str:
        assert nc.stdout is not None
        while True:
            line = nc.stdout.readline().decode()
            assert line, f"nc ended before a line starting {prefix!r}"
            if line.startswith(prefix):
                return line.rstrip("\n")

    try:
        nc_reads("* welcome")
        nc_says("小张")
        nc_reads("* hello 小张")
        nc_says("/msg 小王 你不在的时候我来过")
        nc_reads("* 小王 is offline; message stored")

        wait = WebDriverWait(browser, TIMEOUT)
        browser.get(f"http://127.0.0.1:{ws}/")
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "connected"))
        assert not browser.find_element(By.ID, "chat").is_displayed()  # the join form first
        browser.find_element(By.ID, "name").send_keys("小王")
        browser.find_element(By.CSS_SELECTOR, "#join button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "connected as 小王"))
        assert not browser.find_element(By.ID, "join").is_displayed()
        assert browser.find_element(By.ID, "chat").is_displayed()
        log = browser.find_element(By.ID, "log")
        wait.until(lambda _d: "*小张* 你不在的时候我来过" in log.text)  # the stored /msg, delivered on join
        assert nc_reads("* 小王 joined") == "* 小王 joined"
        wait.until(lambda _d: [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#who li")] == ["小张", "小王"])

        line = browser.find_element(By.ID, "line")
        line.send_keys("你好，小张！<b>not bold</b>\n")
        assert nc_reads("<小王>") == "<小王> 你好，小张！<b>not bold</b>"
        nc_says("收到 \x1b[2J <img src=x onerror=alert(1)>")
        wait.until(lambda _d: "<小张> 收到" in log.text)
        assert "<img src=x onerror=alert(1)>" in log.text  # shown as text, never run as HTML
        assert browser.find_elements(By.CSS_SELECTOR, "#log img") == []
        browser.find_element(By.XPATH, "//ul[@id='who']/li[text()='小张']").click()  # a name click starts a /msg
        assert line.get_attribute("value") == "/msg 小张 "
        line.send_keys("悄悄话\n")
        assert nc_reads("*小王*") == "*小王* 悄悄话"

        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width} px wide on a 390 px screen"
        shot = tmp_path / "chat-browser.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        keep = os.environ.get("SOCKCAT_SCREENSHOT")
        if keep:
            shutil.copyfile(shot, keep)
    finally:
        nc.stdin.close()
        nc.kill()
        nc.wait(TIMEOUT)
