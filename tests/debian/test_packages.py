"""The one lookup for Debian's programs and data: overrides, the cache, a failure that says what to run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helixrun_trainer.evaluation.text import wordnet

from tests.debian import ITEMS, MAKE_TARGET, Missing, find, require


@pytest.mark.parametrize("name", sorted(ITEMS))
def test_an_empty_cache_fails_the_test_naming_the_make_target(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HELIXRUN_CACHE", str(tmp_path))
    monkeypatch.delenv(ITEMS[name].env, raising=False)
    with pytest.raises(Missing, match=f"run `{MAKE_TARGET}` \\(or set {ITEMS[name].env}\\)"):
        find(name)
    with pytest.raises(pytest.fail.Exception, match=MAKE_TARGET):  # a failure, never a skip
        require(name)


def test_the_environment_overrides_the_cache(tmp_path, monkeypatch):
    own = tmp_path / "promtool"
    own.touch()
    monkeypatch.setenv("HELIXRUN_PROMTOOL", str(own))
    assert find("promtool") == own
    monkeypatch.setenv("HELIXRUN_PROMTOOL", str(tmp_path / "nowhere"))
    with pytest.raises(Missing, match="HELIXRUN_PROMTOOL=.*nowhere does not exist"):
        find("promtool")


@pytest.mark.parametrize("program", ["prometheus", "promtool"])
def test_the_fetched_prometheus_is_the_pinned_version(program, monkeypatch):
    monkeypatch.delenv(ITEMS[program].env, raising=False)
    out = subprocess.run([require(program), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    upstream = ITEMS[program].package.version.split("+")[0]
    assert f"{program}, version {upstream}" in out.stdout + out.stderr


def test_the_trainer_reads_the_fetched_wordnet_in_place(monkeypatch):
    monkeypatch.delenv("HELIXRUN_WORDNET_DIR", raising=False)
    folder = Path(require("wordnet"))
    assert (folder / "lexnames").is_file(), "the fetch writes the table NLTK needs, so nothing is copied at run time"
    monkeypatch.setenv("HELIXRUN_WORDNET_DIR", str(folder))
    wordnet.cache_clear()
    try:
        reader = wordnet()
        assert Path(str(reader.root)) == folder.resolve()
        assert reader.get_version() == "3.0"
    finally:
        wordnet.cache_clear()
