"""Command-line behaviour on bad input: one line naming the file/flag and key, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from himari_ray.cli import main
from himari_ray.search import bundled_spaces

REPO = Path(__file__).resolve().parents[1]


def run_main(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


def test_missing_space(capsys, in_tmp):
    code, _, err = run_main(capsys, "search", "missing.yaml", "--out", "out")
    assert_one_line_error(code, err, "missing.yaml", "no such space file")
    assert list(in_tmp.iterdir()) == []


def test_misspelled_key(capsys, in_tmp):
    raw = yaml.safe_load(bundled_spaces()["smoke"].read_text())
    raw["search"]["entropy_coef"] = raw["search"].pop("entropy_coeff")
    (in_tmp / "bad.yaml").write_text(yaml.safe_dump(raw))
    code, _, err = run_main(capsys, "search", "bad.yaml", "--out", "out")
    assert_one_line_error(code, err, "bad.yaml", "search.entropy_coef")
    assert not (in_tmp / "out").exists() and not (in_tmp / "runs").exists()


def test_inverted_range(capsys, in_tmp):
    raw = yaml.safe_load(bundled_spaces()["smoke"].read_text())
    raw["search"]["trade_cost"] = {"low": 0.3, "high": 0.01}
    (in_tmp / "inv.yaml").write_text(yaml.safe_dump(raw))
    code, _, err = run_main(capsys, "search", "inv.yaml")
    assert_one_line_error(code, err, "inv.yaml", "search.trade_cost", "inverted")
    assert not (in_tmp / "runs").exists()


@pytest.mark.parametrize("value", ["-1", "0", "many"])
def test_bad_trial_count(capsys, in_tmp, value):
    code, _, err = run_main(capsys, "search", "--trials", value)
    assert_one_line_error(code, err, "--trials")
    assert not (in_tmp / "runs").exists()


def test_existing_out_dir_is_never_overwritten(capsys, in_tmp):
    out = in_tmp / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _, err = run_main(capsys, "search", "--out", str(out))
    assert_one_line_error(code, err, str(out), "not empty")
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_analyze_a_directory_that_is_not_a_search(capsys, in_tmp):
    code, _, err = run_main(capsys, "analyze", str(in_tmp))
    assert_one_line_error(code, err, "not a himari-ray search directory")


def test_real_process_exit_code_and_no_traceback(tmp_path):
    """The installed entry point, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "himari_ray", "search", "missing.yaml", "--trials", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: missing.yaml: no such space file (bundled spaces: adaptive, smoke)"
    assert list(tmp_path.iterdir()) == []
