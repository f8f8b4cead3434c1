"""Hub ids as Hugging Face tools treat them, and ``--push-to-hub``, against local stand-ins (never a real hub).

The conftest sets ``HF_HUB_OFFLINE=1`` for every test. The tests that need a hub replace
``huggingface_hub.snapshot_download`` (a download that copies a local folder into a cache layout) and
``huggingface_hub.HfApi`` (a recorder that copies what is uploaded into a local folder), and only then unset
``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from click.testing import CliRunner
from huggingface_hub import errors as hf_errors

from surgery import hub
from surgery.cli import main
from surgery.errors import HubError, ModelFolderError, OptionError
from surgery.modelio import locate, resolve_model_dir
from surgery.patchfile import read_manifest
from tests.conftest import write_calibration

COMMIT_BASE = "1" * 40
COMMIT_SFT = "2" * 40


def _hub_error(cls: type[Exception], message: str) -> Exception:
    """An exception of huggingface_hub's class ``cls`` without its constructor (whose arguments differ across
    huggingface_hub 0.x and 1.x: an HTTP response object)."""
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


def _run(*args: str):
    return CliRunner().invoke(main, ["-q", "--threads", "1", *args], catch_exceptions=False)


# ---------------------------------------------------------------- ids


@pytest.mark.parametrize(
    ("text", "repo", "revision"),
    [
        ("acme/tiny", "acme/tiny", None),
        ("acme/tiny@main", "acme/tiny", "main"),
        ("meta-llama/Llama-3.1-8B@" + "a" * 40, "meta-llama/Llama-3.1-8B", "a" * 40),
        ("Org_1/model.v2@refs/pr/3", "Org_1/model.v2", "refs/pr/3"),
    ],
)
def test_hub_ids_parse_as_hugging_face_spells_them(text, repo, revision):
    assert hub.parse_hub_id(text) == hub.HubRef(repo, revision)
    assert str(hub.parse_hub_id(text)) == text


@pytest.mark.parametrize(
    "text",
    ["tiny", "a/b/c", "acme/tiny@", "acme/ti ny", "acme/../x", "acme/x@../../etc", "-acme/x", "acme/x@a b", "/abs/x"],
)
def test_what_is_not_a_hub_id_is_not_taken_for_one(text):
    assert hub.parse_hub_id(text) is None


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("yes", True), ("ON", True), ("0", False), ("", False)])
def test_offline_reads_the_environment_as_huggingface_hub_does(monkeypatch, value, expected):
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub.offline() is expected


def test_a_missing_path_that_is_not_an_id_names_both_readings(tmp_path):
    with pytest.raises(ModelFolderError, match="neither a local folder nor a hub id"):
        resolve_model_dir(str(tmp_path / "a" / "b"))


# ---------------------------------------------------------------- resolution


def _snapshot(cache: Path, repo: str, commit: str, src: Path) -> Path:
    """``src`` placed where huggingface_hub keeps ``repo`` at ``commit`` (refs/main pointing at it)."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    shutil.copytree(src, snap)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snap


