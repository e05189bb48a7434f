"""`--model PATH|NAME` resolution and the default-model chain."""

from __future__ import annotations

import shutil

import pytest

from llava_local import models
from llava_local.errors import ModelNotFound
from llava_local.models import list_models, resolve_model


def test_path_and_name(rt_bundle, _rt_home):
    assert resolve_model(str(rt_bundle)) == rt_bundle
    assert resolve_model(rt_bundle) == rt_bundle
    shutil.copytree(rt_bundle, _rt_home / "models" / "mine")
    assert resolve_model("mine") == _rt_home / "models" / "mine"
    assert list_models() == ["mine"]
    with pytest.raises(ModelNotFound, match="installed: mine"):
        resolve_model("other")


def test_default_chain(rt_bundle, _rt_home, monkeypatch, tmp_path):
    monkeypatch.setattr(models, "demo_candidates", lambda: [tmp_path / "nodemo"])
    with pytest.raises(ModelNotFound, match="LLAVA_LOCAL_MODEL"):
        resolve_model(None)
    demo = tmp_path / "demo"
    shutil.copytree(rt_bundle, demo)
    monkeypatch.setattr(models, "demo_candidates", lambda: [tmp_path / "nodemo", demo])
    assert resolve_model(None) == demo
    shutil.copytree(rt_bundle, _rt_home / "models" / "default")
    assert resolve_model(None) == _rt_home / "models" / "default"
    monkeypatch.setenv("LLAVA_LOCAL_MODEL", str(rt_bundle))
    assert resolve_model(None) == rt_bundle


def test_paths_that_are_not_bundles(tmp_path):
    f = tmp_path / "file.gguf"
    f.write_bytes(b"x")
    with pytest.raises(ModelNotFound, match="is a file"):
        resolve_model(str(f))
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
