"""Exported policies: the bundle's module equals the RLModule, `act` on raw bars reproduces the evaluator,
and bad input (short or foreign bars, a tampered bundle, a directory that is not a search) is one line.

The fast tests export a real (untrained, sharpened) RLModule built the way RLlib builds it; the slow ones
run a real one-trial search and export its checkpoint through the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from ray.rllib.core.columns import Columns

from himari_ray.cli import main
from himari_ray.data.dataset import BuildSettings, DataSpec, import_ohlcv, sample_path
from himari_ray.data.ohlcv import read_ohlcv
from himari_ray.data.store import load_dataset_dir, save_dataset
from himari_ray.env.trading import EnvConfig, decision_windows
from himari_ray.policy.act import act_on_bars, decision_inputs
from himari_ray.policy.bundle import load_bundle
from himari_ray.policy.export import export_module
from himari_ray.report import load_search
from himari_ray.rl.config import EvalConfig, TrialConfig
from himari_ray.rl.evaluate import PolicyEvaluator
from himari_ray.rl.model import MODEL_PRESETS, RegimeTransformerModule
from himari_ray.types import ACTION_NAMES, N_ACTIONS, N_REGIMES

REPO = Path(__file__).resolve().parents[1]
CONTEXT = 16
N_BARS = 2500


@pytest.fixture(scope="module")
def bars_file(tmp_path_factory) -> Path:
    """The first N_BARS hours of the bundled real BTC sample as a plain freqtrade-layout CSV."""
    path = tmp_path_factory.mktemp("bars") / "BTC_USDT-1h.csv"
    pd.read_csv(sample_path(), nrows=N_BARS).to_csv(path, index=False)
    return path


def make_module(n_features: int, seed: int = 4, carried: bool = False) -> RegimeTransformerModule:
    """A real RegimeTransformerModule with its actor's last layer widened so greedy actions vary by input
    (seed 4: each action on about a fifth or more of the validation windows); `carried`: it sees a position."""
    torch.manual_seed(seed)
    spaces = {
        "window": gym.spaces.Box(-10.0, 10.0, (CONTEXT, n_features), np.float32),
        "regime": gym.spaces.Discrete(N_REGIMES),
    }
    if carried:
        spaces["position"] = gym.spaces.Discrete(N_ACTIONS)
    obs = gym.spaces.Dict(spaces)
    module = RegimeTransformerModule(
        observation_space=obs,
        action_space=gym.spaces.Discrete(N_ACTIONS),
        model_config=MODEL_PRESETS["tiny"].to_model_config(),
    )
    torch.nn.init.normal_(module.actor[-1].weight, std=1.0)
    return module.eval()


def trial_config(data: Path) -> TrialConfig:
    spec = DataSpec(source="dataset", path=str(data))
    return TrialConfig(env=EnvConfig(data=spec, context_len=CONTEXT), eval=EvalConfig())


NO_SEARCH = {"trial": None, "iteration": None, "search_dir": None}


def exported(tmp_path: Path, bars: Path, settings: BuildSettings | None = None, onnx: bool | None = None):
    ds = import_ohlcv(bars, settings)
    save_dataset(ds, tmp_path / "data")
    module = make_module(ds.n_features)
    config = trial_config(tmp_path / "data")
    export_module(module, ds, config, tmp_path / "bundle", NO_SEARCH, onnx=onnx)
    return ds, module, config, tmp_path / "bundle"


@pytest.fixture(scope="module")
def shared(tmp_path_factory, bars_file):
    """One exported bundle (with ONNX when installed) for the tests that only read it."""
    return exported(tmp_path_factory.mktemp("shared"), bars_file)


@pytest.fixture
def bundle_copy(shared, tmp_path) -> Path:
    """A private copy of the shared bundle, for tests that damage it."""
    shutil.copytree(shared[3], tmp_path / "bundle")
    return tmp_path / "bundle"


def evaluator_actions(ds, module, config) -> pd.Series:
    """PolicyEvaluator's actions on the validation split, by bar time (ISO, as `act` writes them)."""
    ev = PolicyEvaluator(config.env, config.eval, dataset=ds)
    c = config.env.context_len
    bars = np.flatnonzero(ds.val.tradable[c - 1 : len(ds.val) - 1]) + (c - 1)
    times = pd.to_datetime(ds.val.timestamps[bars], utc=True).strftime("%Y-%m-%dT%H:%M:%SZ")
    return pd.Series(np.asarray(ACTION_NAMES)[ev.actions(module)], index=times)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    line = err.strip()
    assert line.startswith("error:") and "\n" not in line and "Traceback" not in line, err
    for f in fragments:
        assert f in line, line


