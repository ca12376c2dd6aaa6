"""Public checkpoint suites: the registry, the audit from hub metadata alone, and a Gram pass
streamed by HTTP range reads, all through the real ``huggingface_hub`` client pointed at a hub on
127.0.0.1 (trajlib.paper.standin_hub) serving a stand-in suite with injected defects."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import trajlib
from trajlib import suites
from trajlib.audit import audit
from trajlib.manifest import TrajectoryError
from trajlib.paper.standin_hub import REPO, serve_standin, standin_suite
from trajlib.remote import RangeClient

pytest.importorskip("huggingface_hub")
from huggingface_hub import HfApi  # noqa: E402



@pytest.fixture
def standin(monkeypatch):
    """The stand-in suite registered (adding a suite is one entry)."""
    suite = standin_suite()
    monkeypatch.setitem(suites.SUITES, "standin", suite)
    return suite


@pytest.fixture
def hub(standin):
    """The stand-in suite on a local hub, with one defect of each kind (DEFECTS): step 8
    byte-identical to step 300, step 16 missing, step 32 one shard of two, step 5 off the schedule,
    step 100 a corrupt blob; step 4 sharded correctly, step 64 a pickled pytorch_model.bin, and a
    main branch."""
    fake, walk = serve_standin()
    with fake:
        yield fake, walk


def test_the_registry_knows_each_suite_s_naming_and_schedule():
    p = suites.SUITES["pythia"]
    assert len(p.expected_steps()) == 154 and p.expected_steps()[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert p.parse("step143000") == (143000, 143000 * 2_097_152) and p.parse("main") is None
    assert suites.SUITES["olmo"].parse("step20000-tokens84B") == (20000, 84 * 10**9)
    assert suites.SUITES["olmo2"].parse("stage1-step11931-tokens100B") == (11931, 10**11)
    assert suites.SUITES["olmo2"].parse("stage2-ingredient3-step11931-tokens100B") is None  # another run
    assert len(suites.SUITES["crfm-gpt2"].expected_steps()) == 609
    assert suites.suite_of("EleutherAI/pythia-70m").name == "pythia"
    with pytest.raises(ValueError, match="not a registered suite"):
        suites.resolve("no-such-suite")


def test_the_audit_catches_every_injected_defect_and_flags_nothing_else(hub):
    fake, _ = hub
    result = audit("standin", api=HfApi(endpoint=fake.url))
    flagged = {(r.step, r.status) for r in result.flagged().itertuples()}
    assert flagged == {(8, "identical"), (16, "missing"), (32, "shard mismatch"), (5, "unscheduled")}
    t = result.table.set_index("step")
    assert t.loc[8, "detail"] == "same weight blobs as step300" and "1 of 2 shards missing" in t.loc[32, "detail"]
    assert t.loc[100, "status"] == "ok"  # a corrupt blob cannot be seen in metadata: the pass catches it
    assert result.coverage(REPO) == pytest.approx(8 / 11)  # 0 1 2 4 64 100 200 300 of the schedule
    assert all(method == "GET" and path.startswith("/api/") for method, path, _ in fake.requests), \
        "the audit read something other than metadata"


def test_a_streamed_pass_reads_exactly_the_bytes_its_blocks_need_and_matches_the_dense_gram(hub):
    fake, walk = hub
    client = RangeClient()
    traj = trajlib.open_trajectory(f"hub:{REPO}", steps=[0, 1, 2, 4, 200, 300], endpoint=fake.url,
                                   client=client, verify=False)
    assert list(traj.steps) == [0, 1, 2, 4, 200, 300] and traj.kinds["layers.0.rotary.inv_freq"] == "buffer"
    assert traj.meta["audit"]["tokens"]["200"] == 200 * 1024
    headers = client.bytes_read
    G = trajlib.gram(traj, cache=False, progress=False, block_bytes=4096)["all"]
    data = sum(v.nbytes for n, v in walk[0].items() if n != "layers.0.rotary.inv_freq")
    assert client.bytes_read - headers == len(traj.steps) * data  # every parameter byte once, nothing else
    X = np.stack([np.concatenate([walk[s][n].astype(np.float64).ravel() for n in traj.parameters])
                  for s in traj.steps])
    R = np.vstack([X[:1], np.diff(X, axis=0)])
    assert np.max(np.abs(G - R @ R.T)) <= 1e-12 * np.abs(R @ R.T).max()
    assert not any(p.endswith(".bin") for _, p, _ in fake.requests)


def test_every_usable_branch_through_the_audit_drops_the_defects_and_names_the_corrupt_blob(hub, tmp_path, caplog):
    fake, _ = hub
    with caplog.at_level(logging.WARNING, logger="trajlib.hub"):
        traj = trajlib.open_trajectory(f"hub:{REPO}", endpoint=fake.url, cache_dir=tmp_path / "cache")
    assert list(traj.steps) == [0, 1, 2, 4, 5, 64, 200, 300]  # 8, 16, 32 by the audit; 100 by its sha256
    dropped = traj.meta["audit"]["dropped"]
    assert set(dropped) == {"step8", "16", "step32", "step100"}
    assert "step100/model.safetensors" in dropped["step100"] and "corrupt blob" in dropped["step100"]
    assert traj.meta["audit"]["coverage"] == pytest.approx(7 / 11)
    assert "corrupt blob" in caplog.text
    stats = trajlib.gram(traj, cache=False, progress=False)
    assert np.all(np.isfinite(stats["all"])) and list(stats.steps) == list(traj.steps)


def test_a_connection_dropped_mid_range_is_retried_and_a_server_that_keeps_failing_is_named(hub):
    fake, walk = hub
    ref = trajlib.gram(trajlib.open_trajectory(f"hub:{REPO}", steps=[0, 300], endpoint=fake.url, verify=False),
                       cache=False, progress=False, block_bytes=4096)["all"]
    client = RangeClient(backoff=0.01)
    traj = trajlib.open_trajectory(f"hub:{REPO}", steps=[0, 300], endpoint=fake.url, client=client, verify=False)
    fake.drop_ranges, fake.busy = 3, 1  # during the pass's block reads
    G = trajlib.gram(traj, cache=False, progress=False, block_bytes=4096)["all"]
    assert client.retried >= 3 and np.array_equal(G, ref)
    traj = trajlib.open_trajectory(f"hub:{REPO}", steps=[0, 300], endpoint=fake.url,
                                   client=RangeClient(retries=1, backoff=0.01), verify=False)
    fake.drop_ranges = 50
    with pytest.raises(TrajectoryError, match=r"tiny-neox@step0/model\.safetensors: bytes .* failed after 2 tries"):
        trajlib.gram(traj, cache=False, progress=False)


def test_asking_for_a_step_the_audit_rejected_says_why(hub):
    fake, _ = hub
    with pytest.raises(TrajectoryError, match=r"steps \[8, 16\] are not usable: step8: identical .*; no branch: missing"):
        trajlib.open_trajectory(f"hub:{REPO}", steps=[0, 8, 16], endpoint=fake.url)


def test_the_audit_command_prints_the_flagged_branches_and_exits_1(hub, capsys):
    from trajlib.cli import main

    fake, _ = hub
    assert main(["audit", "standin", "--endpoint", fake.url]) == 1
    out = capsys.readouterr().out
    assert "shard mismatch" in out and "identical" in out and "coverage 72.7% of the schedule" in out
    assert main(["suites"]) == 0 and "pythia" in capsys.readouterr().out


def test_the_paper_preset_s_pythia_suite_goes_through_the_registry(tmp_path, monkeypatch):
    """Pages 04/05 at the paper preset (no hub cache given): each Pythia size is audited, its
    flagged branches left out by name, the rest streamed; here a stand-in pythia-14m whose step2
    repeats step1000 and which lacks steps 8 to 512."""
    from safetensors.numpy import save

    from trajlib.paper import pythia
    from trajlib.paper.standin_hub import FakeHub, _walk

    monkeypatch.setenv("TRAJLIB_CACHE", str(tmp_path / "grams"))
    walk = _walk(1, [0, 1, 2, 4, 1000])
    files = {f"step{s}": {"model.safetensors": save(t)} for s, t in walk.items()}
    files["step2"] = dict(files["step1000"])
    with FakeHub() as fake:
        fake.repos[pythia.repo_id("14m")] = files
        stats, dropped = pythia.suite(["14m"], revision_every=143, endpoint=fake.url, device="cpu")
    assert list(stats[("14m", 0)].steps) == [0, 1, 4, 1000]
    assert dropped["14m"] == ["step2"] + [f"step{2 ** k}" for k in range(3, 10)]


def test_the_audit_checks_each_shard_set_on_its_own_and_finds_sharded_twins():
    """A branch shipping sharded safetensors and sharded .bin is fine; two sharded branches with
    the same LFS blobs are identical (an index JSON has no LFS hash and does not hide them)."""
    from trajlib.audit import FileMeta

    def sharded(tag):
        return [FileMeta("model.safetensors.index.json", 100), FileMeta("pytorch_model.bin.index.json", 100),
                *[FileMeta(f"model-0000{i}-of-00002.safetensors", 10, f"st{tag}{i}") for i in (1, 2)],
                *[FileMeta(f"pytorch_model-0000{i}-of-00002.bin", 10, f"bin{tag}{i}") for i in (1, 2)]]

    listing = {"x/y": {"step0": sharded("a"), "step1": sharded("b"), "step2": sharded("b"),
                       "step3": sharded("c")[:-1]}}
    t = audit("x/y", listings=listing).table.set_index("step")
    assert t.loc[0, "status"] == "ok" and t.loc[2, "status"] == "ok"
    assert t.loc[1, "status"] == "identical" and t.loc[1, "detail"] == "same weight blobs as step2"
    assert t.loc[3, "status"] == "shard mismatch" and "pytorch_model-00002-of-00002.bin" in t.loc[3, "detail"]


def test_verify_false_reaches_the_hub_and_skips_the_sha256_while_the_default_checks_it(hub):
    """open_trajectory("hub:…", verify=False) streams without hashing (the corrupt step100 then
    opens); left out, every file is hashed and step100 is dropped, named."""
    fake, _ = hub
    client = RangeClient()
    traj = trajlib.open_trajectory(f"hub:{REPO}", steps=[0, 100], endpoint=fake.url, client=client, verify=False)
    assert list(traj.steps) == [0, 100] and client.bytes_verified == 0 and traj.meta["streamed"]["verified"] is False
    checked = trajlib.open_trajectory(f"hub:{REPO}", steps=[0, 100], endpoint=fake.url)
    assert list(checked.steps) == [0] and "corrupt blob" in checked.meta["audit"]["dropped"]["step100"]


def test_the_cli_names_an_unknown_repository_and_a_missing_hub_extra(hub, capsys, monkeypatch):
    import builtins

    from trajlib.cli import EXIT_MISSING, EXIT_USAGE, main

    fake, _ = hub
    assert main(["audit", "nobody/none", "--endpoint", fake.url]) == EXIT_MISSING
    err = capsys.readouterr().err
    assert err.startswith("trajlib audit: ") and "nobody/none" in err and "Traceback" not in err
    real = builtins.__import__

    def no_hub(name, *args, **kwargs):
        if name.startswith("huggingface_hub"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    assert main(["audit", "standin", "--endpoint", fake.url]) == EXIT_USAGE
    assert "pip install 'trajlib[hub]'" in capsys.readouterr().err
    with pytest.raises(ImportError, match=r"pip install 'trajlib\[hub\]'"):
        trajlib.open_trajectory(f"hub:{REPO}", endpoint=fake.url)


def test_hallmarks_of_a_suite_carry_its_tokens_and_coverage(hub):
    """Hallmarks of a public suite sit on its own axes: per checkpoint the step and the tokens the
    suite states for it, and per table the fraction of the schedule the pass covered."""
    from trajlib import hallmarks as H

    fake, _ = hub
    traj = trajlib.open_trajectory(f"hub:{REPO}", steps=[0, 1, 2, 4, 200, 300], endpoint=fake.url, verify=False)
    stats = trajlib.gram(traj, cache=False, progress=False)
    pc = H.per_checkpoint(stats)
    assert pc["step"].tolist() == [0, 1, 2, 4, 200, 300]
    assert pc["tokens"].tolist() == [1024.0 * s for s in (0, 1, 2, 4, 200, 300)]
    table = H.hallmark_table(stats)
    assert table.loc["all", "coverage"] == traj.meta["audit"]["coverage"] == 1.0  # every step asked for was usable
    plain = H.hallmark_table(stats.__class__(stats.steps, stats.epochs, stats.grams, stats.n_params, stats.labels, {}))
    assert "coverage" not in plain.columns and "tokens" not in H.per_checkpoint(
        stats.__class__(stats.steps, stats.epochs, stats.grams, stats.n_params, stats.labels, {})).columns
