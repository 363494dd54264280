"""bapose-report: jobs -> one row per configuration, seeds folded, failures listed; every source kind; bad input.

The fast tests write job folders in the layout bapose-train leaves (status.json, metrics.json, .hydra/overrides.yaml)
with made-up numbers, to pin the arithmetic and the failure handling; the slow test reports a real 2 x 2 x 2-seed
CPU sweep (plus a job that really failed) from its run folders, and gets the same table with wandb not importable
and the runs' W&B folders deleted, and from the same sweep run with logger=[csv].
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bapose.cli.report import main as report_main
from bapose.errors import ConfigError, DataError
from bapose.report import sweep_report

DILS = ["[1,6,12,18]", "[1,3,6,9]"]
WEIGHTS = [0.03, 0.1]


def make_job(root: Path, num: int, overrides: list[str], metrics: dict | None = None, status: str = "finished",
             error: str = "", log: str = "") -> Path:
    """A job folder as bapose-train writes it (status.json, .hydra/overrides.yaml, metrics.json when finished)."""
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    info = {"status": status, "task": "train", "overrides": overrides, **({"error": error} if error else {})}
    (job / "status.json").write_text(json.dumps(info))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if log:
        (job / "train.log").write_text(log)
    return job


def fixture_sweep(root: Path) -> dict[tuple[str, float], list[float]]:
    """2 dilation sets x 2 offset weights x 2 seeds, plus a failed and a still-running job. Made-up AP values."""
    aps: dict[tuple[str, float], list[float]] = {}
    num = 0
    for d_i, dil in enumerate(DILS):
        for w in WEIGHTS:
            for seed in (1, 2):
                ap = 0.5 - 0.03 * d_i + (0.02 if w == 0.1 else 0.0) + 0.007 * seed * (1 + d_i)
                aps.setdefault((dil, w), []).append(ap)
                make_job(root, num, ["debug=limit", f"model.decoder.dilations={dil}",
                                     f"module.loss.offset_weight={w}", f"seed={seed}"],
                         {"val/AP": ap, "val/AP50": ap + 0.3, "val/AP75": ap - 0.1, "val/AR": ap + 0.05,
                          "test/AP": ap - 0.01, "train_seconds": 60.0 + 10 * seed, "global_step": 6})
                num += 1
    make_job(root, num, ["debug=limit", "model.decoder.dilations=[1,2,4,8]", "module.loss.offset_weight=0.1",
                         "seed=1"], status="failed",
             error="NonFiniteLossError: training stopped: the loss was non-finite for 20 optimizer steps in a row")
    make_job(root, num + 1, ["debug=limit", "model.decoder.dilations=[1,2,4,8]", "module.loss.offset_weight=0.1",
                             "seed=2"], status="running", log="[INFO] epoch 0 | step 3\nEpoch 1:  50% 2/4\n")
    return aps


def table_rows(md: str) -> list[list[str]]:
    """The cells of report.md's first table (header included)."""
    lines = md.split("\n\n## ")[0].splitlines()
    rows = [line for line in lines if line.startswith("|") and not line.startswith("|---")]
    return [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in rows]


