"""`himari-ray report`: one self-contained HTML file with real PNG figures; one line without matplotlib;
never overwrites a file it did not write."""

from __future__ import annotations

import base64
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from himari_ray.cli import main

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def png_size(png: bytes) -> tuple[int, int]:
    return struct.unpack(">II", png[16:24])


@pytest.mark.slow
def test_report_is_one_self_contained_html_with_every_figure(real_search, tmp_path, capsys):
    out, _, _ = real_search
    path = tmp_path / "r.html"
    assert main(["report", str(out), "--out", str(path)]) == 0
    assert str(path) in capsys.readouterr().out
    html = path.read_text()
    assert "<script" not in html and 'src="http' not in html and "<link" not in html  # nothing fetched
    pngs = embedded_pngs(html)
    assert len(pngs) == 5, "HOLD vs bands, band distance over trials, Pareto, importance, learning curves"
    for png in pngs:
        assert png.startswith(PNG_MAGIC)
        width, height = png_size(png)
        assert width >= 600 and height >= 300
    for title in ("HOLD share vs target bands", "Band distance over trials", "Pareto front", "Learning curves"):
        assert f"<h2>{title}</h2>" in html
    assert "<table" in html and "skipped" in html
    assert main(["report", str(out), "--out", str(path)]) == 0  # its own report is regenerated in place


def test_report_refuses_to_overwrite_a_file_it_did_not_write(tmp_path, capsys):
    precious = tmp_path / "notes.html"
    precious.write_text("<html>mine</html>")
    assert main(["report", str(tmp_path), "--out", str(precious)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a himari-ray report" in err
    assert precious.read_text() == "<html>mine</html>"


def test_report_without_matplotlib_says_how_to_get_it(tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None;"  # what an install without the report extra sees
        "from himari_ray.cli import main; sys.exit(main(['report', sys.argv[1]]))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install -e ".[report]"' in lines[0], proc.stderr
    assert not list(tmp_path.iterdir())


def test_report_on_a_directory_that_is_not_a_search(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a himari-ray search directory" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()
