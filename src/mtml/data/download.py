"""Robust downloads and archive extraction for the dataset sources.

`fetch(url, dest, md5)` downloads with urllib only:

- it writes `<dest>.part` and renames it onto `dest` only after the size and md5 checked out,
  so a file at `dest` is always complete;
- an existing `.part` is resumed with an HTTP Range request (a server that ignores Range and
  answers 200 is read again from byte zero);
- connection errors, timeouts, HTTP 5xx/408/429 and short reads are retried with exponential
  backoff; other HTTP errors (404, 403) fail at once;
- an HTML page where an archive was expected (a Google-Drive confirmation page, a login or
  error page) is refused with a message saying where to put the file by hand;
- a `dest` that already has the right md5 returns at once, without any network access.

`extract(archive, dest_dir)` unpacks zip and tar(.gz/.bz2/.xz) archives into a temporary
directory next to `dest_dir` and renames it into place, refusing members that would land
outside `dest_dir`.

Every failure a user can fix is a `UserError` naming the file, the URL and what to do.
"""

from __future__ import annotations

import http.client
import os
import re
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from mtml.errors import UserError
from mtml.utils import atomic_path, file_md5, interactive

DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 60.0
# Seconds before the first retry; doubled on each further retry, at most MAX_BACKOFF.
DEFAULT_BACKOFF = 2.0
MAX_BACKOFF = 60.0
CHUNK = 1 << 16
USER_AGENT = "mtml-dataset-fetch/0.1 (+urllib)"
# HTTP statuses worth retrying: request timeout, rate limit and every 5xx.
TRANSIENT_STATUS = {408, 425, 429}


class _Transient(Exception):
    """A failure that another attempt may not have (network, 5xx, short read)."""


class _HtmlPage(Exception):
    """The server sent an HTML page instead of the file."""


class _Fatal(Exception):
    """A failure another attempt will not fix (HTTP 404, a wrong size on the server)."""


def part_path(dest: str | os.PathLike) -> Path:
    """Where `fetch` keeps an unfinished download of `dest`."""
    dest = Path(dest)
    return dest.with_suffix(dest.suffix + ".part")


def _fix_hint(url: str, dest: Path, local_key: str | None) -> str:
    hint = f"download {url} by hand and put it at {dest}"
    if local_key:
        hint += f", or set params key '{local_key}' to a local copy"
    return hint


def _looks_html(head: bytes) -> bool:
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<?xml"):
        return b"<html" in head[:1024]
    return head.startswith((b"<!doctype", b"<html", b"<head"))


def _html_error(url: str, dest: Path, local_key: str | None) -> UserError:
    return UserError(
        f"{url} sent an HTML page instead of the archive {dest.name} (for example a Google-Drive "
        f"virus-scan confirmation page, a login page or an error page); nothing was saved. "
        f"Open the URL in a browser, download the file by hand and put it at {dest}"
        + (f", or set params key '{local_key}' to its path" if local_key else "")
    )


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """`bytes START-END/TOTAL` -> (START, TOTAL); TOTAL may be `*` (unknown)."""
    m = re.match(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)", value or "")
    if not m:
        return None, None
    return int(m.group(1)), (None if m.group(3) == "*" else int(m.group(3)))