def test_exported_module_greedy_actions_equal_the_rlmodule(shared):
    ds, module, _, bundle_dir = shared
    bundle = load_bundle(bundle_dir)
    windows = np.ascontiguousarray(decision_windows(ds.scaler.transform(ds.val.features), CONTEXT))
    regimes = ds.val.regime_ids[CONTEXT - 1 :]
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 2, windows.shape).astype(np.float32)  # off the data too
    for w, r in ((windows, regimes), (noise, rng.integers(0, N_REGIMES, len(noise)))):
        with torch.no_grad():
            ref = module.forward_inference(
                {Columns.OBS: {"window": torch.from_numpy(w), "regime": torch.from_numpy(r)}}
            )
        ref = ref[Columns.ACTION_DIST_INPUTS].numpy()
        got = bundle.logits(w, r)
        np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
        if w is windows:
            assert np.bincount(ref.argmax(-1), minlength=N_ACTIONS).min() > 50  # every action is compared
    assert bundle.spec.context_len == CONTEXT and bundle.spec.feature_names == ds.feature_names
    np.testing.assert_array_equal(bundle.scaler.mean, ds.scaler.mean)


def test_onnx_file_computes_the_same_logits(shared):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    ds, _, _, bundle_dir = shared
    model = onnx.load(str(bundle_dir / "policy.onnx"))
    onnx.checker.check_model(model)
    windows = np.ascontiguousarray(decision_windows(ds.scaler.transform(ds.val.features), CONTEXT))[:64]
    regimes = ds.val.regime_ids[CONTEXT - 1 :][:64]
    feeds = {"window": windows, "regime": regimes, "position": np.zeros_like(regimes)}
    got = ReferenceEvaluator(model).run(None, {i.name: feeds[i.name] for i in model.graph.input})[0]
    ref = load_bundle(bundle_dir).logits(windows, regimes)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("denoise", [False, True], ids=["raw", "denoised"])
def test_act_on_raw_bars_reproduces_the_evaluator_on_the_validation_split(tmp_path, bars_file, shared, denoise):
    if denoise:
        ds, module, config, bundle_dir = exported(tmp_path, bars_file, BuildSettings(denoise={"enabled": True}), False)
        assert load_bundle(bundle_dir).spec.denoise.enabled
    else:
        ds, module, config, bundle_dir = shared
    frame, skipped = act_on_bars(load_bundle(bundle_dir), bars_file)
    assert len(frame) == len(read_ohlcv(bars_file)[0]) and frame["real"].sum() == N_BARS  # hours missing: filled
    assert skipped == ds.metadata["warmup_bars"] + CONTEXT - 1
    assert (frame["action"].iloc[:skipped] == "").all() and frame["p_hold"].iloc[:skipped].isna().all()
    assert (frame["action"].iloc[skipped:] != "").all()
    probs = frame[["p_hold", "p_long", "p_short"]].iloc[skipped:].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    expected = evaluator_actions(ds, module, config)
    got = frame.set_index("timestamp")["action"].loc[expected.index]
    assert len(expected) > 400 and expected.nunique() == N_ACTIONS
    assert (got.to_numpy() == expected.to_numpy()).all()


def test_a_policy_scored_as_a_sampler_acts_by_seeded_draws(tmp_path, bars_file):
    """eval.deploy: sample travels in the bundle: `act` then draws each action from the probabilities it
    writes beside it, the same draws for the same --seed, others for another."""
    ds = import_ohlcv(bars_file)
    save_dataset(ds, tmp_path / "data")
    config = trial_config(tmp_path / "data")
    config = config.model_copy(update={"eval": EvalConfig(deploy="sample")})
    export_module(make_module(ds.n_features), ds, config, tmp_path / "bundle", NO_SEARCH, onnx=False)
    bundle = load_bundle(tmp_path / "bundle")
    frame, skipped = act_on_bars(bundle, bars_file, seed=3)
    acted = frame.iloc[skipped:]
    probs = acted[["p_hold", "p_long", "p_short"]].to_numpy()
    assert (acted["action"].to_numpy() != np.asarray(ACTION_NAMES)[probs.argmax(axis=1)]).mean() > 0.1
    shares = acted["action"].value_counts(normalize=True).reindex(ACTION_NAMES).to_numpy()
    assert np.abs(shares - probs.mean(axis=0)).max() < 0.08
    assert act_on_bars(bundle, bars_file, seed=3)[0]["action"].equals(frame["action"])
    assert not act_on_bars(bundle, bars_file, seed=4)[0]["action"].equals(frame["action"])


