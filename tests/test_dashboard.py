"""The built-in dashboard in a real headless Chromium (Debian's, driven by selenium + chromedriver).

Three kinds of server behind the page: perfd's own server over a registry this
test publishes into (so every rendered number can be checked exactly, and the
server can be stopped and restarted under the page), a real ``perfd attach``,
and the acceptance run against ``perfd demo``. Screenshots go to
tests/artifacts/.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, require, wait_for
from perfd_process import PERFD, PerfdServer

import perfd.dashboard
from perfd.registry import Registry
from perfd.server import ServerOptions, bound_port, make_app, start_server
from perfd.snapshot import (
    DagMetrics,
    DagNodeMetrics,
    EndpointMetrics,
    Open3DOpMetrics,
    TargetStatus,
    WebSocketMetrics,
    WsTopicMetrics,
)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1100",
)


@pytest.fixture(scope="module")
def browser():
    require("headless Chromium (apt: chromium chromium-driver)",
            Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists())
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="perfd-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def badge(driver) -> str:
    return js(driver, "return document.getElementById('connection').dataset.state")


def node_rows(driver) -> dict[str, dict[str, str]]:
    """node_id → {field: rendered text} for every row of the node table."""
    return js(driver, """
        const out = {};
        for (const row of document.querySelectorAll('#nodes tbody tr')) {
            const cells = {};
            for (const td of row.querySelectorAll('td[data-field]')) cells[td.dataset.field] = td.firstChild ? td.firstChild.textContent : '';
            out[row.dataset.nodeId] = cells;
        }
        return out;""")


def table_rows(driver, table: str, key: str) -> dict[str, dict[str, str]]:
    return js(driver, """
        const out = {};
        for (const row of document.querySelectorAll('#' + arguments[0] + ' tbody tr')) {
            const cells = {};
            for (const td of row.querySelectorAll('td[data-field]')) cells[td.dataset.field] = td.textContent;
            out[row.dataset[arguments[1]]] = cells;
        }
        return out;""", table, key)


# --- perfd's server over a registry the test publishes into -------------------------------------


class LiveServer:
    """perfd's aiohttp app on its own loop thread; stoppable and restartable on the same port."""

    def __init__(self, registry: Registry, **options: object) -> None:
        self.registry = registry
        self.options = ServerOptions(port=0, broadcast_hz=4, **options)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.runner = None
        self.port = 0
        self.start()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> None:
        options = ServerOptions(**{**self.options.__dict__, "port": self.port})
        self.runner = self._call(start_server(make_app(self.registry, options), options))
        self.port = bound_port(self.runner)

    def stop(self) -> None:
        self._call(self.runner.cleanup())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)


def publish(registry: Registry, step: int) -> None:
    """A DAG of six nodes, two topics and two endpoints whose numbers move with ``step``."""
    nodes = [
        DagNodeMetrics(
            node_id=f"node-{i}", node_name=f"stage {i}", node_type=("voxel", "filter", "cluster")[i % 3],
            last_exec_ms=1.25 * (i + 1) + step, avg_exec_ms=1.0 * (i + 1) + step / 2,
            calls_total=100 * (i + 1) + 7 * step, throughput_pps=50000.0 * (i + 1) + step,
            last_point_count=65536 - i, throttled_count=i + step, queue_depth=3,
            last_seen_ts=time.time(),
            open3d_ops={"voxel_down_sample": Open3DOpMetrics(last_ms=0.5, avg_ms=0.75, calls=10 + step)} if i == 0 else None,
        )
        for i in range(6)
    ]
    registry.publish_dag(DagMetrics(nodes=nodes, total_nodes=6, running_nodes=2))
    registry.publish_websocket(WebSocketMetrics(total_connections=3, topics={
        "node-0": WsTopicMetrics(messages_per_sec=10.0, bytes_per_sec=2048.0, active_connections=2,
                                 total_messages=500 + step, total_bytes=1 << 20),
        "system_status": WsTopicMetrics(messages_per_sec=1.0, bytes_per_sec=100.0, active_connections=1,
                                        total_messages=50 + step, total_bytes=5000),
    }))
    registry.publish_endpoints([
        EndpointMetrics(path="/api/nodes", method="GET", avg_latency_ms=2.5, calls_total=40 + step, last_status_code=200),
        EndpointMetrics(path="/api/nodes/x", method="POST", avg_latency_ms=7.0, calls_total=3, last_status_code=422),
    ])
    registry.update_system(cpu_percent=42.0, memory_used_mb=512.0, memory_total_mb=8192.0, memory_percent=6.25,
                           thread_count=17, queue_depth=3)
    registry.publish_profiles({"node-5": {
        "_bootstrap (threading.py:995);run (nodes.py:60);cluster (nodes.py:120)": 30 + step,
        "_bootstrap (threading.py:995);run (nodes.py:60);forward (routing.py:40)": 10,
    }})
    registry.publish_extra("capture", {"kernel_drops": 3 + step, "mode": "ring", "ports": [8005]})
    registry.set_source("stacks", False, "switched off for this test")
    registry.set_source("system", True)