class _Progress:
    """A rich bar on a terminal; one plain line per event otherwise."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None
        self.task = None
        if interactive():
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TimeRemainingColumn())

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=None)
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def start(self, done: int, total: int | None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)
        else:
            what = f" from byte {done}" if done else ""
            size = f" ({total} bytes)" if total else ""
            print(f"{self.label}: downloading{what}{size}", file=sys.stderr, flush=True)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=n)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(f"{self.label}: {text}")
        else:
            print(f"{self.label}: {text}", file=sys.stderr, flush=True)


def _is_complete(path: Path, md5: str | None, size: int | None) -> bool:
    if not path.is_file():
        return False
    if size is not None and path.stat().st_size != size:
        return False
    return md5 is None or file_md5(path) == md5


def _transfer(url: str, part: Path, size: int | None, timeout: float, bar: _Progress) -> bool:
    """One attempt: append the rest of `url` to `part`. Returns whether it resumed.

    Raises _Transient for failures worth another attempt, _HtmlPage for an HTML answer and
    _Fatal for the rest.
    """
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size and offset:
        return True  # a previous run got every byte; verification decides
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            return True  # the .part already reaches the end; verification decides
        if err.code in TRANSIENT_STATUS or err.code >= 500:
            raise _Transient(f"HTTP {err.code} {err.reason}") from None
        raise _Fatal(f"{url} answered HTTP {err.code} {err.reason}") from None
    except ValueError as err:  # not a URL at all
        raise _Fatal(f"cannot download {url!r}: {err}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _Transient(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from None

    with resp:
        status = getattr(resp, "status", None) or 200
        if "html" in (resp.headers.get("Content-Type") or "").lower():
            raise _HtmlPage
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        start = 0
        total = length
        if status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start is None or start > offset:
                part.unlink(missing_ok=True)
                raise _Transient(f"the server resumed at an unexpected offset "
                                 f"({resp.headers.get('Content-Range')!r}); restarting")
            if total is None and length is not None:
                total = start + length
        resumed = start > 0
        if size is not None and total is not None and total != size:
            if start == 0 and _looks_html(resp.read(512)):
                raise _HtmlPage
            part.unlink(missing_ok=True)
            raise _Fatal(f"{url} is {total} bytes but {part.with_suffix('').name} should be {size} "
                         f"bytes: the server has a different file (check the URL or mirror)")
        bar.start(start, total)
        received = start
        head = b""
        # A server that ignored Range (status 200) sends everything again: start from zero.
        with open(part, "r+b" if part.exists() else "wb") as f:
            f.seek(start)
            f.truncate()
            try:
                while chunk := resp.read(CHUNK):
                    if start == 0 and len(head) < 512:
                        head += chunk[: 512 - len(head)]
                        if len(head) >= 64 and _looks_html(head):
                            raise _HtmlPage
                    f.write(chunk)
                    received += len(chunk)
                    bar.advance(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                raise _Transient(f"connection lost after {received} bytes ({type(err).__name__}: {err})") from None
        if start == 0 and _looks_html(head):
            raise _HtmlPage
        if total is not None and received < total:
            raise _Transient(f"short read: the connection closed after {received} of {total} bytes")
        if size is not None and received < size:
            raise _Transient(f"short read: got {received} of {size} bytes")
        return resumed


def fetch(
    url: str,
    dest: str | os.PathLike,
    md5: str | None,
    size: int | None = None,
    retries: int = DEFAULT_RETRIES,
    timeout: float = DEFAULT_TIMEOUT,
    backoff: float | None = None,
    *,
    local_key: str | None = None,
) -> Path:
    """Download `url` to `dest`, verified; return `dest`.

    `md5`/`size` (when given) are checked before `dest` appears. `retries` is the number of
    further attempts after the first; `backoff` the seconds before the first retry (doubled
    each time; default DEFAULT_BACKOFF). `local_key` is the params key a user can set instead
    of downloading (named in error messages).
    """
    dest = Path(dest)
    md5 = md5.lower() if md5 else None
    if _is_complete(dest, md5, size):
        return dest
    backoff = DEFAULT_BACKOFF if backoff is None else backoff
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    last_error = "no attempt made"
    with _Progress(dest.name) as bar:
        for attempt in range(retries + 1):
            if attempt:
                wait = min(backoff * 2 ** (attempt - 1), MAX_BACKOFF)
                bar.note(f"{last_error}; retry {attempt}/{retries} in {wait:.0f}s")
                time.sleep(wait)
            try:
                resumed = _transfer(url, part, size, timeout, bar)
            except _Transient as err:
                last_error = str(err)
                continue
            except _HtmlPage:
                part.unlink(missing_ok=True)
                raise _html_error(url, dest, local_key) from None
            except _Fatal as err:
                raise UserError(f"{err}; {_fix_hint(url, dest, local_key)}") from None
            got_size = part.stat().st_size
            if size is not None and got_size != size:
                part.unlink()
                if resumed and attempt < retries:
                    last_error = f"resumed download has {got_size} bytes, expected {size}; restarting"
                    continue
                raise UserError(
                    f"downloaded {dest.name} from {url} has {got_size} bytes, expected {size}; "
                    f"the partial file was deleted. Rerun to try again, or {_fix_hint(url, dest, local_key)}"
                )
            actual = file_md5(part) if md5 else None
            if md5 and actual != md5:
                with open(part, "rb") as f:
                    html = _looks_html(f.read(512))
                part.unlink()
                if html:
                    raise _html_error(url, dest, local_key)
                if resumed and attempt < retries:
                    # The old .part may belong to another version of the file: start over.
                    last_error = "checksum mismatch after resuming; restarting from zero"
                    continue
                raise UserError(
                    f"checksum mismatch for {dest.name} downloaded from {url}: expected md5 {md5}, "
                    f"got {actual}; the download was deleted. Rerun to try again (a mirror may "
                    f"serve another version), or {_fix_hint(url, dest, local_key)}"
                )
            os.replace(part, dest)
            bar.note(f"saved {dest} ({got_size} bytes)")
            return dest
    kept = (f"the partial download {part} ({part.stat().st_size} bytes) was kept and the next run "
            f"resumes from it" if part.exists() else "nothing was kept")
    raise UserError(
        f"could not download {dest.name} from {url} after {retries + 1} attempts "
        f"(last error: {last_error}); {kept}. Check the network and rerun, or "
        f"{_fix_hint(url, dest, local_key)}"
    )


# -- archives -----------------------------------------------------------------------------

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def unsafe_member(name: str) -> bool:
    """An archive member that would land outside the folder it is extracted to."""
    name = name.replace("\\", "/")
    p = PurePosixPath(name)
    return p.is_absolute() or ".." in p.parts or bool(re.match(r"^[A-Za-z]:", name))


def _extract_zip(archive: Path, tmp: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if unsafe_member(info.filename):
                raise UserError(f"archive {archive} has a member outside its folder "
                                f"({info.filename!r}); refusing to extract it")
        zf.extractall(tmp)


def _extract_tar(archive: Path, tmp: Path) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            link_escapes = (m.issym() and unsafe_member(str(PurePosixPath(m.name).parent / m.linkname))) or (
                m.islnk() and unsafe_member(m.linkname))
            if unsafe_member(m.name) or link_escapes:
                raise UserError(f"archive {archive} has a member outside its folder "
                                f"({m.name!r}); refusing to extract it")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: also drops devices, odd modes
            try:
                tf.extractall(tmp, filter="data")
            except tarfile.FilterError as err:
                raise UserError(f"archive {archive} has an unsafe member ({err}); refusing to extract it") from None
        else:
            tf.extractall(tmp, members=[m for m in members if m.isfile() or m.isdir() or m.issym() or m.islnk()])


def extract(archive: str | os.PathLike, dest_dir: str | os.PathLike, local_key: str | None = None) -> Path:
    """Unpack a zip or tar(.gz/.bz2/.xz) `archive` into `dest_dir` (replaced atomically).

    `local_key`: the params key that named `archive` when it is the user's own file, which
    an error then never offers to delete."""
    archive, dest_dir = Path(archive), Path(dest_dir)
    fix = (f"point params key '{local_key}' at a good copy" if local_key
           else "delete it and rerun to download it again")
    if not archive.is_file():
        raise UserError(f"archive {archive} does not exist")
    name = archive.name.lower()
    try:
        with atomic_path(dest_dir) as tmp:
            tmp.mkdir()
            if name.endswith(".zip"):
                _extract_zip(archive, tmp)
            elif name.endswith(_TAR_SUFFIXES):
                _extract_tar(archive, tmp)
            elif zipfile.is_zipfile(archive):
                _extract_zip(archive, tmp)
            elif tarfile.is_tarfile(archive):
                _extract_tar(archive, tmp)
            else:
                raise UserError(f"{archive} is neither a zip nor a tar archive (corrupt or "
                                f"incomplete download?); {fix}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, zlib.error) as err:
        raise UserError(f"archive {archive} is corrupt ({type(err).__name__}: {err}); {fix}"
                        + ("" if local_key else ", or replace it with a good copy")) from None
    return dest_dir
