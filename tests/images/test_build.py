"""tests/images/build.py's readers: the apt mirror debootstrap uses, the real node's containerd socket."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.images.build import ImageBuildError, debian_mirror, real_node_containerd
from tests.images.dockerfile import bind_mounts, pip_installs

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""


def apt_dir(tmp_path, sources: dict[str, str]):
    (tmp_path / "sources.list.d").mkdir()
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("sources, mirror", [
    ({"sources.list.d/debian.sources": DEB822}, "http://deb.debian.org/debian"),
    ({"sources.list": "deb http://mirror.example/debian bookworm main\n"}, "http://mirror.example/debian"),
    ({"sources.list": "deb [arch=amd64] http://m.example/d bookworm main contrib\n"}, "http://m.example/d"),
    ({"sources.list": "deb http://old.example/debian bullseye main\n",
      "sources.list.d/extra.list": "deb-src http://src.example bookworm main\ndeb http://new.example bookworm main\n"},
     "http://new.example"),
    ({"sources.list.d/security.sources": DEB822.split("\n\n")[1], "sources.list.d/z.sources": DEB822},
     "http://deb.debian.org/debian"),
])
def test_debian_mirror_is_the_machines_bookworm_source(tmp_path, sources, mirror):
    assert debian_mirror(apt_dir(tmp_path, sources)) == mirror


def test_no_bookworm_source_is_an_error_naming_the_folder(tmp_path):
    with pytest.raises(ImageBuildError, match=str(tmp_path)):
        debian_mirror(apt_dir(tmp_path, {"sources.list": "deb http://old.example/debian bullseye main\n"}))


uris = st.from_regex(r"https?://[a-z]{1,8}\.example(/[a-z]{1,6}){0,2}", fullmatch=True)
other_suites = st.lists(st.sampled_from(["bullseye", "trixie", "sid", "bookworm-updates", "bookworm-security"]),
                        min_size=1, max_size=3)


@settings(deadline=None)  # it writes files: slow on a loaded machine
@given(before=st.lists(st.tuples(uris, other_suites), max_size=3), mirror=uris, extra=other_suites)
def test_debian_mirror_skips_every_stanza_without_bookworm(tmp_path_factory, before, mirror, extra):
    stanzas = [f"Types: deb\nURIs: {uri}\nSuites: {' '.join(suites)}\nComponents: main\n" for uri, suites in before]
    stanzas.append("Types: deb-src\nURIs: http://src.example\nSuites: bookworm\n")
    stanzas.append(f"Types: deb\nURIs: {mirror} http://second.example\nSuites: {' '.join(extra + ['bookworm'])}\n")
    folder = apt_dir(tmp_path_factory.mktemp("apt"), {"sources.list.d/debian.sources": "\n".join(stanzas)})
    assert debian_mirror(folder) == mirror


@pytest.mark.parametrize("state, address", [
    (None, None),
    ({"apiserver": "https://127.0.0.1:6443"}, None),
    ({"real_node": None}, None),
    ({"real_node": {"name": "local-0", "containerd_address": "/run/hx/containerd.sock"}}, "/run/hx/containerd.sock"),
])
def test_real_node_containerd_comes_from_the_cluster_state(tmp_path, state, address):
    if state is not None:
        (tmp_path / "state.json").write_text(json.dumps(state))
    assert real_node_containerd(tmp_path) == address


def test_pip_installs_and_bind_mounts_read_the_image_runs():
    run = ("--mount=type=bind,from=pip,source=/opt/pip,target=/opt/pip "
           "--mount=type=bind,source=dockerfiles/requirements-build.txt,target=/src/req.txt "
           "--mount=type=tmpfs,target=/src/x "
           "python3 -m venv --without-pip /opt/v && /opt/pip/bin/pip --python /opt/v/bin/python install "
           "--no-cache-dir -r /src/req.txt '/src/trainer[qlora]' ; pip download x")
    assert pip_installs(run) == [["--no-cache-dir", "-r", "/src/req.txt", "/src/trainer[qlora]"]]
    assert bind_mounts(run) == {"/src/req.txt": "dockerfiles/requirements-build.txt"}