def test_report_folds_seeds_marks_best_and_lists_failures(tmp_path):
    sweep = tmp_path / "sweep"
    aps = fixture_sweep(sweep)
    report = sweep_report([sweep], out_dir=tmp_path / "out", cost=False)

    assert report.keys == ["model.decoder.dilations", "module.loss.offset_weight"] and report.folded == ["seed"]
    assert len(report.rows) == 4 and all(r.n == 2 for r in report.rows)
    for r in report.rows:
        dil = r.values["model.decoder.dilations"]
        vals = aps[("[" + ",".join(map(str, dil)) + "]", r.values["module.loss.offset_weight"])]
        mean, std, n = r.stats["val/AP"]
        assert (mean, std, n) == (pytest.approx(statistics.fmean(vals)), pytest.approx(statistics.stdev(vals)), 2)
        assert r.train_seconds == pytest.approx(75.0)
    # sorted by the metric, best first, and the best is the highest mean
    means = [r.stats["val/AP"][0] for r in report.rows]
    assert means == sorted(means, reverse=True) and report.rows[0].best and sum(r.best for r in report.rows) == 1

    md = (tmp_path / "out" / "report.md").read_text()
    cells = table_rows(md)
    assert cells[0] == ["", "model.decoder.dilations", "module.loss.offset_weight", "AP", "AP50", "AP75", "AR", "n",
                        "params (M)", "GFLOPs", "train time"]
    assert len(cells) == 5 and cells[1][0] == "★" and all(" ± " in row[3] for row in cells[1:])
    best_vals = aps[("[1,6,12,18]", 0.1)]
    assert cells[1][1:3] == ["[1, 6, 12, 18]", "0.1"]
    assert cells[1][3] == f"**{statistics.fmean(best_vals):.3f} ± {statistics.stdev(best_vals):.3f}**"
    # nothing dropped: the failed job with its error line, the running one with its log's last line
    failures = md.split("## Failed or unfinished jobs (2)")[1]
    assert "| `sweep/8` | failed |" in failures and "non-finite for 20 optimizer steps" in failures
    assert "| `sweep/9` | unfinished |" in failures and "Epoch 1:  50% 2/4" in failures
    assert "model.decoder.dilations=[1, 2, 4, 8]" in failures

    with open(tmp_path / "out" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and float(rows[0]["val/AP_mean"]) == pytest.approx(statistics.fmean(best_vals))
    assert rows[0]["best"] == "True" and rows[0]["folded"] == "seed=1;seed=2"
    assert (tmp_path / "out" / "report.png").stat().st_size > 10_000


def test_report_sort_and_metric_are_arguments(tmp_path):
    sweep = tmp_path / "sweep"
    aps = fixture_sweep(sweep)
    by_weight = sweep_report([sweep], sort="offset_weight", cost=False)
    assert [r.values["module.loss.offset_weight"] for r in by_weight.rows] == [0.03, 0.03, 0.1, 0.1]
    assert not by_weight.descending
    by_test = sweep_report([sweep], metric="test/AP", sort="metric", descending=False, cost=False)
    means = [r.stats["test/AP"][0] for r in by_test.rows]
    assert means == sorted(means) and by_test.best is by_test.rows[-1]
    assert by_test.best.stats["test/AP"][0] == pytest.approx(statistics.fmean(aps[("[1,6,12,18]", 0.1)]) - 0.01)
    worst = sweep_report([sweep], higher_is_better=False, cost=False).best
    assert worst.values == {"model.decoder.dilations": [1, 3, 6, 9], "module.loss.offset_weight": 0.03}
    with pytest.raises(ConfigError, match="not a column"):
        sweep_report([sweep], sort="nonsense", cost=False)
    with pytest.raises(DataError, match="no finished job has the metric 'val/APx'"):
        sweep_report([sweep], metric="val/APx", cost=False)


def test_report_of_several_sweeps_and_single_run_folders_with_crowdpose_columns(tmp_path):
    a, b = tmp_path / "a", tmp_path / "runs"
    crowd = {"val/AP_easy": 0.7, "val/AP_medium": 0.6, "val/AP_hard": 0.5}
    make_job(a, 0, ["data=crowdpose", "data.input_size=64", "seed=1"], {"val/AP": 0.2, **crowd})
    make_job(a, 1, ["data=crowdpose", "data.input_size=64", "seed=2"], {"val/AP": 0.4, **crowd})
    make_job(b / "2026-01-01_00-00-00", 0, ["data=crowdpose", "data.input_size=96"], {"val/AP": 0.5, **crowd})
    (b / "2026-01-01_00-00-00" / "0").rename(b / "single")
    report = sweep_report([a, b / "single"], cost=False)
    assert report.keys == ["data.input_size"] and [r.n for r in report.rows] == [1, 2]
    assert report.rows[1].stats["val/AP"][:2] == (pytest.approx(0.3), pytest.approx(statistics.stdev([0.2, 0.4])))
    header = table_rows(report.markdown())[0]
    assert header[2:6] == ["AP", "AP easy", "AP medium", "AP hard"] and "AP50" not in header


def test_status_json_decides_a_resumed_or_preempted_run_with_old_metrics_is_unfinished(tmp_path):
    """A resumed run (status.json ``running``) or one stopped for a requeue (``preempted``) keeps the metrics.json of
    an earlier attempt: those numbers are not its result. Only ``finished``, or no status.json at all (a run folder
    older than it), lets metrics.json into the table."""
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["seed=1"], {"val/AP": 0.5})
    make_job(sweep, 1, ["seed=2"], {"val/AP": 0.9}, status="running", log="Epoch 3:  20% 1/5\n")
    make_job(sweep, 2, ["seed=3"], {"val/AP": 0.8}, status="preempted", error="SIGUSR2")
    (make_job(sweep, 3, ["seed=4"], {"val/AP": 0.3}) / "status.json").unlink()
    report = sweep_report([sweep], cost=False)
    ((row),) = report.rows
    assert sorted(j.name for j in row.jobs) == ["sweep/0", "sweep/3"] and row.n == 2
    assert row.stats["val/AP"][0] == pytest.approx(0.4)
    assert [(j.name, j.status) for j in report.problems] == [("sweep/1", "unfinished"), ("sweep/2", "unfinished")]
    running, preempted = report.problems
    assert not running.metrics and not preempted.metrics
    assert running.error == "status.json says 'running'; last log line: train.log: Epoch 3:  20% 1/5"
    assert preempted.error == "status.json says 'preempted' (SIGUSR2)"
    failures = report.markdown().split("## Failed or unfinished jobs (2)")[1]
    assert "| `sweep/1` | unfinished |" in failures and "| `sweep/2` | unfinished |" in failures


