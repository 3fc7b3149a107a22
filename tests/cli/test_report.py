"""`bitfold report`: a self-contained HTML file that renders in headless Chromium with its plots."""

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from bitfold.api.report.analysis import default_file_mode

from .conftest import FACTORY, run_cli

#: matplotlib's default blue, which only the embedded plots use on the page.
PLOT_BLUE = np.array([0x1F, 0x77, 0xB4])


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("headless Chromium is not installed; run `make browser` (it installs Debian's chromium), "
                    "which `make setup` does when run as root")
    return path


def _screenshot(html, png, width=1280, height=2200) -> Image.Image:
    result = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={png}", f"--window-size={width},{height}", html.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and png.is_file(), result.stderr[-2000:]
    return Image.open(png).convert("RGB")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(capsys, tmp_path, mlp_w8a8, mlp_w4a4):
    html = tmp_path / "report.html"
    code, out, _ = run_cli(capsys, "report", mlp_w8a8, "--compare", mlp_w4a4, "-o", html, "-q")
    assert code == 0 and f"wrote {html}" in out
    assert html.stat().st_mode & 0o777 == default_file_mode()  # not mkstemp's 0600
    text = html.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', text)
    alts = [alt for alt, _ in images]
    assert alts == ["model output SQNR per recipe", "per-layer error", "Weight histograms", "Activation histograms"]
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for _, data in images)
    for name in ("linear", "linear_1", "linear_2", "w4a4-fp-minmax", "normalization stays float"):
        assert name in text

    shot = _screenshot(html, tmp_path / "shot.png")
    assert shot.size == (1280, 2200)
    pixels = np.asarray(shot).reshape(-1, 3).astype(int)
    non_white = float((pixels.sum(1) < 720).mean())
    assert non_white > 0.03, f"the page looks blank ({non_white:.1%} non-white pixels)"
    blue = int((np.abs(pixels - PLOT_BLUE).max(1) < 12).sum())
    assert blue > 5000, f"only {blue} pixels of plot blue: the embedded PNG plots did not render"
    rows = np.nonzero((np.abs(np.asarray(shot).astype(int) - PLOT_BLUE).max(2) < 12).any(1))[0]
    assert rows.max() - rows.min() > 600, "plot pixels only in one band: fewer plots rendered than embedded"


@pytest.mark.slow
def test_accuracy_table_and_its_errors(capsys, tmp_path, mlp_w8a8):
    good = tmp_path / "acc.json"
    good.write_text(json.dumps({"metric": "top-1 agreement", "results": {"fp32": 1.0, "w8a8-int": 0.98}}))
    code, _, _ = run_cli(capsys, "report", mlp_w8a8, "--accuracy", good, "-o", tmp_path / "r.html", "-q",
                         "--max-histograms", "0")
    assert code == 0 and 'alt="top-1 agreement per recipe"' in (tmp_path / "r.html").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"metric": "top-1", "results": {"fp32": "high"}}))
    code, _, err = run_cli(capsys, "report", mlp_w8a8, "--accuracy", bad, "-o", tmp_path / "r2.html", "-q")
    assert code == 1 and "result 'fp32' is 'high', not a finite number" in err and err.count("\n") == 1
    assert not (tmp_path / "r2.html").exists()


def test_compare_refuses_other_inputs(capsys, tmp_path, mlp_w8a8, mlp_w4a4):
    other = tmp_path / "other"
    shutil.copytree(mlp_w4a4, other)
    data = json.loads((other / "analysis.json").read_text())
    data["inputs"]["fingerprint"] = "0" * 16
    (other / "analysis.json").write_text(json.dumps(data))
    code, _, err = run_cli(capsys, "report", mlp_w8a8, "--compare", other, "-o", tmp_path / "r.html", "-q")
    assert code == 1 and "measured on other inputs" in err


@pytest.mark.slow
def test_analysis_computed_later_matches_the_saved_one(capsys, tmp_path, mlp_w8a8, mlp_data):
    bare = tmp_path / "bare"
    shutil.copytree(mlp_w8a8, bare)
    (bare / "analysis.json").unlink()
    code, _, err = run_cli(capsys, "report", bare, "-o", tmp_path / "r.html", "-q")
    assert code == 1 and "has no analysis.json" in err and "--model and --calib" in err
    code, out, _ = run_cli(capsys, "report", bare, "--model", FACTORY, "--calib", mlp_data,
                           "-o", tmp_path / "r.html", "-q", "--max-histograms", "0")
    assert code == 0
    saved = json.loads((mlp_w8a8 / "analysis.json").read_text())
    assert f"model output SQNR {saved['output']['sqnr_db']:.1f} dB" in out


def test_report_errors(capsys, tmp_path):
    code, _, err = run_cli(capsys, "report", tmp_path / "nope", "-o", tmp_path / "r.html")
    assert code == 1 and "no such directory" in err and err.count("\n") == 1