@pytest.fixture
def published():
    registry = Registry()
    registry.attach(TargetStatus(pid=4242, python="3.12.1", exe="/usr/bin/python3.12", attached_at=time.time()))
    publish(registry, 0)
    server = LiveServer(registry)
    yield server
    server.close()


def test_page_shows_exactly_what_the_snapshot_holds_and_follows_it(browser, published):
    browser.get(published.url + "/")
    wait_for(lambda: badge(browser) == "live" and len(node_rows(browser)) == 6, timeout=5)
    rows = node_rows(browser)
    assert rows["node-3"] == {
        "node_name": "stage 3", "node_type": "voxel", "last_exec_ms": "5.00", "avg_exec_ms": "4.00",
        "calls_total": "400", "throughput_pps": "200,000", "last_point_count": "65,533",
        "throttled_count": "3", "open3d_ops": "",
    }
    assert rows["node-0"]["open3d_ops"] == "voxel_down_sample 0.75 ms × 10"
    topics = table_rows(browser, "topics", "topic")
    assert topics["node-0"] == {"topic": "node-0", "messages_per_sec": "10.0", "bytes_per_sec": "2.0 KiB/s",
                                "active_connections": "2", "total_messages": "500", "total_bytes": "1.0 MiB"}
    endpoints = table_rows(browser, "endpoints", "endpoint")
    assert endpoints["POST /api/nodes/x"]["last_status_code"] == "422"
    assert endpoints["GET /api/nodes"]["avg_latency_ms"] == "2.50"
    assert browser.find_element("id", "v-cpu").text == "42.0 %"
    assert browser.find_element("id", "v-threads").text == "17"
    assert "512 / 8192 MiB" in browser.find_element("id", "v-mem").text
    sources = table_rows(browser, "sources", "source")
    assert sources["stacks"] == {"name": "stacks", "active": "off", "reason": "switched off for this test"}
    assert sources["system"]["active"] == "active"
    assert "PID 4242" in browser.find_element("id", "target").text
    assert browser.find_element("id", "extras").text == "capture: kernel_drops 3 · mode ring"  # a source's own status

    # the busiest node is selected and its flame graph comes from /api/profile
    wait_for(lambda: js(browser, "return document.getElementById('flame').dataset.frames") == "5", timeout=5)
    frames = js(browser, "return [...document.querySelectorAll('#flame g.frame')].map(g => [g.dataset.name, +g.dataset.value])")
    assert frames == [["all", 40], ["_bootstrap (threading.py:995)", 40], ["run (nodes.py:60)", 40],
                      ["cluster (nodes.py:120)", 30], ["forward (routing.py:40)", 10]]
    assert browser.find_element("id", "flame-node").text == "stage 5 (node-5)"
    # a node without samples yet: a message, not an error
    js(browser, "document.querySelector(`#nodes tr[data-node-id='node-2']`).click()")  # rows are redrawn 4×/s
    wait_for(lambda: "no samples yet for stage 2 (node-2)" in browser.find_element("id", "flame").text, timeout=5)

    publish(published.registry, 5)
    wait_for(lambda: node_rows(browser)["node-3"]["calls_total"] == "435", timeout=3)
    assert node_rows(browser)["node-0"]["open3d_ops"] == "voxel_down_sample 0.75 ms × 15"
    screenshot(browser, "dashboard-published")