def test_params_and_gflops_are_bapose_profile_numbers_of_each_jobs_config(tmp_path):
    from omegaconf import OmegaConf

    from bapose.cli.profile import profile
    from bapose.build import compose_config

    sweep = tmp_path / "sweep"
    for num, (model, size) in enumerate([("bapose_w18s", 64), ("bapose_w18s", 128), ("dekr_w18s", 128)]):
        job = make_job(sweep, num, [f"model={model}", f"data.input_size={size}"], {"val/AP": 0.1 * num})
        cfg = compose_config([f"model={model}", f"data.input_size={size}"], output_dir=job)
        # what Hydra saves: the job's config without the hydra node, interpolations kept
        OmegaConf.save({k: v for k, v in cfg.items() if k != "hydra"}, job / ".hydra" / "config.yaml")
    report = sweep_report([sweep])
    assert len(report.rows) == 3
    for row in report.rows:
        model, size = row.values["model"], row.values["data.input_size"]
        expected = profile(compose_config([f"model={model}", "data=synthetic", f"data.input_size={size}", "repeats=0"],
                                          config_name="profile"))
        assert (row.params_m, row.gflops) == (pytest.approx(expected["params_m"]), pytest.approx(expected["gflops"]))
    by = {(r.values["model"], r.values["data.input_size"]): r for r in report.rows}
    assert by["bapose_w18s", 128].gflops == pytest.approx(4 * by["bapose_w18s", 64].gflops, rel=0.01)
    assert by["bapose_w18s", 128].params_m > by["dekr_w18s", 128].params_m  # D-WASP adds parameters


def test_bad_input_gets_one_line_naming_the_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # conftest keeps tracebacks; the CLI shows one line
    empty = tmp_path / "empty_sweep"
    (empty / "notes").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        report_main([str(empty)])
    msg = str(e.value.code)
    assert msg.startswith("bapose-report: ") and f"'{empty}'" in msg and "no jobs" in msg and "\n" not in msg

    unfinished = tmp_path / "unfinished_sweep"
    make_job(unfinished, 0, ["seed=1"], status="failed", error="ConfigError: field 'data.input_size' is 63")
    make_job(unfinished, 1, ["seed=2"], status="running", log="Epoch 0: 10%\n")
    with pytest.raises(SystemExit) as e:
        report_main([str(unfinished)])
    msg = str(e.value.code)
    assert f"'{unfinished}'" in msg and "metrics.json" in msg and "1 failed, 1 unfinished" in msg
    assert "\n" not in msg

    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path / "missing")])
    assert "no such folder" in str(e.value.code) and "missing" in str(e.value.code)

    # W&B's own run folders are not read: the message names the run folder around it
    job = make_job(tmp_path / "logged", 0, ["seed=1"], {"val/AP": 0.5})
    (job / "wandb" / "offline-run-20260101_000000-abc123").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        report_main([str(job / "wandb" / "offline-run-20260101_000000-abc123")])
    msg = str(e.value.code)
    assert "W&B run folder" in msg and f"('{job}'" in msg and "\n" not in msg

    # a corrupt overrides.yaml stops the report naming the file; a corrupt metrics.json is listed with its job
    broken = tmp_path / "broken_sweep"
    make_job(broken, 0, ["seed=1"], {"val/AP": 0.5})
    make_job(broken, 1, ["seed=2"], {"val/AP": 0.7})
    (broken / "1" / "metrics.json").write_text('{"val/AP": 0.7')
    report = sweep_report([broken], cost=False)
    assert [r.stats["val/AP"][0] for r in report.rows] == [0.5]
    ((bad_job),) = report.problems
    assert bad_job.name == "broken_sweep/1" and bad_job.status == "unfinished"
    assert bad_job.error.startswith(f"file '{broken / '1' / 'metrics.json'}': not valid JSON (Expecting") and \
        bad_job.error.endswith("expected the run's metrics JSON") and "\n" not in bad_job.error
    (broken / "0" / ".hydra" / "overrides.yaml").write_text("- seed=1\n- [unclosed\n")
    with pytest.raises(SystemExit) as e:
        report_main([str(broken)])
    msg = str(e.value.code)
    assert f"'{broken / '0' / '.hydra' / 'overrides.yaml'}'" in msg and "YAML list" in msg and "\n" not in msg


