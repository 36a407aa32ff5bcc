"""Fetch one remote file: fail fast offline, stream to a temporary file, verify, then rename.

Offline, the reachability probe (DNS in a daemon thread, then one TCP connect, both bounded by
`timeout_s`) fails within about `timeout_s` seconds, with one line naming the URL to download by hand
and the path to put it at.
"""

import dataclasses
import hashlib
import os
import pathlib
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request

from tqdm import tqdm

from biojepac.errors import InputError

READ_TIMEOUT_S = 60.0
"""Per-read socket timeout once a download has started (slow servers are fine, stalled ones are not)."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file a dataset needs."""

    fname: str
    """File name under the dataset's `raw/` folder."""
    url: str | None
    """Where to download it; None: the user supplies it (e.g. files behind a registration)."""
    md5: str | None = None
    """Published MD5, when one is known."""
    sha256: str | None = None
    """Published SHA-256, when one is known."""
    size_bytes: int | None = None
    """Published size, when known (a cheap check while no checksum is)."""


def hash_file(fpath: pathlib.Path) -> dict[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(fpath, "rb") as f:
        while chunk := f.read(1 << 22):
            md5.update(chunk)
            sha.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def verify(fpath: pathlib.Path, remote: RemoteFile) -> str:
    """Check size and any known checksum, and that an .h5ad opens as one (a truncated download or an error
    page saved under its name does not); raise `InputError` on a mismatch; return what was checked."""
    size = fpath.stat().st_size
    if remote.size_bytes is not None and size != remote.size_bytes:
        raise InputError(f"{fpath}: size {size} bytes, expected {remote.size_bytes} (incomplete or wrong file); delete it and fetch again")
    if remote.fname.endswith(".h5ad"):
        from biojepac.data.load import open_h5

        try:
            open_h5(fpath).close()
        except InputError as err:
            raise InputError(f"{err}; delete it and fetch again") from None
    if remote.md5 is None and remote.sha256 is None:
        opens = ", opens as .h5ad" if remote.fname.endswith(".h5ad") else ""
        return f"{size} bytes" + (" (size matches)" if remote.size_bytes is not None else "") + f"{opens}; no published checksum to compare"
    got = hash_file(fpath)
    for algo in ("md5", "sha256"):
        want = getattr(remote, algo)
        if want is not None and got[algo] != want.lower():
            raise InputError(f"{fpath}: {algo} {got[algo]} does not match the published {want}; delete it and fetch again")
    return "checksum verified"


def download(remote: RemoteFile, dest: pathlib.Path, timeout_s: float = 2.0) -> str:
    """Download `remote.url` to `dest` (atomically), verify it, and return what was checked."""
    assert remote.url is not None, remote
    hint = f"download {remote.url} by hand and put it at {dest}"
    _probe(remote.url, timeout_s, hint)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    req = urllib.request.Request(remote.url, headers={"User-Agent": "biojepac"})
    try:
        with urllib.request.urlopen(req, timeout=READ_TIMEOUT_S) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as err:
        part.unlink(missing_ok=True)
        raise InputError(f"download of {remote.url} failed ({err}); {hint}") from err
    try:
        checked = verify(part, remote)
    except InputError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return checked


def _probe(url: str, timeout_s: float, hint: str) -> None:
    """Fail within ~timeout_s when the host cannot be resolved or reached."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https"):
        return  # file:// and friends need no network
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list = []

    # getaddrinfo ignores socket timeouts and can hang for tens of seconds on a machine with no DNS.
    def resolve():
        try:
            result.append(socket.getaddrinfo(parsed.hostname, port, type=socket.SOCK_STREAM))
        except OSError as err:
            result.append(err)

    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not result or isinstance(result[0], OSError):
        why = f"{result[0]}" if result else f"DNS lookup timed out after {timeout_s:g} s"
        raise InputError(f"offline? cannot resolve {parsed.hostname} ({why}); {hint}")
    family, socktype, proto, _, addr = result[0][0]
    try:
        with socket.socket(family, socktype, proto) as sock:
            sock.settimeout(timeout_s)
            sock.connect(addr)
    except OSError as err:
        raise InputError(f"offline? cannot connect to {parsed.hostname}:{port} ({err or 'timed out'}); {hint}") from err