class FakeDownload:
    """``snapshot_download`` with a local 'hub': ``repo -> (commit, folder)``; records every call."""

    def __init__(self, cache: Path, repos: dict[str, tuple[str, Path]]):
        self.cache, self.repos, self.calls = cache, repos, []
        self.real = huggingface_hub.snapshot_download

    def __call__(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append((repo_id, kwargs))
        if kwargs.get("local_files_only"):
            return self.real(repo_id, **kwargs)  # the real cache lookup, on the test's cache
        if repo_id not in self.repos:
            raise _hub_error(hf_errors.RepositoryNotFoundError, "404 Client Error: Repository Not Found")
        commit, src = self.repos[repo_id]
        if kwargs.get("revision") not in (None, "main", commit):
            raise _hub_error(hf_errors.RevisionNotFoundError, "404 Client Error: Revision Not Found")
        return str(_snapshot(self.cache, repo_id, commit, src))


@pytest.fixture()
def fake_hub(tiny_pair, tmp_path, monkeypatch):
    """A local stand-in for the hub holding the tiny pair as acme/base and acme/sft; downloads allowed."""
    base, sft, _ = tiny_pair
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    fake = FakeDownload(cache, {"acme/base": (COMMIT_BASE, base), "acme/sft": (COMMIT_SFT, sft)})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return fake


def test_an_id_not_in_the_cache_is_downloaded_when_online(fake_hub):
    path = resolve_model_dir("acme/sft")
    assert path == fake_hub.cache / "models--acme--sft" / "snapshots" / COMMIT_SFT
    assert (path / "config.json").is_file()
    downloads = [kw for _, kw in fake_hub.calls if not kw.get("local_files_only")]
    assert len(downloads) == 1
    patterns = downloads[0]["allow_patterns"]
    assert "*.safetensors" in patterns and "*.json" in patterns and not any(p.endswith(".bin") for p in patterns)
    # the second time it comes from the cache: no download
    assert resolve_model_dir("acme/sft@" + COMMIT_SFT) == path
    assert len([kw for _, kw in fake_hub.calls if not kw.get("local_files_only")]) == 1


def test_download_failures_are_one_sentence(fake_hub):
    with pytest.raises(HubError, match="no such repository"):
        resolve_model_dir("acme/absent")
    with pytest.raises(HubError, match="no such revision"):
        resolve_model_dir("acme/sft@v9")


def test_offline_and_missing_is_one_sentence_and_downloads_nothing(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="HF_HUB_OFFLINE=1 forbids downloading"):
        resolve_model_dir("acme/sft")
    assert all(kw.get("local_files_only") for _, kw in fake_hub.calls)
    res = _run("check", "acme/sft", "--base", "acme/base")
    assert res.exit_code == 2 and res.output.count("error:") == 1 and "Traceback" not in res.output
    assert "not in the local cache" in res.output and "HF_HUB_OFFLINE" in res.output


def test_offline_an_id_in_the_cache_still_resolves(tiny_pair, tmp_path, monkeypatch):
    base, _, _ = tiny_pair
    snap = _snapshot(tmp_path / "cache", "acme/base", COMMIT_BASE, base)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert resolve_model_dir("acme/base") == snap
    assert resolve_model_dir("acme/base@main") == snap


def test_the_cli_no_longer_forces_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    res = _run("inspect", "--help")
    assert res.exit_code == 0 and "HF_HUB_OFFLINE" not in os.environ


# ---------------------------------------------------------------- revisions, cards and pushes end to end


class FakeApi:
    """``HfApi`` stand-in: repositories are folders under ``root``; every call is recorded."""

    root: Path
    calls: list[tuple[str, dict[str, Any]]]

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        FakeApi.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        (FakeApi.root / repo_id).mkdir(parents=True, exist_ok=True)
        return f"https://hub.invalid/{repo_id}"

    def upload_folder(self, *, repo_id: str, folder_path: str, **kwargs: Any) -> None:
        FakeApi.calls.append(("upload_folder", {"repo_id": repo_id, "folder_path": folder_path, **kwargs}))
        shutil.copytree(folder_path, FakeApi.root / repo_id, dirs_exist_ok=True)

    def create_commit(self, repo_id: str, *, operations: list[Any], **kwargs: Any) -> None:
        FakeApi.calls.append(("create_commit", {"repo_id": repo_id, **kwargs}))
        for op in operations:
            shutil.copyfile(op.path_or_fileobj, FakeApi.root / repo_id / op.path_in_repo)


@pytest.fixture()
def fake_api(tmp_path, monkeypatch):
    FakeApi.root, FakeApi.calls = tmp_path / "remote", []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


def test_hub_ids_end_to_end_revisions_card_and_push(fake_hub, fake_api, tmp_path):
    """patch and apply on hub ids: commits in the manifest, a card naming both ids, outputs on the stand-in hub."""
    hon, task = write_calibration(tmp_path / "calib")
    patch = tmp_path / "p.safetensors"
    args = ["patch", "acme/sft", "--base", "acme/base", "--honesty-data", str(hon), "--task-data", str(task)]
    res = _run(*args, "--max-samples", "8", "-o", str(patch), "--push-to-hub", "me/patch")
    assert res.exit_code == 0, res.output
    manifest = read_manifest(patch)
    assert manifest.revisions == {
        "base": {"kind": "hub", "repo": "acme/base", "commit": COMMIT_BASE},
        "sft": {"kind": "hub", "repo": "acme/sft", "commit": COMMIT_SFT},
    }
    assert sorted(p.name for p in (fake_api.root / "me" / "patch").iterdir()) == sorted(
        [patch.name, patch.name + ".report.json", patch.name + ".command.txt", patch.name + ".config.yaml"]
    )
    assert (fake_api.root / "me" / "patch" / patch.name).read_bytes() == patch.read_bytes()

    result = tmp_path / "eval.json"
    per = {"selfaware": {"kind": "honesty", "n": 40, "honesty_f1": 0.5, "refusal_unanswerable": 0.4}}
    result.write_text(json.dumps({"model": "repaired", "items": [], "metrics": {"per_benchmark": per}}))
    out = tmp_path / "repaired"
    res = _run(
        "apply", "acme/sft", str(patch), "-o", str(out), "--eval-results", str(result), "--push-to-hub", "me/fixed"
    )
    assert res.exit_code == 0, res.output
    card = (out / "README.md").read_text()
    assert card.startswith('---\nbase_model:\n- "acme/sft"\n- "acme/base"\nbase_model_relation: merge\n')
    assert f"hub acme/sft@{COMMIT_SFT}" in card and f"hub acme/base@{COMMIT_BASE}" in card
    assert 'name: "me/fixed"' in card and "| selfaware | honesty | 40 | 50.0 | 40.0 |" in card
    assert f"surgery apply acme/sft {patch}" in card
    pushed = fake_api.root / "me" / "fixed"
    assert sorted(p.name for p in pushed.iterdir()) == sorted(p.name for p in out.iterdir())
    assert (pushed / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert [name for name, _ in fake_api.calls] == ["create_repo", "create_commit", "create_repo", "upload_folder"]
    assert all(kw.get("private") is False for name, kw in fake_api.calls if name == "create_repo")


def test_push_is_checked_before_any_work(tiny_pair, tmp_path, fake_api):
    base, sft, _ = tiny_pair
    out = tmp_path / "out"
    res = _run("apply", str(sft), str(tmp_path / "absent.safetensors"), "-o", str(out), "--push-to-hub", "me/x")
    assert res.exit_code == 2 and "HF_HUB_OFFLINE=1" in res.output and not out.exists()
    with pytest.raises(OptionError, match="hub repository id"):
        hub.check_can_push("not a repo")
    with pytest.raises(OptionError, match="hub repository id"):
        hub.check_can_push("me/x@main")
    assert fake_api.calls == []


def test_a_failed_push_is_one_sentence(tmp_path, monkeypatch):
    class Refusing(FakeApi):
        def create_repo(self, repo_id: str, **kwargs: Any) -> str:
            raise _hub_error(hf_errors.HfHubHTTPError, "401 Client Error: Unauthorized\nmore lines")

    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    with pytest.raises(
        HubError, match=r"Could not push to the hub repository 'me/x': 401 Client Error: Unauthorized\.$"
    ):
        hub.push("me/x", tmp_path, commit_message="m")


def test_a_local_folder_records_a_fingerprint_that_moves_with_its_content(tiny_pair, tmp_path):
    from surgery.revision import folder_fingerprint, model_revision, source_revisions

    base, sft, _ = tiny_pair
    a = model_revision(base)
    assert a["kind"] == "folder" and a["files"] >= 3 and a == folder_fingerprint(base)
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    (copy / "README.md").write_text("notes do not change the model")
    assert model_revision(copy) == a  # path, times and notes do not matter
    assert model_revision(sft)["sha256"] != a["sha256"]
    assert source_revisions({"base": locate(str(base))}) == {"base": a}


@pytest.mark.onnx
def test_deploy_pushes_the_onnx_folder_with_its_card(tiny_pair, calib, tmp_path, fake_api, monkeypatch):
    pytest.importorskip("optimum.onnxruntime", reason="needs the [onnx] extra")
    from surgery.hcnr.pipeline import make_patch

    base, sft, _ = tiny_pair
    patch = tmp_path / "p.safetensors"
    make_patch(str(sft), str(base), *calib, patch)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    out = tmp_path / "deployed"
    res = _run("deploy", str(sft), str(patch), "-o", str(out), "--greedy-tokens", "2", "--push-to-hub", "me/onnx")
    assert res.exit_code == 0, res.output
    pushed = fake_api.root / "me" / "onnx"
    assert sorted(p.name for p in pushed.iterdir()) == sorted(p.name for p in out.iterdir())
    assert {"README.md", "model.onnx", "export.json", "verify.json"} <= {p.name for p in pushed.iterdir()}
    assert 'name: "me/onnx"' not in (pushed / "README.md").read_text()  # no --eval-results: no model-index
    assert "# me/onnx" in (pushed / "README.md").read_text()
    assert [name for name, _ in fake_api.calls] == ["create_repo", "upload_folder"]