class FakeRun:
    """The public attributes of ``wandb.apis.public.Run`` the report reads (``summary``: a mapping)."""

    def __init__(self, run_id, state, overrides, summary):
        self.id, self.name, self.state = run_id, f"{run_id}-name", state
        self.config = {"hydra_overrides": overrides, "model": {"backbone": "hrnet_w18_small"}}
        self.summary = summary
        self.url = f"https://wandb.ai/me/bapose/runs/{run_id}"


class UnreachableSummary:
    """The summary of a lazily listed run whose fetch fails (the server cannot be reached)."""

    def keys(self):
        raise ConnectionError("HTTPSConnectionPool(host='api.wandb.ai'): Max retries exceeded")


class FakeApi:
    """``wandb.Api``'s shape: ``runs(path, filters=...)`` and ``sweep(path).runs``."""

    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None, **kwargs):
        self.calls.append(("runs", path, filters))
        return iter([r for r in self._runs if filters and filters.get("group") == "train-sweep1"])

    def sweep(self, path):
        self.calls.append(("sweep", path, None))
        return type("Sweep", (), {"runs": list(self._runs)})()


def test_report_of_a_wandb_group_and_sweep_through_the_public_api_shape(tmp_path):
    runs = [FakeRun(f"r{i}", "finished", [f"data.input_size={s}", f"seed={seed}"],
                    {"val/AP": 0.1 * i, "val/AP50": 0.5, "_runtime": 100 + i})
            for i, (s, seed) in enumerate([(64, 1), (64, 2), (96, 1), (96, 2)])]
    runs.append(FakeRun("r9", "crashed", ["data.input_size=128", "seed=1"], {}))
    runs.append(FakeRun("r10", "running", ["data.input_size=128", "seed=2"], {}))
    api = FakeApi(runs)
    report = sweep_report(["wandb:me/bapose/groups/train-sweep1"], api=api, cost=False)
    assert api.calls == [("runs", "me/bapose", {"group": "train-sweep1"})]
    assert report.keys == ["data.input_size"] and [r.values["data.input_size"] for r in report.rows] == [96, 64]
    assert report.rows[0].stats["val/AP"][0] == pytest.approx(0.25) and report.rows[0].n == 2
    assert report.rows[0].train_seconds == pytest.approx(102.5)
    assert [(j.status, j.error) for j in report.problems] == [("failed", "W&B state 'crashed'"),
                                                             ("unfinished", "W&B state 'running'")]
    sweep = sweep_report(["https://wandb.ai/me/bapose/sweeps/abc123"], api=api, cost=False)
    assert api.calls[-1] == ("sweep", "me/bapose/abc123", None) and len(sweep.rows) == 2
    with pytest.raises(ConfigError, match="expected wandb:ENTITY/PROJECT"):
        sweep_report(["wandb:only-entity"], api=api)
    # a listed run is lazy: a network error while its summary is fetched is the query's one line; overrides that do
    # not parse name the run, not a failed query
    with pytest.raises(DataError, match=r"W&B query failed \(ConnectionError: HTTPSConnectionPool"):
        sweep_report(["wandb:me/bapose/groups/train-sweep1"],
                     api=FakeApi([FakeRun("r1", "finished", [], UnreachableSummary())]))
    with pytest.raises(DataError, match=r"^W&B run r1 \(config 'hydra_overrides'\): cannot parse"):
        sweep_report(["wandb:me/bapose/groups/train-sweep1"], api=FakeApi([FakeRun("r1", "finished", ["[x"], {})]))