def test_an_auto_chosen_node_without_samples_gives_way_to_the_next_busiest(browser, published):
    """The busiest node by calls can be one whose own work is too short to be
    sampled (an upstream node whose time is its downstream calls): the page
    shows the next busiest node that has samples instead of an empty graph."""
    published.registry.publish_profiles({"node-5": {}, "node-4": {"run (nodes.py:60);crop (nodes.py:80)": 12}})
    browser.get(published.url + "/")
    wait_for(lambda: browser.find_element("id", "flame-node").text == "stage 4 (node-4)", timeout=5)
    wait_for(lambda: js(browser, "return document.getElementById('flame').dataset.frames") == "3", timeout=5)


def test_stale_marker_reconnect_and_detached_banner(browser, published):
    browser.get(published.url + "/")
    wait_for(lambda: badge(browser) == "live", timeout=5)

    published.stop()  # the server goes away under the page
    wait_for(lambda: badge(browser) == "reconnecting", timeout=3)
    assert js(browser, "return document.body.classList.contains('stale')")
    publish(published.registry, 9)
    published.start()  # same port: the page comes back by itself
    wait_for(lambda: badge(browser) == "live", timeout=12)
    wait_for(lambda: node_rows(browser)["node-3"]["calls_total"] == "463", timeout=3)
    assert not js(browser, "return document.body.classList.contains('stale')")

    published.registry.detach("target PID 4242 exited")  # connected, but no frames come any more
    wait_for(lambda: badge(browser) == "stale", timeout=6)
    assert "stale" in browser.find_element("id", "connection").text
    wait_for(lambda: "target PID 4242 exited" in browser.find_element("id", "detached").text, timeout=4)
    screenshot(browser, "dashboard-stale")


def test_token_is_carried_to_assets_rest_and_websocket(browser):
    registry = Registry()
    registry.attach(TargetStatus(pid=7, python="3.13.0", exe="/x", attached_at=time.time()))
    publish(registry, 1)
    server = LiveServer(registry, token="s3cret&x")
    try:
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(server.url + "/", timeout=5)
        assert denied.value.code == 401
        browser.get(server.url + "/?token=s3cret%26x")
        wait_for(lambda: badge(browser) == "live" and len(node_rows(browser)) == 6, timeout=5)
        assert js(browser, "return getComputedStyle(document.documentElement).backgroundColor") == "rgb(18, 22, 28)"  # CSS loaded
        wait_for(lambda: browser.find_element("id", "detached").get_attribute("hidden") is not None, timeout=3)
    finally:
        server.close()


