"""Command-line behaviour on bad input: one line naming the file/flag and key, exit 2, nothing written; and
`--version` and `spaces`. (What a search prints while it runs is `test_progress.py`'s.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from himari_ray.cli import main
from himari_ray.search.space import bundled_spaces

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
    raw["search"]["entropy_coef"] = {"low": 0.01, "high": 0.1}  # entropy_coeff, misspelled
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
    assert proc.stderr.strip().startswith("error: missing.yaml: no such space file (bundled spaces: adaptive, ")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_data_import_then_inspect_the_real_sample(capsys, in_tmp):
    from himari_ray.data.dataset import sample_path

    code, out, _ = run_main(capsys, "data", "import", str(sample_path()), "--out", "ds", "--min-dwell", "3")
    assert code == 0
    assert "12 gaps (90 missing hours, longest 33 h" in out and "min_dwell 3" in out
    code, out, _ = run_main(capsys, "data", "inspect", "ds")
    assert code == 0
    assert "non-finite values in all splits: 0" in out
    for line in [ln for ln in out.splitlines() if ln.split(" ")[0] in ("train", "val", "test")]:
        shares = [float(x.rstrip("%")) for x in line.split()[4:8]]
        assert all(5 < s < 60 for s in shares), line


def test_data_synth_writes_a_dataset(capsys, in_tmp):
    code, out, _ = run_main(capsys, "data", "synth", "--out", "syn", "--n-bars", "2000", "--seed", "4")
    assert code == 0 and (in_tmp / "syn" / "arrays.npz").is_file()
    assert "source: synthetic" in out


def _csv_without(column: str, path: Path) -> Path:
    import pandas as pd

    from himari_ray.data.dataset import sample_path

    pd.read_csv(sample_path()).drop(columns=column).to_csv(path, index=False)
    return path


def test_data_import_bad_file_leaves_nothing_behind(capsys, in_tmp):
    bad = _csv_without("close", in_tmp / "noclose.csv")
    code, _, err = run_main(capsys, "data", "import", str(bad), "--out", "ds")
    assert_one_line_error(code, err, "noclose.csv", "missing column(s) close")
    assert sorted(p.name for p in in_tmp.iterdir()) == ["noclose.csv"]


def test_data_import_hostile_pickle_runs_nothing(capsys, in_tmp):
    import pickle

    from tests.test_seedpickle import _Hostile, seed_blob

    blob = seed_blob()
    blob["metadata"]["x"] = _Hostile(in_tmp / "pwned")
    (in_tmp / "seed.pkl").write_bytes(pickle.dumps(blob))
    code, _, err = run_main(capsys, "data", "import", "seed.pkl", "--out", "ds")
    assert_one_line_error(code, err, "seed.pkl", "refused to load")
    assert sorted(p.name for p in in_tmp.iterdir()) == ["seed.pkl"]


def test_data_import_never_overwrites(capsys, in_tmp):
    (in_tmp / "ds").mkdir()
    (in_tmp / "ds" / "keep").write_text("x")
    code, _, err = run_main(capsys, "data", "import", "whatever.csv", "--out", "ds")
    assert_one_line_error(code, err, "ds", "already exists")
    assert (in_tmp / "ds" / "keep").read_text() == "x"


def test_search_with_a_path_that_is_not_a_dataset(capsys, in_tmp):
    code, _, err = run_main(capsys, "search", "--data", "nowhere", "--out", "out")
    assert_one_line_error(code, err, "nowhere", "not a himari-ray dataset")
    assert not (in_tmp / "out").exists()


def test_bad_split_fraction_flag(capsys, in_tmp):
    code, _, err = run_main(capsys, "data", "import", "x.csv", "--out", "ds", "--train-frac", "0.9")
    assert_one_line_error(code, err, "train_frac + val_frac must be < 1")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["search", "--seed", "4294967296"], "--seed: must be in [0, 4294967295]"),
        (["search", "--trials", "1e25"], "--trials: expected an integer"),
        (["search", "--trials", "1000000"], "--trials: must be in [1, 100000]"),
        (["search", "--out", ""], "--out: must name a directory"),
        (["data", "synth", "--n-bars", "5", "--out", "syn"], "--n-bars: must be in [1000"),
        (["search", "--trials", "x" * 5000], "..."),
    ],
)
def test_numbers_and_paths_out_of_bounds_are_one_line(capsys, in_tmp, argv, needle):
    code, _, err = run_main(capsys, *argv)
    assert_one_line_error(code, err, needle)
    assert len(err) < 500  # a huge value is quoted cut, never whole
    assert list(in_tmp.iterdir()) == []


def test_filesystem_errors_are_one_line(capsys, in_tmp):
    (in_tmp / "a_file").write_text("x")
    code, _, err = run_main(capsys, "data", "synth", "--n-bars", "1000", "--out", "a_file/sub")
    assert_one_line_error(code, err, "a_file")
    assert (in_tmp / "a_file").read_text() == "x"
    ro = in_tmp / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permission bits: nothing to prove there
            pytest.skip("running as a user that can write anywhere")
        code, _, err = run_main(capsys, "data", "synth", "--n-bars", "1000", "--out", "ro/syn")
        assert_one_line_error(code, err, "ro")
    finally:
        ro.chmod(0o700)


def test_output_into_a_closed_pipe_exits_quietly(tmp_path):
    # `true` exits without reading, long before Python has started: every write meets a closed pipe.
    proc = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m himari_ray --help | true; echo ${{PIPESTATUS[0]}}"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() in ("0", "141")  # 0 if the help fitted the pipe before it closed


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("name: a\nname: b\n", ("duplicate key 'name'",)),
        (None, ("not a text (UTF-8) file",)),
        ("REPLACE reward_scale: 100.0|reward_scale: .nan", ("fixed.reward_scale", "finite")),
        ("REPLACE trade_cost: {low: 0.005|trade_cost: {low: -.inf", ("search.trade_cost",)),
        ("REPLACE name: e2e|name: " + "x" * 300, ("name", "at most 64")),
    ],
)
def test_space_files_that_would_mislead_are_refused(capsys, in_tmp, text, needles):
    path = in_tmp / "space.yaml"
    if text is None:
        path.write_bytes(bytes(range(256)) * 4)
    elif text.startswith("REPLACE "):
        old, new = text.removeprefix("REPLACE ").split("|")
        base = (REPO / "tests" / "spaces" / "e2e.yaml").read_text()
        assert old in base
        path.write_text(base.replace(old, new))
    else:
        path.write_text(text)
    before = sorted(p.name for p in in_tmp.iterdir())
    code, _, err = run_main(capsys, "search", str(path))
    assert_one_line_error(code, err, "space.yaml", *needles)
    assert sorted(p.name for p in in_tmp.iterdir()) == before


def _e2e_with(in_tmp, extra: str) -> Path:
    """The e2e test space with some top-level keys replaced."""
    text = (REPO / "tests" / "spaces" / "e2e.yaml").read_text()
    keys = {line.split(":")[0] for line in extra.splitlines() if line.strip()}
    kept = [line for line in text.splitlines() if line.split(":")[0] not in keys]
    path = in_tmp / "space.yaml"
    path.write_text("\n".join(kept) + "\n" + extra)
    return path


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("model: {d_model: 32, n_heads: 3, n_layers: 1, ffn_dim: 64, dropout: 0.0, head_hidden: 32}\n",
         "d_model 32 is not divisible by n_heads 3"),
        ("data: {source: dataset, path: /nonexistent/ds}\n", "/nonexistent/ds"),
        ("env: {context_len: 2000, episode_len: 128, position_mode: per_bar}\n", "context_len"),
    ],
)  # fmt: skip
def test_what_would_crash_every_trial_is_refused_before_anything_starts(capsys, in_tmp, extra, needle):
    path = _e2e_with(in_tmp, extra)
    code, _, err = run_main(capsys, "search", str(path), "--out", "out")
    assert_one_line_error(code, err, needle)
    assert not (in_tmp / "out").exists()


def test_a_dataset_with_an_impossible_regime_id_is_refused_before_anything_starts(capsys, in_tmp):
    import numpy as np

    assert main(["data", "synth", "--n-bars", "3000", "--out", "ds"]) == 0
    capsys.readouterr()
    with np.load(in_tmp / "ds" / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["train.regime_ids"][5] = 7
    np.savez_compressed(in_tmp / "ds" / "arrays.npz", **arrays)
    code, _, err = run_main(capsys, "search", str(REPO / "tests" / "spaces" / "e2e.yaml"), "--data", "ds")
    assert_one_line_error(code, err, "arrays.npz")
    assert sorted(p.name for p in in_tmp.iterdir()) == ["ds"]


@pytest.mark.parametrize(("address", "needle"), [("127.0.0.1:1", "unreachable"), ("nonsense", "expected host:port")])
def test_an_unreachable_address_is_refused_in_seconds(capsys, in_tmp, address, needle):
    code, _, err = run_main(capsys, "search", str(REPO / "tests" / "spaces" / "e2e.yaml"), "--out", "o",
                            "--address", address)  # fmt: skip
    assert_one_line_error(code, err, f"--address {address}", needle)
    assert not (in_tmp / "o").exists()


@pytest.mark.parametrize(
    ("uri", "needle"),
    [("ftp://host/x", "expected an absolute directory or a URI"), ("s3://", "with a bucket"),
     ("rel/dir", "must be absolute"), ("OUT/inside", "outside --out")],
)  # fmt: skip
def test_a_tune_storage_nobody_else_could_reach_is_refused(capsys, in_tmp, uri, needle):
    uri = uri.replace("OUT", str(in_tmp / "o"))
    code, _, err = run_main(capsys, "search", str(REPO / "tests" / "spaces" / "e2e.yaml"), "--out", "o",
                            "--tune-storage", uri)  # fmt: skip
    assert_one_line_error(code, err, "--tune-storage", needle)
    assert not (in_tmp / "o").exists()


def test_version(capsys):
    from himari_ray import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"himari-ray {__version__}"


def test_spaces_lists_every_bundled_space_with_its_description(capsys):
    code, out, _ = run_main(capsys, "spaces")
    assert code == 0
    for name, path in bundled_spaces().items():
        description = yaml.safe_load(path.read_text())["description"]
        assert any(line.startswith(name) and description in line for line in out.splitlines()), name