def test_a_carried_policy_is_exported_and_acts_along_its_own_path_of_positions(tmp_path, bars_file):
    """A carried policy's action depends on the position its previous action left it in: the bundle takes
    the position, and `act` follows the path from flat, as the evaluator does over a split."""
    from himari_ray.env.trading import carried_actions

    ds = import_ohlcv(bars_file)
    save_dataset(ds, tmp_path / "data")
    config = trial_config(tmp_path / "data")
    config = config.model_copy(update={"env": config.env.model_copy(update={"position_mode": "carried"})})
    module = make_module(ds.n_features, carried=True)
    export_module(module, ds, config, tmp_path / "bundle", NO_SEARCH, onnx=False)
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.carried and bundle.spec.format_version == 2
    frame, skipped = act_on_bars(bundle, bars_file)

    # The same path from the RLModule itself, over the windows act decided on.
    _, _, windows, regimes = decision_inputs(bundle, bars_file)
    by_position = []
    for p in range(3):
        obs = {"window": torch.from_numpy(np.ascontiguousarray(windows)), "regime": torch.from_numpy(regimes.copy())}
        obs["position"] = torch.full_like(obs["regime"], p)
        with torch.no_grad():
            by_position.append(module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS].numpy())
    expected = np.asarray(ACTION_NAMES)[carried_actions(np.stack(by_position, axis=1))]
    got = frame["action"].iloc[skipped:].to_numpy()
    assert (got == expected).all()
    # The position matters: acting as if always flat gives other actions somewhere.
    assert (np.asarray(ACTION_NAMES)[by_position[0].argmax(-1)] != got).any()


def test_act_cli_writes_one_row_per_bar_and_refuses_an_existing_out(tmp_path, bars_file, shared, capsys):
    bundle_dir = shared[3]
    out = tmp_path / "actions.csv"
    code, _, err = run_cli(capsys, "act", bundle_dir, bars_file, "--out", out)
    assert code == 0, err
    # 190 real bars of detector warm-up (one more: the first bar has no return) and a context of 16, minus 1.
    assert "the first 206 bars have none" in err
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["timestamp", "close", "real", "regime", "action", "p_hold", "p_long", "p_short"]
    assert frame["real"].sum() == N_BARS
    before = out.read_bytes()
    code, _, err = run_cli(capsys, "act", bundle_dir, bars_file, "--out", out)
    assert_one_line_error(code, err, "already exists")
    assert out.read_bytes() == before


def test_act_reads_any_layout_data_import_reads(tmp_path, bars_file, shared):
    """The same bars as freqtrade's .feather and .json candles: the same actions as from the CSV."""
    pytest.importorskip("pyarrow")
    bundle = load_bundle(shared[3])
    csv = pd.read_csv(bars_file)
    times = pd.to_datetime(csv.pop("timestamp"), utc=True)
    feather = tmp_path / "BTC_USDT-1h.feather"
    csv.assign(date=times)[["date", "open", "high", "low", "close", "volume"]].to_feather(feather)
    candles = tmp_path / "BTC_USDT-1h.json"
    ms = times.astype("int64") // 10**6
    candles.write_text(json.dumps([[int(t), *map(float, r)] for t, r in zip(ms, csv.values, strict=True)]))
    reference, _ = act_on_bars(bundle, bars_file)
    for path in (feather, candles):
        frame, _ = act_on_bars(bundle, path)
        pd.testing.assert_frame_equal(frame, reference)