def test_assets_are_package_data_and_unknown_ones_404(published):
    for name, kind in (("app.js", "text/javascript"), ("flame.js", "text/javascript"), ("style.css", "text/css")):
        with urllib.request.urlopen(f"{published.url}/dashboard/{name}", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith(kind)
            body = resp.read().decode()
            assert "http://" not in body.replace("http://www.w3.org/2000/svg", "")  # nothing fetched from elsewhere
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{published.url}/dashboard/../server.py", timeout=5)
    assert missing.value.code == 404


# --- flame graph from a real profile ------------------------------------------------------------


def test_flame_graph_renders_a_real_collapsed_profile(browser, published, spawn, tmp_path):
    """Collapsed stacks recorded by py-spy from a live target: the format /api/profile serves."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    require("py-spy", py_spy is not None)
    target = spawn("idle.py", version="3.12")  # its threads sleep: --idle keeps their stacks
    out = tmp_path / "profile.txt"
    subprocess.run([py_spy, "record", "--pid", str(target.pid), "--duration", "1", "--rate", "200",
                    "--format", "raw", "--idle", "--nonblocking", "--output", str(out)],
                   check=True, capture_output=True, timeout=30)
    text = out.read_text()
    assert "worker_loop" in text
    total = sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.strip())

    # the page's own flame.js on a bare page, so the live page's profile polling cannot redraw it meanwhile
    browser.get(published.url + "/dashboard/flame.js")
    js(browser, (Path(perfd.dashboard.__file__).parent / "flame.js").read_text())
    drawn = js(browser, """
        document.body.innerHTML = '<div id="flame" style="width:1200px"></div>';
        const box = document.getElementById('flame');
        return PerfdFlame.render(box, PerfdFlame.parse(arguments[0]));""", text)
    assert drawn >= 3
    frames = js(browser, """
        return [...document.querySelectorAll('#flame g.frame')].map(g => ({
            name: g.dataset.name, value: Number(g.dataset.value),
            width: Number(g.querySelector('rect').getAttribute('width'))}));""")
    root = frames[0]
    assert root["name"] == "all" and root["value"] == total
    worker = [f for f in frames if f["name"].startswith("worker_loop")]
    assert worker and sum(f["value"] for f in worker) <= total
    for f in frames:  # widths are proportional to samples
        assert f["width"] == pytest.approx(root["width"] * f["value"] / total, abs=1.0)
    screenshot(browser, "dashboard-flame")

    # click a frame: it becomes the full-width root; click it again: back out
    js(browser, "document.querySelector(`#flame g.frame[data-name^='worker_loop']`).dispatchEvent(new MouseEvent('click'))")
    zoomed = js(browser, "return document.querySelector('#flame g.frame').dataset.name")
    assert zoomed.startswith("worker_loop")
    js(browser, "document.querySelector('#flame g.frame').dispatchEvent(new MouseEvent('click'))")
    assert js(browser, "return document.querySelector('#flame g.frame').dataset.name") == "all"


# --- real perfd processes ---------------------------------------------------------------------------


def test_page_against_perfd_attach(browser, spawn):
    target = spawn("idle.py", version="3.13")
    with PerfdServer(target.pid) as server:
        browser.get(server.url + "/")
        wait_for(lambda: badge(browser) == "live", timeout=5)
        assert f"PID {target.pid}" in browser.find_element("id", "target").text

        def page_matches_snapshot() -> bool:
            # the page shows the last pushed frame; sources may still be settling, so compare until equal
            _, snap = server.get_json("/api/metrics")
            shown = table_rows(browser, "sources", "source")
            expected = {name: src["reason"] or "" for name, src in snap["perfd"]["sources"].items()}
            return (browser.find_element("id", "v-threads").text == str(snap["system"]["thread_count"])
                    and {name: row["reason"] for name, row in shown.items()} == expected)

        wait_for(page_matches_snapshot, timeout=6, interval=0.3)
        screenshot(browser, "dashboard-attach")
        target.proc.kill()
        wait_for(lambda: "exited" in browser.find_element("id", "detached").text, timeout=6)


# --- acceptance: the page against `perfd demo` -----------------------------------------------------


class PerfdDemo(PerfdServer):
    """``perfd demo`` (demo LiDAR server + a viewer + perfd attached) with perfd on a free port."""

    def __init__(self, *extra: str) -> None:
        from perfd.demo.launcher import free_port

        self.proc = subprocess.Popen(
            [*PERFD, "demo", "--port", "0", "--app-port", str(free_port()), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.stderr_lines = []
        deadline = time.monotonic() + 120  # Open3D's import dominates
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.stderr_lines.append(line)
            if "serving http://" in line:
                self.url = line.split("serving ", 1)[1].split("/api/metrics")[0]
                return
        self.stop()
        raise RuntimeError(f"perfd demo did not start: {''.join(self.stderr_lines)}{self.proc.stderr.read()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.terminate(timeout=60)  # SIGTERM: the launcher stops the demo processes it started
            except subprocess.TimeoutExpired:
                super().stop()


@pytest.mark.slow
def test_acceptance_page_against_perfd_demo(browser):
    with PerfdDemo("--hz", "10", "--points", "8192", "--clients", "1") as demo:
        browser.get(demo.url + "/")
        wait_for(lambda: badge(browser) == "live", timeout=10)
        wait_for(lambda: len(node_rows(browser)) >= 5, timeout=15)
        first = node_rows(browser)
        time.sleep(2.5)
        second = node_rows(browser)
        screenshot(browser, "dashboard-demo")
        changed = [node for node in first if node in second and first[node] != second[node]]
        assert len(changed) >= 5, (first, second)
        calls = [sum(int(row["calls_total"].replace(",", "")) for row in rows.values()) for rows in (first, second)]
        assert calls[1] > calls[0]  # the pipeline moved on between the reads

        wait_for(lambda: int(js(browser, "return document.getElementById('flame').dataset.frames || 0")) >= 3,
                 timeout=15)
        screenshot(browser, "dashboard-demo")