def test_a_sweep_through_the_wandb_api_gives_the_table_of_its_run_folders(tmp_path):
    """What a bapose-train sweep puts on the W&B server (the overrides in the run config, the state, a summary of the
    logged ``val/*`` / ``test/*`` numbers and W&B's own keys) reads as the table of its run folders. The summary has
    no ``train_seconds`` (only metrics.json does): the time column is W&B's ``_runtime``, which counts from
    ``wandb.init`` to the end of the run, not train()'s clock."""
    sweep = tmp_path / "sweep"
    fixture_sweep(sweep)
    runs, runtimes = [], {}
    for job in sorted(sweep.iterdir(), key=lambda p: int(p.name)):
        status = json.loads((job / "status.json").read_text())
        state = {"finished": "finished", "failed": "failed"}.get(status["status"], "running")
        run_id = f"r{job.name}"
        runtimes[run_id] = 5.0 + 2 * int(job.name)
        summary = {"_runtime": runtimes[run_id], "_step": 3, "_timestamp": 1767225600.0 + int(job.name)}
        if state == "running":
            summary["val/AP"] = 0.9  # logged at a validation during fit: not a result yet
        if state == "finished":  # the last logged val/* and test/* (the final evaluation), epoch and step
            metrics = json.loads((job / "metrics.json").read_text())
            summary.update({k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))})
            summary.update({"epoch": 0, "trainer/global_step": metrics["global_step"], "train/loss_epoch": 1.25,
                            "final/AP_table": {"_type": "table-file", "path": "media/table/final/AP_table_7.json"}})
        runs.append(FakeRun(run_id, state, status["overrides"], summary))
    online = sweep_report(["wandb:me/bapose/groups/train-sweep1"], api=FakeApi(runs), cost=False)
    local = sweep_report([sweep], cost=False)
    # every column but the time: the swept values, AP ± std, n
    assert [row[:-1] for row in table_rows(online.markdown())] == [row[:-1] for row in table_rows(local.markdown())]
    assert len(online.rows) == 4 and table_rows(online.markdown())[0][-1] == "train time"
    for row in online.rows:
        ids = [j.source.rsplit("/", 1)[-1] for j in row.jobs]
        assert len(ids) == 2 and row.train_seconds == pytest.approx(statistics.fmean(runtimes[i] for i in ids))
    assert [(j.status, j.error) for j in online.problems] == [
        ("failed", "W&B state 'failed'"), ("unfinished", "W&B state 'running'")]


# --------------------------------------------------------------------------------------------- a real sweep
TINY = ["debug=limit", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "data.input_size=64", "data.synthetic.num_train=4", "data.synthetic.num_val=2", "data.synthetic.image_size=64",
        "data.batch_size=2", "data.val_batch_size=2", "run_test=false", "draw_images=1"]
SWEPT = ["model.decoder.dilations=" + ",".join(DILS), "module.loss.offset_weight=" + ",".join(map(str, WEIGHTS)),
         "seed=1,2"]