def test_act_refuses_bars_shorter_than_the_context_and_bars_with_other_columns(tmp_path, bars_file, shared, capsys):
    bundle_dir = shared[3]
    short = tmp_path / "short.csv"
    pd.read_csv(bars_file, nrows=200).to_csv(short, index=False)  # warm-up 190 + context 16 = 206 needed
    code, _, err = run_cli(capsys, "act", bundle_dir, short, "--out", tmp_path / "a.csv")
    assert_one_line_error(code, err, str(short), "200 bars", "at least 206")
    other = tmp_path / "other.csv"
    pd.read_csv(bars_file, nrows=400).rename(columns={"volume": "qty"}).to_csv(other, index=False)
    code, _, err = run_cli(capsys, "act", bundle_dir, other, "--out", tmp_path / "a.csv")
    assert_one_line_error(code, err, str(other), "missing column(s) volume")
    assert not (tmp_path / "a.csv").exists()


@pytest.mark.parametrize("damage", ["edit", "extra", "missing", "sha256"])
def test_a_tampered_bundle_is_refused_in_one_line(tmp_path, bars_file, bundle_copy, capsys, damage):
    bundle_dir = bundle_copy
    digest = load_bundle(bundle_dir).manifest_sha256
    args = []
    if damage == "edit":  # one changed number in the scaler's metadata: the checksum no longer matches
        spec = json.loads((bundle_dir / "policy.json").read_text())
        spec["scaler_clip"] = 1e9
        (bundle_dir / "policy.json").write_text(json.dumps(spec))
        expected = "does not match its SHA-256"
    elif damage == "extra":
        (bundle_dir / "evil.pkl").write_bytes(b"\x80\x04")
        expected = "not in manifest.json"
    elif damage == "missing":
        (bundle_dir / "scaler.npz").unlink()
        expected = "is missing"
    else:  # an intact bundle, but not the one the user was told to expect
        args = ["--sha256", digest[::-1]]
        expected = "is not the expected"
    out = tmp_path / "a.csv"
    code, _, err = run_cli(capsys, "act", bundle_dir, bars_file, "--out", out, *args)
    assert_one_line_error(code, err, expected, "refusing to load")
    assert not out.exists()


def test_act_accepts_the_digest_export_printed(bars_file, shared, capsys):
    bundle_dir = shared[3]
    digest = load_bundle(bundle_dir).manifest_sha256
    code, out, err = run_cli(capsys, "act", bundle_dir, bars_file, "--sha256", digest)
    assert code == 0, err
    assert len(out.splitlines()) == len(read_ohlcv(bars_file)[0]) + 1  # header + one row per bar on stdout


def test_export_refuses_a_directory_that_is_not_a_search_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "notasearch").mkdir()
    code, _, err = run_cli(capsys, "export", tmp_path / "notasearch", "--out", tmp_path / "b")
    assert_one_line_error(code, err, "not a himari-ray search directory")
    assert not (tmp_path / "b").exists()


def test_export_refuses_a_policy_trained_on_features_act_cannot_compute(tmp_path, small_dataset):
    from himari_ray.types import UserInputError

    module = make_module(small_dataset.n_features)
    with pytest.raises(UserInputError, match="trained on synthetic features"):
        export_module(module, small_dataset, trial_config(tmp_path), tmp_path / "b", NO_SEARCH)
    assert not (tmp_path / "b").exists()


# --- a real search, exported and replayed through the CLI -------------------------------------------------


