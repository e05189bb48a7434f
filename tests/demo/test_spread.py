"""The recipe's seed spread (`training.demo.spread`): its table, its byte comparison of two runs, and that a finished
seed is read rather than run again. The whole runs are `make demo-model-spread` (hours); these check the bookkeeping."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from llava_local.errors import UsageError
from training.demo.recipe_config import RECIPE_YAML as RECIPE
from training.demo.spread import _config, compare, digests, main, markdown, read_record, record_run, run_one, summarize


def _report(teacher: dict[str, float], heldout: dict[str, float], seconds: float) -> dict:
    def res(per_type: dict[str, float]) -> dict:
        return {"per_type": per_type, "overall": sum(per_type.values()) / len(per_type)}

    return {"stages": {"eval": {"bundle": res(teacher), "bundle/heldout": res(heldout)}}, "total_seconds": seconds}


def test_summary_has_each_seed_the_mean_and_the_range():
    reports = {0: _report({"colour": 0.9, "count": 0.6}, {"colour": 0.8, "count": 0.5}, 100.0),
               1: _report({"colour": 0.7, "count": 0.8}, {"colour": 0.6, "count": 0.7}, 120.0)}
    s = summarize(reports)
    colour = s["splits"]["teacher"]["colour"]
    assert colour == {"by_seed": {0: 90.0, 1: 70.0}, "mean": 80.0, "min": 70.0, "max": 90.0}
    assert s["splits"]["heldout"]["overall"]["mean"] == 65.0 and s["seconds"] == {0: 100.0, 1: 120.0}
    table = markdown(s)
    assert "| colour | 90.0 | 70.0 | 80.0 | 70.0–90.0 |" in table and "heldout wordings:" in table
    assert "gated" not in table  # no gated stage in these runs


def test_summary_says_where_each_gated_stage_stopped():
    reports = {s: _report({"colour": 0.9}, {"colour": 0.8}, 100.0) for s in (0, 1)}
    reports[0]["stages"]["listing"] = {"gate": {"steps": 2000, "history": [{"step": 2000, "score": 0.94}]}}
    reports[1]["stages"]["listing"] = {"gate": {"steps": 5000, "history": [
        {"step": 2000, "score": 0.48}, {"step": 5000, "score": 0.912}]}}
    s = summarize(reports)
    assert s["gates"] == {0: {"listing": {"steps": 2000, "score": 94.0}},
                          1: {"listing": {"steps": 5000, "score": 91.2}}}
    assert ("gated stages (steps, last probe): seed 0: listing 2,000 steps (94.0%); "
            "seed 1: listing 5,000 steps (91.2%)") in markdown(s)


def _run_dir(root, weights: bytes, manifest: str, init_from: str = "stage1"):
    (root / "bundle").mkdir(parents=True)
    (root / "final").mkdir()
    (root / "bundle" / "llm-q8_0.gguf").write_bytes(weights)
    (root / "bundle" / "manifest.json").write_text(manifest)
    (root / "final" / "model.safetensors").write_bytes(weights * 2)
    (root / "final" / "llava_local.json").write_text(json.dumps({"init_from": f"{root.as_posix()}/{init_from}"}))
    return root


def test_rerun_comparison_sees_a_changed_weight_but_not_timings_or_the_work_dirs_name(tmp_path):
    a = _run_dir(tmp_path / "a", b"\x01\x02", '{"timings": 1}')
    same_but_timings = _run_dir(tmp_path / "b", b"\x01\x02", '{"timings": 2}')
    other = _run_dir(tmp_path / "c", b"\x01\x03", '{"timings": 1}')
    other_init = _run_dir(tmp_path / "d", b"\x01\x02", '{"timings": 1}', init_from="stage2")
    ok = compare(a, same_but_timings)
    assert ok["identical"] and ok["files"] == 4 and ok["differ"] == ["bundle/manifest.json"]
    bad = compare(a, other)
    assert not bad["identical"] and bad["differ"] == ["bundle/llm-q8_0.gguf", "final/model.safetensors"]
    assert compare(a, other_init)["differ"] == ["final/llava_local.json"]  # only the run's own name is set aside


def test_a_finished_seed_is_read_not_run_unless_it_ran_another_recipe(tmp_path):
    done = _report({"colour": 1.0}, {"colour": 1.0}, 5.0) | {"config": asdict(_config(7, RECIPE))}
    (tmp_path / "recipe-report.json").write_text(json.dumps(done))
    # no data, no training: it would fail on an empty work dir otherwise
    assert run_one(7, tmp_path) == json.loads(json.dumps(done))
    # the same work dir after the recipe changed (or asked for another seed): an error, not the old run's numbers
    with pytest.raises(UsageError, match="another recipe config"):
        run_one(8, tmp_path)


def test_a_finished_run_leaves_a_record_that_stands_in_for_its_work_dir_once_it_is_gone(tmp_path):
    run, records = _run_dir(tmp_path / "clip-seed-7", b"\x05", "{}"), tmp_path / "records"
    done = _report({"colour": 1.0}, {"colour": 0.5}, 5.0) | {"config": asdict(_config(7, RECIPE))}
    (run / "recipe-report.json").write_text(json.dumps(done))
    assert run_one(7, run, records=records)["total_seconds"] == 5.0
    rec = json.loads((records / "clip-seed-7.json").read_text())
    assert rec["clip_seed"] == 7 and rec["digests"] == digests(run) and "final/model.safetensors" in rec["digests"]
    before = digests(run)
    for f in sorted(run.rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    assert run_one(7, run, records=records)["stages"]["eval"]["bundle/heldout"]["overall"] == 0.5  # read, not run
    assert compare(rec["digests"], _run_dir(tmp_path / "again", b"\x05", "{}"))["differ"] == []
    assert compare(before, _run_dir(tmp_path / "other", b"\x06", "{}"))["differ"] == [
        "bundle/llm-q8_0.gguf", "final/model.safetensors"]


def test_make_demo_models_run_is_recorded_as_its_clip_seeds_run_with_the_shipped_bundle(tmp_path, capsys):
    """`make demo-model` writes its bundle outside the work dir; its record names the files as a spread run's do, so
    a rerun of that seed in the spread is compared with the shipped files."""
    run, shipped, records = _run_dir(tmp_path / "demo", b"\x07", "{}"), tmp_path / "tiny", tmp_path / "records"
    (run / "bundle").rename(shipped)
    seed = _config(0, RECIPE).clip.seed

    def report(**changed) -> str:
        config = asdict(_config(seed, RECIPE)) | changed
        return json.dumps(_report({"colour": 1.0}, {"colour": 1.0}, 5.0) | {"config": config})

    (run / "recipe-report.json").write_text(report())
    assert main(["--record", str(run), "--bundle", str(shipped), "--records", str(records)]) == 0
    rec = read_record(records, seed, RECIPE)
    assert rec is not None and rec["digests"] == digests(_run_dir(tmp_path / "spread-run", b"\x07", "{}"))
    # a run of another config, an unfinished run, no bundle: a one-line error and nothing recorded
    (run / "recipe-report.json").write_text(report(scenes=1))
    assert main(["--record", str(run), "--bundle", str(shipped), "--records", str(tmp_path / "r2")]) == 2
    assert "another recipe config" in capsys.readouterr().err
    (run / "recipe-report.json").write_text("{}")
    assert main(["--record", str(run), "--bundle", str(shipped), "--records", str(tmp_path / "r2")]) == 2
    assert "no finished recipe run" in capsys.readouterr().err
    (run / "recipe-report.json").write_text(report())
    with pytest.raises(UsageError, match="not a bundle"):
        record_run(tmp_path / "r2", run, tmp_path / "nowhere", RECIPE)
    assert not (tmp_path / "r2").exists()


def test_a_record_of_another_recipe_config_is_not_read(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    cfg = asdict(_config(3, RECIPE))
    for seed, config in ((3, cfg), (4, cfg), (5, cfg | {"scenes": cfg["scenes"] + 1})):
        rec = {"clip_seed": seed, "report": {"config": config}, "digests": {}}
        (records / f"clip-seed-{seed}.json").write_text(json.dumps(rec))
    assert read_record(records, 3, RECIPE) is not None
    assert read_record(records, 4, RECIPE) is None  # seed 4's run was made with clip seed 3
    assert read_record(records, 5, RECIPE) is None and read_record(records, 6, RECIPE) is None


def test_a_rerun_is_compared_with_the_record_when_the_first_run_is_gone(tmp_path, monkeypatch):
    """The recipe is replaced by one that writes a run's files (weights `b"\\x09"` for any seed), so this checks the
    spread's bookkeeping: seed 2 ran on another machine and left only its record."""
    import training.demo.spread as spread

    class FakeRecipe:
        def __init__(self, cfg, work, out, overrides):
            self.cfg, self.work = cfg, work

        def run(self):
            _run_dir(self.work, b"\x09", "{}")
            report = _report({"colour": 1.0}, {"colour": 1.0}, 1.0) | {"config": asdict(self.cfg)}
            (self.work / "recipe-report.json").write_text(json.dumps(report))
            return json.loads(json.dumps(report))

    monkeypatch.setattr(spread, "Recipe", FakeRecipe)
    records = tmp_path / "records"
    spread.run_spread([2], tmp_path / "elsewhere", config=RECIPE, records=records)
    assert (records / "clip-seed-2.json").is_file()
    s = spread.run_spread([2], tmp_path / "here", rerun=2, config=RECIPE, records=records)
    assert not (tmp_path / "here" / "clip-seed-2").exists()  # seed 2 was read from its record, not run again
    assert s["rerun"] | {"files": 0} == {"seed": 2, "against": "record", "files": 0, "identical": True,
                                         "differ": []}
    rec = json.loads((records / "clip-seed-2.json").read_text())
    rec["digests"]["final/model.safetensors"] = "0" * 64
    (records / "clip-seed-2.json").write_text(json.dumps(rec))
    s = spread.run_spread([2], tmp_path / "there", rerun=2, config=RECIPE, records=records)
    assert not s["rerun"]["identical"] and "final/model.safetensors" in s["rerun"]["differ"]


def test_the_committed_records_are_of_the_current_recipe():
    """docs/demo-model-runs holds the spread's runs (docs/demo-model.md quotes them); when the recipe changes, they
    are no longer its runs and must move to the history, not sit there unread."""
    records = Path(__file__).resolve().parents[2] / "docs" / "demo-model-runs"
    for path in sorted(records.glob("clip-seed-*.json")):
        seed = int(path.stem.removeprefix("clip-seed-"))
        rec = read_record(records, seed, RECIPE)
        assert rec is not None, f"{path.name} was made with another recipe config"
        assert rec["clip_seed"] == seed and "bundle/llm-q8_0.gguf" in rec["digests"]
        assert {"bundle", "bundle/heldout"} <= rec["report"]["stages"]["eval"].keys()
