"""The run report end to end: real harness runs (dummy core, real LoadGen, each in its own process) get
their PNGs and a self-contained report.html that a real headless chromium renders with every plot;
`make report` rebuilds from the folder alone, also from LoadGen logs another harness wrote; the index
table; `make compare` on two real runs; LoadGen's trace read per sample."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmlib.report.html import build
from llmlib.report.loadgen_trace import read_trace
from llmlib.report.plots import PLOT_NAMES
from llmlib.report.run_data import find_runs, load_run

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.loadgen

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _harness(results: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "llmlib", "--core_type=dummy", f"--results_dir={results}", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Run A: tiny Server at 100 QPS; run B: tiny Offline and Server at 200 QPS (two processes, index.html)."""
    root = tmp_path_factory.mktemp("runs")
    a, b = root / "a", root / "b"
    common = ["--benchmarks=tiny", "--min_duration_ms=2000", "--min_query_count=600", "--dummy_max_batch_size=32"]
    proc_a = _harness(a, *common, "--scenarios=Server", "--server_target_qps=100")
    proc_b = _harness(b, *common, "--scenarios=Offline,Server", "--server_target_qps=200",
                      "--offline_expected_qps=400")
    return a, b, proc_a, proc_b


def _run_dir(root: Path, scenario: str) -> Path:
    return root / "local" / "tiny" / scenario / "performance"


def test_every_run_folder_has_the_plots_and_the_page(two_runs):
    a, b, proc_a, proc_b = two_runs
    for folder in (_run_dir(a, "Server"), _run_dir(b, "Offline"), _run_dir(b, "Server")):
        for name in PLOT_NAMES:
            png = folder / name
            assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        page = (folder / "report.html").read_text()
        assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,', page)) == len(PLOT_NAMES)
        assert "src=\"http" not in page and "<link" not in page  # nothing to fetch: opens offline
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["verdict"] in page
        assert "the length of the output token ids the dummy core returned" in page  # how tokens were counted
    assert "report              : " in proc_a.stdout
    index = (b / "local" / "index.html").read_text()
    assert index.count("<tr") == 3 and "tiny/Offline/performance/report.html" in index


def test_every_summary_has_the_self_measurement(two_runs):
    a, b, _, _ = two_runs
    for folder in (_run_dir(a, "Server"), _run_dir(b, "Server")):
        text = (folder / "summary.txt").read_text()
        for label in ("harness added", "schedule delay", "achieved QPS", "harness CPU"):
            assert label in text
        m = json.loads((folder / "summary.json").read_text())["self_measurement"]
        assert 0 < m["added_latency_ms"]["p50_ms"] <= m["added_latency_ms"]["p99_ms"] < 50
        sched = m["schedule_delay_ms"]
        assert 0 <= sched["p50_ms"] <= sched["p99_ms"] <= sched["max_ms"]
        assert m["harness_cpu_s"] > 0 and m["target_qps"] in (100.0, 200.0)


def test_trace_has_every_sample_with_consistent_times(two_runs):
    _, b, _, _ = two_runs
    folder = _run_dir(b, "Server")
    trace = read_trace(folder)
    summary = json.loads((folder / "summary.json").read_text())
    assert len(trace) == summary["issued"]
    assert np.all(trace.issue_delay_ns >= 0)
    assert np.all(trace.latency_ns >= trace.issue_delay_ns)
    assert np.all(np.isfinite(trace.ttft_ns))  # every Server sample got a first token
    assert np.all((trace.ttft_ns >= trace.issue_delay_ns) & (trace.ttft_ns <= trace.latency_ns))
    # LoadGen's own p99 latency (detail log) is one of the trace's per-sample latencies, at the 99th percentile
    p99 = summary["loadgen"]["latency_p99_ns"]
    ranks = np.nonzero(np.sort(trace.latency_ns) == p99)[0]
    assert ranks.size and 0.98 * len(trace) <= ranks[0] <= 0.995 * len(trace)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: `make test_servers` installs it (scripts/setup_chromium.sh)")
    return exe


_CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const d = document.createElement("div"); d.id = "img-check";
  d.textContent = `IMAGES ${ok}/${imgs.length}`; document.body.appendChild(d);
});
</script>"""


def _rendered(page: Path, tmp_path: Path) -> tuple[int, int]:
    """(images rendered, images) of a page opened in headless chromium: a script run after load counts
    the images whose naturalWidth is above 0, and --dump-dom prints the DOM it left."""
    probe = tmp_path / f"check_{page.parent.name}_{page.name}"
    probe.write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
    proc = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=90)
    m = re.search(r"IMAGES (\d+)/(\d+)", proc.stdout)
    assert m, f"chromium printed no check result (exit {proc.returncode}): {proc.stderr[-1500:]}"
    return int(m.group(1)), int(m.group(2))


def test_chromium_renders_every_plot(two_runs, tmp_path):
    a, b, _, _ = two_runs
    for folder in (_run_dir(a, "Server"), _run_dir(b, "Offline")):
        assert _rendered(folder / "report.html", tmp_path) == (len(PLOT_NAMES), len(PLOT_NAMES))
    # the check can fail: a page with one broken image
    broken = tmp_path / "broken" / "report.html"
    broken.parent.mkdir()
    text = (_run_dir(a, "Server") / "report.html").read_text()
    broken.write_text(text.replace("base64,iVBOR", "base64,AAAAiVBOR", 1))
    assert _rendered(broken, tmp_path) == (len(PLOT_NAMES) - 1, len(PLOT_NAMES))


def test_make_report_rebuilds_from_the_folder_alone(two_runs, tmp_path):
    _, b, _, _ = two_runs
    copy = tmp_path / "copy"
    shutil.copytree(b, copy)
    for p in copy.rglob("*.png"):
        p.unlink()
    for p in copy.rglob("*.html"):
        p.unlink()
    proc = subprocess.run(["make", "--no-print-directory", "report", f"RESULTS={copy}", "PY=" + sys.executable],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (copy / "index.html").is_file()
    for scenario in ("Offline", "Server"):
        folder = _run_dir(copy, scenario)
        assert {p.name for p in folder.glob("*.png")} == set(PLOT_NAMES)
        assert str(folder / "report.html") in proc.stdout


def test_report_from_logs_another_harness_wrote(two_runs, tmp_path):
    """Only LoadGen's own files (detail, summary, trace): the report still builds, says what it cannot know,
    and draws the CDFs from LoadGen's trace and logged percentiles."""
    _, b, _, _ = two_runs
    foreign = tmp_path / "other_harness" / "Server"
    foreign.mkdir(parents=True)
    for name in ("mlperf_log_detail.txt", "mlperf_log_summary.txt", "mlperf_log_trace.json"):
        shutil.copy(_run_dir(b, "Server") / name, foreign / name)
    pages = build(tmp_path / "other_harness")
    page = (foreign / "report.html").read_text()
    assert pages[0] == foreign / "report.html"
    assert "these logs do not say how that harness counted them" in page
    run = load_run(foreign)
    assert run.summary is None and run.trace is not None and run.scenario == "Server"
    harness_summary = json.loads((_run_dir(b, "Server") / "summary.json").read_text())
    assert run.verdict == harness_summary["loadgen"]["validity"] == harness_summary["verdict"]
    assert len(re.findall(r"data:image/png;base64,", page)) == len(PLOT_NAMES)
    assert _rendered(foreign / "report.html", tmp_path) == (len(PLOT_NAMES), len(PLOT_NAMES))
    # no trace either: percentiles only, and the page still renders every figure
    (foreign / "mlperf_log_trace.json").unlink()
    build(foreign)
    assert _rendered(foreign / "report.html", tmp_path) == (len(PLOT_NAMES), len(PLOT_NAMES))


def test_make_compare_on_two_real_runs(two_runs, tmp_path):
    a, b, _, _ = two_runs
    out = tmp_path / "cmp"
    proc = subprocess.run(["make", "--no-print-directory", "compare", f"A={a}", f"B={b}", f"OUT={out}",
                           "PY=" + sys.executable], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (out / "compare.txt").read_text()
    assert text.strip() in proc.stdout
    rows = {(r[1], r[3]): r for r in (line.split() for line in text.splitlines()[3:])}
    assert ("Server", "verdict") in rows and ("Offline", "verdict") in rows
    assert rows[("Offline", "verdict")][4] == "(missing)"  # only in B
    import pandas as pd

    df = pd.read_csv(out / "compare.csv")
    sps = df[(df.scenario == "Server") & (df.metric == "samples/s")].iloc[0]
    a_sum = json.loads((_run_dir(a, "Server") / "summary.json").read_text())["loadgen"]
    b_sum = json.loads((_run_dir(b, "Server") / "summary.json").read_text())["loadgen"]
    assert float(sps.A) == pytest.approx(a_sum["result_samples_per_second"])
    assert float(sps.B) == pytest.approx(b_sum["result_samples_per_second"])
    assert float(sps.delta) == pytest.approx(b_sum["result_samples_per_second"] - a_sum["result_samples_per_second"])
    ttft = df[(df.scenario == "Server") & (df.metric == "TTFT p99 ms")].iloc[0]
    assert float(ttft.A) == pytest.approx(a_sum["ttft_p99_ns"] / 1e6)
    png = out / "cdf_tiny_Server_PerformanceOnly.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (out / "compare.html").read_text()


def test_bad_results_folder_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "llmlib.report", "build", str(tmp_path / "nope")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: RESULTS={tmp_path / 'nope'}: no such folder"
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no mlperf_log_detail.txt under it"):
        find_runs(tmp_path / "empty")


def test_quiet_prints_warnings_and_the_summary_only(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "llmlib", "--core_type=dummy", "--benchmarks=tiny",
                           "--scenarios=Server", "--server_target_qps=100", "--min_query_count=200",
                           "--quiet=true", "--write_report=false", f"--results_dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "samples, " not in proc.stderr and "\r" not in proc.stderr  # no progress, plain or bar
    assert "INFO" not in proc.stderr
    assert "=== tiny | Server | PerformanceOnly" in proc.stdout and "harness added" in proc.stdout
    assert not (_run_dir(tmp_path, "Server") / "report.html").exists()  # --write_report=false


def test_progress_is_plain_lines_when_stderr_is_a_pipe(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "llmlib", "--core_type=dummy", "--benchmarks=tiny",
                           "--scenarios=Server", "--server_target_qps=100", "--min_query_count=200",
                           "--write_report=false", f"--results_dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("tiny Server: ")]
    assert lines and "\r" not in proc.stderr
    assert lines[-1].startswith("tiny Server: 200/200 samples")