@pytest.fixture(scope="module")
def real_search(tmp_path_factory, bars_file) -> tuple[Path, Path]:
    """`data import` of the real bars, then a real one-trial search (2 PPO iterations) on that dataset."""
    root = tmp_path_factory.mktemp("search")
    # A private Ray temp dir: a bare ray.init() joins the cluster a `ray start` on this machine last recorded
    # there (another test's, or a user's); short, because Ray's socket paths must stay under 108 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="hr-", dir="/tmp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token", "RAY_TMPDIR": ray_tmp}
    cli = [sys.executable, "-m", "himari_ray"]
    data, out = root / "data", root / "out"
    space = REPO / "tests" / "spaces" / "e2e.yaml"
    try:
        proc = subprocess.run(
            [*cli, "data", "import", str(bars_file), "--out", str(data)], capture_output=True, env=env
        )
        assert proc.returncode == 0, proc.stderr
        proc = subprocess.run(
            [*cli, "search", str(space), "--trials", "1", "--out", str(out), "--data", str(data)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return out, data


@pytest.mark.slow
def test_export_of_a_real_search_round_trips_through_act(real_search, bars_file, tmp_path, capsys):
    from ray.rllib.core.rl_module.rl_module import RLModule

    from himari_ray.policy.export import find_trial
    from himari_ray.searchdir import MODULE_IN_CHECKPOINT

    out, data = real_search
    bundle_dir = tmp_path / "bundle"
    code, stdout, err = run_cli(capsys, "export", out, "--out", bundle_dir)
    assert code == 0, err
    found = find_trial(out, None)
    best = int(load_search(out).trials.set_index("trial").loc[1, "iteration"])  # the report the table shows
    assert found.iteration == best and f"exported trial 1 (iteration {best}," in stdout
    module = RLModule.from_checkpoint(str(found.checkpoint / "member_0" / MODULE_IN_CHECKPOINT)).eval()
    bundle = load_bundle(bundle_dir)
    assert bundle.spec.trial == 1 and bundle.spec.iteration == best
    assert bundle.spec.trial_config == found.config.model_dump(mode="json")
    assert bundle.spec.search["space"] == "e2e" and (bundle_dir / "space.yaml").read_text()

    ds = load_dataset_dir(data)
    windows = np.ascontiguousarray(decision_windows(ds.scaler.transform(ds.val.features), CONTEXT))
    regimes = ds.val.regime_ids[CONTEXT - 1 :]
    with torch.no_grad():
        position = torch.zeros(len(regimes), dtype=torch.int64)  # per_bar: the policy is always flat before it acts
        obs = {"window": torch.from_numpy(windows), "regime": torch.from_numpy(regimes), "position": position}
        ref = module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS].numpy()
    np.testing.assert_array_equal(bundle.logits(windows, regimes).argmax(-1), ref.argmax(-1))

    actions = tmp_path / "actions.csv"
    code, _, err = run_cli(capsys, "act", bundle_dir, bars_file, "--out", actions)
    assert code == 0, err
    expected = evaluator_actions(ds, module, found.config.members()[0])
    got = pd.read_csv(actions).set_index("timestamp")["action"].loc[expected.index]
    assert (got.to_numpy() == expected.to_numpy()).all()


@pytest.mark.slow
def test_export_refuses_a_trial_that_does_not_exist_and_an_existing_out(real_search, tmp_path, capsys):
    out, _ = real_search
    code, _, err = run_cli(capsys, "export", out, "--trial", "7", "--out", tmp_path / "b")
    assert_one_line_error(code, err, "--trial 7: no such trial", "trials: '1'")
    assert not (tmp_path / "b").exists()
    (tmp_path / "b").mkdir()
    code, _, err = run_cli(capsys, "export", out, "--out", tmp_path / "b")
    assert_one_line_error(code, err, "already exists")
    assert not any((tmp_path / "b").iterdir())


def test_export_takes_the_checkpoint_of_the_best_report_not_the_latest(tmp_path):
    """The table ranks a trial by its best report; export must ship that policy (the search keeps its
    checkpoint beside the latest), and falls back to the latest only where the best is not on disk."""
    from himari_ray.searchdir import MODULE_IN_CHECKPOINT, best_checkpoint

    def checkpoint(n: int, iteration: int, best: int) -> None:
        d = tmp_path / f"checkpoint_{n:06d}"
        (d / "member_0" / MODULE_IN_CHECKPOINT).mkdir(parents=True)
        (d / "himari_trial_state.json").write_text(
            json.dumps({"iteration": iteration, "best": {"best_iteration": best}})
        )

    checkpoint(6, 7, 7)
    checkpoint(11, 12, 7)
    assert best_checkpoint(tmp_path).name == "checkpoint_000006"
    shutil.rmtree(tmp_path / "checkpoint_000006")
    assert best_checkpoint(tmp_path).name == "checkpoint_000011"


def test_export_takes_a_relative_search_directory(real_search, tmp_path, capsys, monkeypatch):
    """`himari-ray export run --out bundle` from the directory holding `run`: RLlib reads checkpoint paths as
    URIs, and a relative one used to end in pyarrow's traceback ("URI has empty scheme")."""
    out, _ = real_search
    monkeypatch.chdir(out.parent)
    code, stdout, err = run_cli(capsys, "export", out.name, "--out", tmp_path / "bundle")
    assert code == 0 and "exported trial 1" in stdout, err
    assert load_bundle(tmp_path / "bundle").spec.trial == 1