def _sweep_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "WANDB_DATA_DIR": str(tmp_path / "wandb-data")}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _without_wandb(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` in which ``import wandb`` fails as if wandb were not installed (a stand-in package first on the path)."""
    shim = tmp_path / "no-wandb"
    (shim / "wandb").mkdir(parents=True, exist_ok=True)
    (shim / "wandb" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'wandb' (hidden by test_report)\", name='wandb')\n")
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(shim), env.get("PYTHONPATH", "")) if p)}


def _report_cli(sweep: Path, out: Path, env: dict[str, str]) -> str:
    """``bapose-report SWEEP -o OUT`` in a subprocess; returns report.md."""
    exe = Path(sys.executable).parent / "bapose-report"
    done = subprocess.run([str(exe), str(sweep), "-o", str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return (out / "report.md").read_text()


@pytest.mark.slow
def test_real_2x2_sweep_with_two_seeds_and_a_failed_job(tmp_path):
    exe = Path(sys.executable).parent
    sweep = tmp_path / "sweep"
    env = _sweep_env(tmp_path)
    cmd = [str(exe / "bapose-train"), "-m", *TINY, "logger=[csv,wandb]", *SWEPT, f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list(sweep.glob("[0-7]/wandb/offline-run-*"))) == 8  # every job logged to W&B (offline)
    # a ninth job of the same sweep that fails (a bad input size): a real run folder with status.json "failed"
    bad = [str(exe / "bapose-train"), *TINY, "logger=[csv,wandb]", "model.decoder.dilations=[1,6,12,18]",
           "module.loss.offset_weight=0.03", "seed=1", "data.input_size=63", f"hydra.run.dir={sweep / '8'}"]
    failed = subprocess.run(bad, env=env, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    error = json.loads((sweep / "8" / "status.json").read_text())["error"]
    assert "input_size" in error

    md = _report_cli(sweep, tmp_path / "report", env)
    cells = table_rows(md)
    # the varying keys as columns and nothing else (seed folded; debug, data sizes etc. are the same in every job)
    assert cells[0] == ["", "model.decoder.dilations", "module.loss.offset_weight", "AP", "AP50", "AP75", "AR", "n",
                        "params (M)", "GFLOPs", "train time"]
    assert len(cells) == 5 and sum(row[0] == "★" for row in cells[1:]) == 1
    jobs = {}
    for num in range(8):
        overrides = yaml.safe_load((sweep / str(num) / ".hydra" / "overrides.yaml").read_text())
        o = dict(x.split("=", 1) for x in overrides)
        metrics = json.loads((sweep / str(num) / "metrics.json").read_text())
        jobs.setdefault((o["model.decoder.dilations"], o["module.loss.offset_weight"]), []).append(metrics)
    assert all(len(v) == 2 for v in jobs.values()) and len(jobs) == 4
    for row in cells[1:]:
        dil = row[1].replace(" ", "")
        ms = jobs[(dil, row[2])]
        for col, key in ((3, "val/AP"), (6, "val/AR")):
            vals = [m[key] for m in ms]
            cell = row[col].strip("*")
            assert cell == f"{statistics.fmean(vals):.3f} ± {statistics.stdev(vals):.3f}"
        assert row[7] == "2" and float(row[8]) > 1.0 and float(row[9]) > 0.0  # params (M), GFLOPs of the W18s
    failures = md.split("## Failed or unfinished jobs (1)")[1]
    assert "| `sweep/8` | failed |" in failures and error.replace("|", "\\|") in failures
    assert "data.input_size=63" in failures
    csv_text = (tmp_path / "report" / "report.csv").read_text()

    # issue 22: the same report, byte for byte, with W&B absent. W&B absent is wandb not importable in the report's
    # process (a machine without wandb): that is the real check. Deleting the runs' wandb/ folders as well shows only
    # that the report never reads W&B's local files (the same bytes without them)
    with pytest.raises(DataError, match="W&B run folder.*'.*sweep/0'"):  # W&B's own files are not a source
        sweep_report(sorted(sweep.glob("0/wandb/offline-run-*")), cost=False)
    for folder in sweep.glob("*/wandb"):
        shutil.rmtree(folder)
    no_wandb = _without_wandb(tmp_path, env)
    hidden = subprocess.run([sys.executable, "-c", "import wandb"], env=no_wandb, capture_output=True, text=True)
    assert hidden.returncode != 0 and "hidden by test_report" in hidden.stderr
    assert _report_cli(sweep, tmp_path / "report_no_wandb", no_wandb) == md
    assert (tmp_path / "report_no_wandb" / "report.csv").read_text() == csv_text

    # the same sweep run with logger=[csv]: the same table (the train times aside: wall time is not repeatable)
    sweep_csv = tmp_path / "sweep_csv"
    proc = subprocess.run([str(exe / "bapose-train"), "-m", *TINY, "logger=[csv]", *SWEPT,
                           f"hydra.sweep.dir={sweep_csv}"], env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not list(sweep_csv.glob("*/wandb"))
    csv_cells = table_rows(sweep_report([sweep_csv]).markdown())
    assert [row[:-1] for row in csv_cells] == [row[:-1] for row in cells]
