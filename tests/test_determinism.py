"""Same seeds, same numbers: training and a page's results are reproducible bit for bit on one
machine, in one process and across processes; the results JSON says what decides them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trajlib.manifest import read_manifest
from trajlib.paper.ledger import claim, write_results
from trajlib.paper.provenance import provenance
from trajlib.paper.runs import run_classification

TRAIN = dict(name="det", model="small_cnn", model_kwargs={"width": 4}, dataset="digits", epochs=2,
             batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4)


def _fingerprint(runs_dir, seed: int) -> tuple:
    run = run_classification(runs_dir, seed=seed, **TRAIN)
    hashes = tuple(c["content_sha256"] for c in read_manifest(run.run_dir)["checkpoints"])
    return hashes, tuple(run.history["test_accuracy"])


def test_a_seed_trains_the_same_bytes_in_one_process_and_in_another(tmp_path):
    first, again = _fingerprint(tmp_path / "a", 3), _fingerprint(tmp_path / "b", 3)
    assert first == again and len(first[0]) == TRAIN["epochs"] + 1
    assert _fingerprint(tmp_path / "c", 4)[0] != first[0]  # the seed does decide the bytes
    code = ("import json, sys; sys.path.insert(0, %r); from test_determinism import _fingerprint; "
            "print(json.dumps(_fingerprint(%r, 3)))" % (str(__import__('pathlib').Path(__file__).parent),
                                                         str(tmp_path / "d")))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    hashes, accuracy = json.loads(out.strip().splitlines()[-1])
    assert (tuple(hashes), tuple(accuracy)) == first


def test_results_json_records_what_decides_the_numbers_and_is_byte_stable(tmp_path):
    params = {"preset": "ci", "seeds": 2, "lr": 0.1}
    rows = [claim("x rises", paper="p", source="ours", effects=[0.1, 0.2], direction=+1)]
    a = write_results("00-x", title="t", claims=rows, values={"v": 1.5}, parameters=params, results_dir=tmp_path / "a")
    b = write_results("00-x", title="t", claims=rows, values={"v": 1.5}, parameters=params, results_dir=tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    prov = json.loads(a.read_text())["provenance"]
    assert prov["seeds"] == {"seeds": 2}
    assert set(prov["versions"]) >= {"python", "torch", "numpy", "trajlib"}
    assert prov["threads"]["torch_intra_op"] >= 1 and prov["cpu"]["torch_capability"]
    import hashlib

    from pydoc_data.topics import topics
    text = "\n\n".join(topics[k] for k in sorted(topics)).encode()
    assert prov["data"]["pydoc_topics"]["sha256"] == hashlib.sha256(text).hexdigest()
    assert len(prov["data"]["digits"]["sha256"]) == 64


@pytest.mark.parametrize("name", ["seed", "deep_seeds"])
def test_provenance_names_each_seed_parameter(name):
    assert provenance({name: 5, "lr": 1})["seeds"] == {name: 5}
