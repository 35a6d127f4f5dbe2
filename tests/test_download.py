"""mtml.data.download: fetch against a misbehaving loopback HTTP server, and extract."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import zipfile
from pathlib import Path

import pytest

from mtml.data import download
from mtml.data.download import extract, fetch, part_path
from mtml.errors import UserError

from http_fixture import serve

SMALL1 = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot" / "images_background_small1.zip"
SMALL1_MD5 = "e704a628b5459e08445c13499850abc4"
NAME = "archive.zip"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(params=["synthetic", pytest.param("small1", marks=pytest.mark.shared)])
def payload(request) -> bytes:
    """The bytes served: random ones, and the real Omniglot small1 zip when ../shared has it."""
    if request.param == "synthetic":
        return bytes(range(256)) * 700 + b"tail"  # ~180 kB, several read chunks
    if not SMALL1.is_file():
        pytest.skip(f"{SMALL1} is absent (a user's clone has no ../shared)")
    data = SMALL1.read_bytes()
    assert _md5(data) == SMALL1_MD5
    return data


@pytest.fixture
def server(payload):
    with serve({NAME: payload}) as srv:
        yield srv


def _fetch(srv, dest: Path, data: bytes, **kw) -> Path:
    kw.setdefault("md5", _md5(data))
    kw.setdefault("retries", 3)
    kw.setdefault("backoff", 0)
    kw.setdefault("timeout", 10)
    return fetch(srv.url(NAME), dest, **kw)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_and_md5(server, payload, tmp_path):
    dest = tmp_path / "raw" / NAME
    assert _fetch(server, dest, payload, size=len(payload)) == dest
    assert dest.read_bytes() == payload
    assert not part_path(dest).exists()
    assert [s for _, _, s in server.requests] == [200]


def test_second_call_does_no_network(server, payload, tmp_path):
    dest = tmp_path / NAME
    _fetch(server, dest, payload)
    n = len(server.requests)
    _fetch(server, dest, payload)
    # Even an unreachable URL is fine: a verified dest is returned before any network access.
    fetch(f"http://127.0.0.1:{_closed_port()}/{NAME}", dest, _md5(payload), retries=0)
    assert len(server.requests) == n


def test_checksum_mismatch(server, payload, tmp_path):
    dest = tmp_path / NAME
    with pytest.raises(UserError) as err:
        _fetch(server, dest, payload, md5="0" * 32, local_key="datasets.x.options.local")
    msg = str(err.value)
    assert NAME in msg and "0" * 32 in msg and _md5(payload) in msg
    assert "datasets.x.options.local" in msg and "Rerun" in msg
    assert not dest.exists() and not part_path(dest).exists()
    assert len(server.requests) == 1  # a fresh download that fails its checksum is not retried


def test_truncated_always_leaves_no_file(server, payload, tmp_path):
    dest = tmp_path / NAME
    server.truncate_after = len(payload) // 10  # every attempt (resuming) gets a tenth more
    with pytest.raises(UserError) as err:
        _fetch(server, dest, payload, retries=2)
    msg = str(err.value)
    assert "after 3 attempts" in msg and "short read" in msg
    assert str(part_path(dest)) in msg and "resumes" in msg
    assert not dest.exists()
    assert part_path(dest).stat().st_size < len(payload)
    assert len(server.requests) == 3


def test_truncated_once_resumes(server, payload, tmp_path):
    dest = tmp_path / NAME
    cut = len(payload) // 3
    server.truncate_after, server.truncate_times = cut, 1
    _fetch(server, dest, payload)
    assert dest.read_bytes() == payload
    assert server.range_requests == [f"bytes={cut}-"]
    assert [s for _, _, s in server.requests] == [200, 206]


def test_part_from_an_earlier_run_is_resumed(server, payload, tmp_path):
    dest = tmp_path / NAME
    part_path(dest).write_bytes(payload[:1000])
    _fetch(server, dest, payload)
    assert dest.read_bytes() == payload
    assert server.range_requests == ["bytes=1000-"]


def test_stale_part_restarts_from_zero(server, payload, tmp_path):
    dest = tmp_path / NAME
    part_path(dest).write_bytes(b"x" * 1000)  # left by another version of the file
    _fetch(server, dest, payload)
    assert dest.read_bytes() == payload
    assert [r for _, r, _ in server.requests] == ["bytes=1000-", None]


def test_server_ignoring_range_restarts(server, payload, tmp_path):
    dest = tmp_path / NAME
    server.truncate_after, server.truncate_times = len(payload) // 2, 1
    server.ignore_range = True
    _fetch(server, dest, payload)
    assert dest.read_bytes() == payload
    assert len(server.range_requests) == 1
    assert [s for _, _, s in server.requests] == [200, 200]


def test_503_is_retried(server, payload, tmp_path):
    dest = tmp_path / NAME
    server.fail_times = 2
    _fetch(server, dest, payload)
    assert dest.read_bytes() == payload
    assert [s for _, _, s in server.requests] == [503, 503, 200]


def test_503_forever_fails(server, payload, tmp_path):
    dest = tmp_path / NAME
    server.fail_times = 99
    with pytest.raises(UserError, match="HTTP 503"):
        _fetch(server, dest, payload, retries=1)
    assert not dest.exists()
    assert len(server.requests) == 2


@pytest.mark.parametrize("ctype", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_page_is_refused(server, payload, tmp_path, ctype):
    dest = tmp_path / NAME
    server.html, server.html_content_type = True, ctype
    with pytest.raises(UserError) as err:
        _fetch(server, dest, payload, local_key="datasets.x.options.local")
    msg = str(err.value)
    assert "HTML page instead of the archive" in msg and "Google-Drive" in msg
    assert str(dest) in msg and "datasets.x.options.local" in msg
    assert not dest.exists() and not part_path(dest).exists()
    assert len(server.requests) == 1


def test_404_fails_at_once(server, payload, tmp_path):
    dest = tmp_path / "other.zip"
    with pytest.raises(UserError, match="HTTP 404") as err:
        fetch(server.url("other.zip"), dest, None, backoff=0)
    assert str(dest) in str(err.value)
    assert len(server.requests) == 1 and not dest.exists()


def test_wrong_size_on_server(server, payload, tmp_path):
    dest = tmp_path / NAME
    with pytest.raises(UserError, match=f"should be {len(payload) + 1} bytes"):
        _fetch(server, dest, payload, size=len(payload) + 1)
    assert not dest.exists() and not part_path(dest).exists()


def test_dest_with_wrong_md5_is_replaced(server, payload, tmp_path):
    dest = tmp_path / NAME
    dest.write_bytes(b"old version")
    _fetch(server, dest, payload)
    assert dest.read_bytes() == payload


def test_no_md5_checks_length(server, payload, tmp_path):
    dest = tmp_path / NAME
    server.truncate_after, server.truncate_times = 100, 1
    fetch(server.url(NAME), dest, None, backoff=0)
    assert dest.read_bytes() == payload


def test_rich_progress_on_a_terminal(server, payload, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "interactive", lambda: True)
    server.truncate_after, server.truncate_times = 1000, 1
    _fetch(server, tmp_path / NAME, payload)
    assert (tmp_path / NAME).read_bytes() == payload


def test_unreachable_server(tmp_path):
    dest = tmp_path / NAME
    url = f"http://127.0.0.1:{_closed_port()}/{NAME}"
    with pytest.raises(UserError) as err:
        fetch(url, dest, "0" * 32, retries=1, backoff=0, timeout=5, local_key="datasets.x.options.local")
    msg = str(err.value)
    assert url in msg and "after 2 attempts" in msg and "datasets.x.options.local" in msg
    assert not dest.exists() and not part_path(dest).exists()


# -- extract ------------------------------------------------------------------------------

FILES = {"top/a.txt": b"alpha", "top/sub/b.bin": bytes(range(256))}


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tgz", "tar"])
def test_extract(tmp_path, kind):
    archive = tmp_path / f"a.{kind}"
    _zip(archive, FILES) if kind == "zip" else _tar(archive, FILES, "w" if kind == "tar" else "w:gz")
    out = extract(archive, tmp_path / "out")
    assert _tree(out) == FILES
    # A second extraction replaces the folder as a whole.
    (out / "stray").write_text("x")
    extract(archive, out)
    assert _tree(out) == FILES


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "top/../../evil.txt"])
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_extract_refuses_path_traversal(tmp_path, kind, member):
    archive = tmp_path / "x" / f"bad.{kind}"
    archive.parent.mkdir()
    files = {"ok.txt": b"ok", member: b"evil"}
    _zip(archive, files) if kind == "zip" else _tar(archive, files)
    with pytest.raises(UserError, match=r"bad\.(zip|tar\.gz)"):
        extract(archive, tmp_path / "x" / "out")
    assert not (tmp_path / "x" / "out").exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "x" / "evil.txt").exists()
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [archive.name]  # no temp left


def test_extract_refuses_tar_symlink_escape(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("top/link")
        info.type, info.linkname = tarfile.SYMTYPE, "../../etc"
        tf.addfile(info)
    with pytest.raises(UserError, match="link.tar"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_extract_corrupt_archive(tmp_path, kind):
    good = tmp_path / f"good.{kind}"
    big = {"top/a.bin": bytes(range(256)) * 400}
    _zip(good, big) if kind == "zip" else _tar(good, big)
    bad = tmp_path / f"bad.{kind}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match=rf"bad\.{kind}.*corrupt"):
        extract(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extract_unknown_format(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="junk.bin is neither a zip nor a tar"):
        extract(junk, tmp_path / "out")
    with pytest.raises(UserError, match="does not exist"):
        extract(tmp_path / "missing.zip", tmp_path / "out")
