"""Exported policies: the bundle's module (and its ONNX file) equals the RLModule, `act` on raw bars reproduces
the evaluator (greedy, sampled with a seed, carried along its own positions; from any layout `data import`
reads), and `act`'s bad input (short or foreign bars, a tampered bundle, an existing --out) is one line.

Each test exports a real (untrained, sharpened) RLModule built the way RLlib builds it (tests/export_kit.py).
`himari-ray export` of a search, a real one trained, is `test_export_search.py`'s.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from ray.rllib.core.columns import Columns

from himari_ray.data.dataset import BuildSettings, import_ohlcv
from himari_ray.data.ohlcv import read_ohlcv
from himari_ray.data.store import save_dataset
from himari_ray.env.trading import decision_windows
from himari_ray.policy.act import act_on_bars, decision_inputs
from himari_ray.policy.bundle import load_bundle
from himari_ray.policy.export import export_module
from himari_ray.rl.config import EvalConfig
from himari_ray.types import ACTION_NAMES, N_ACTIONS, N_REGIMES
from tests.cli_kit import assert_one_line_error, run_cli
from tests.conftest import BARS_FILE_HOURS as N_BARS
from tests.export_kit import CONTEXT, NO_SEARCH, evaluator_actions, make_module, trial_config


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
