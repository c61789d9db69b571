"""The four function images (register, train, infer, dashboard), built with buildah (vfs
storage, chroot isolation, no daemon) on a Debian bookworm base that debootstrap makes here.

Everything reusable stays outside the repository, under ``<cache_dir>/images``: the base rootfs
tarball, buildah's image storage (with one dependencies image per extra, kept while only the
code changes) and pip's cache, so a second build downloads nothing heavy.
The Debian mirror is the one this machine's apt uses, read from its sources at run time.

``python -m kml.dev.images build [register train infer]`` builds; ``sizes`` lists what is built.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from functions.dashboard import assets
from kafkaml import __version__
from kafkaml.settings import Settings
from kml.dev.procs import StackError

FUNCTIONS = ("register", "train", "infer", "dashboard")
EXTRAS = {"register": "train", "train": "train", "infer": "infer", "dashboard": "base"}
"""The pyproject extra each image installs (register validates Keras models, so it has train's;
``base``: the core dependencies alone)."""
SUITE = "bookworm"
BASE_IMAGE = f"localhost/kml/base:{SUITE}"
ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILES = ROOT / "knative" / "images"
PACKAGES = "python3,python3-venv,ca-certificates"
"""What debootstrap adds to the minimal base: Debian's Python 3.11, its venv, the CA bundle."""
BUILD_CACHE, BUILD_CA = "/var/cache/kml-pip", "/run/kml-ca.crt"
"""Where a build sees pip's cache and this machine's CA bundle (bind mounts, not in the image)."""
DIGEST_LABEL = "dev.kml.context-digest"
"""Label of a built image: the digest of what it was built from (an unchanged image is kept)."""
_COMMON = ("pyproject.toml", "README.md", "knative/images/install.sh", "kafkaml", "storage")


def image_name(function: str) -> str:
    return f"localhost/kml/{function}:{__version__}"


def context_paths(function: str) -> tuple[str, ...]:
    """The repository paths an image is built from: its own function and the layers below."""
    return (*_COMMON, "functions/__init__.py", f"functions/{function}")


@dataclass(frozen=True)
class Buildah:
    """buildah over one private storage (vfs) under ``home``."""

    home: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> Buildah:
        return cls(Path(settings.cache_dir).expanduser() / "images")

    def argv(self, *args: str) -> list[str]:
        return [
            "buildah", "--root", str(self.home / "storage"), "--runroot", str(self.home / "run"),
            "--storage-driver", "vfs", *args,
        ]  # fmt: skip

    def __call__(self, *args: str, timeout: float = 3600.0, quiet: bool = True) -> str:
        """Run buildah; its output is returned (``quiet``) or streamed; a failure says why."""
        argv = self.argv(*args)
        try:
            done = subprocess.run(
                argv, capture_output=quiet, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise StackError(f"buildah {args[0]} did not finish within {timeout:.0f}s") from None
        if done.returncode != 0:
            tail = "\n".join(((done.stdout or "") + (done.stderr or "")).splitlines()[-40:])
            said = f":\n{tail}" if quiet else "; its output is above"
            raise StackError(f"buildah {args[0]} failed (exit {done.returncode}){said}")
        return (done.stdout or "").strip()

    def has_image(self, image: str) -> bool:
        done = subprocess.run(
            self.argv("inspect", "--type", "image", image), capture_output=True, text=True
        )
        return done.returncode == 0

    def image_config(self, image: str) -> dict:
        """The image's OCI config (Cmd, Env, User, WorkingDir, ...)."""
        return json.loads(self("inspect", "--type", "image", image))["OCIv1"]["config"]

    def image_size(self, image: str) -> int:
        """Bytes of the image's layers (uncompressed, as stored)."""
        info = json.loads(self("inspect", "--type", "image", image))
        return sum(layer["size"] for layer in json.loads(info["Manifest"])["layers"])


def apt_sources(suite: str = SUITE, etc: Path = Path("/etc/apt")) -> list[tuple[str, str]]:
    """(URI, suite) of this machine's apt sources for ``suite`` and its -updates/-security."""
    found: list[tuple[str, str]] = []
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for path in files:
        for line in _lines(path):
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb":
                found.append((words[1], words[2]))
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = _deb822(stanza)
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                found += [
                    (u, s)
                    for u in fields.get("uris", "").split()
                    for s in fields.get("suites", "").split()
                ]
    wanted = {suite, f"{suite}-updates", f"{suite}-security"}
    return [
        (u.rstrip("/"), s) for u, s in found if s in wanted and u.startswith(("http:", "https:"))
    ]


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line.split("#", 1)[0].strip() for line in text.splitlines()]


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    return fields


def base_tarball(buildah: Buildah) -> Path:
    """The debootstrapped bookworm rootfs as a tarball, made once and kept in the cache."""
    tarball = buildah.home / f"{SUITE}-base.tar"
    if tarball.is_file():
        return tarball
    if os.geteuid() != 0:
        raise StackError("debootstrap needs root to make the Debian base; run the build as root")
    sources = apt_sources()
    mirror = next((u for u, s in sources if s == SUITE), None)
    if mirror is None:
        raise StackError(
            f"no apt source for Debian {SUITE} in /etc/apt: debootstrap needs a mirror"
        )
    rootfs = buildah.home / "bootstrap.tmp"
    shutil.rmtree(rootfs, ignore_errors=True)
    buildah.home.mkdir(parents=True, exist_ok=True)
    argv = ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(rootfs), mirror]
    _run(argv, "debootstrap", timeout=1800)
    lines = [f"deb {uri} {suite} main" for uri, suite in sources]
    (rootfs / "etc/apt/sources.list").write_text("\n".join(dict.fromkeys(lines)) + "\n")
    junk = [*(rootfs / "dev").iterdir(), *(rootfs / "var/lib/apt/lists").iterdir()]
    for path in junk + list((rootfs / "var/cache/apt/archives").glob("*.deb")):
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    partial = tarball.with_suffix(".tar.tmp")
    _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], "tar", 600)
    partial.rename(tarball)
    shutil.rmtree(rootfs)
    return tarball


def ensure_base(buildah: Buildah) -> str:
    """The base image in buildah's storage, imported from the tarball (and upgraded) if missing."""
    if buildah.has_image(BASE_IMAGE):
        return BASE_IMAGE
    tarball = base_tarball(buildah)
    ctr = buildah("from", "scratch")
    try:
        buildah("add", ctr, str(tarball), "/")
        buildah(
            "config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env", "LANG=C.UTF-8", "--cmd", "/bin/bash", ctr,
        )  # fmt: skip
        upgrade = (
            "export DEBIAN_FRONTEND=noninteractive && apt-get update && apt-get -y upgrade "
            "&& apt-get clean && rm -rf /var/lib/apt/lists/*"
        )
        buildah("run", "--isolation", "chroot", "--network", "host", ctr, "--", "sh", "-c", upgrade)
        buildah("commit", "--rm", ctr, BASE_IMAGE)
    except BaseException:
        subprocess.run(buildah.argv("rm", ctr), capture_output=True)
        raise
    return BASE_IMAGE


def deps_image(buildah: Buildah, extra: str, base: str) -> str:
    """An image of ``base`` with ``extra``'s dependencies installed (install.sh's deps step), the
    base a function's build starts from so that its own deps step finds everything in place.
    Tagged by what it is made of (base, install.sh, pyproject.toml): it survives code changes,
    and a change to the pins makes a new one (older ones of the same extra are removed)."""
    script, pyproject = CONTAINERFILES / "install.sh", ROOT / "pyproject.toml"
    base_id = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", base)
    digest = hashlib.sha256(
        b"\0".join([base_id.encode(), extra.encode(), script.read_bytes(), pyproject.read_bytes()])
    ).hexdigest()[:16]
    repo = f"localhost/kml/deps-{extra}"
    name = f"{repo}:{digest}"
    if buildah.has_image(name):
        return name
    pip_cache = buildah.home / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    ctr = buildah("from", "--pull=never", base)
    try:
        buildah("copy", ctr, str(script), str(pyproject), "/tmp/deps/")
        mounts = ["-v", f"{pip_cache}:{BUILD_CACHE}", "-e", f"WHEEL_CACHE={BUILD_CACHE}"]
        ca = _ca_bundle()
        if ca is not None:
            mounts += ["-v", f"{ca}:{BUILD_CA}:ro", "-e", f"CA_BUNDLE={BUILD_CA}"]
        step = ["sh", "/tmp/deps/install.sh", "deps", extra]
        buildah(
            "run", "--isolation", "chroot", "--network", "host", *mounts,
            "-e", "PIP_DISABLE_PIP_VERSION_CHECK=1", "-e", "PIP_ROOT_USER_ACTION=ignore",
            ctr, "--", *step, quiet=False,
        )  # fmt: skip
        buildah("commit", "--rm", ctr, name)
    except BaseException:
        subprocess.run(buildah.argv("rm", ctr), capture_output=True)
        raise
    for old in buildah("images", "--format", "{{.Name}}:{{.Tag}}").split():
        if old.startswith(f"{repo}:") and old != name:
            subprocess.run(buildah.argv("rmi", old), capture_output=True)
    return name


def stage_context(function: str, into: Path, settings: Settings) -> Path:
    """A build context holding only what ``function``'s image copies (no kml/, no caches); the
    dashboard's also holds its chart library, fetched and checked once (``dashboard-assets/``)."""
    shutil.rmtree(into, ignore_errors=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for rel in context_paths(function):
        src, dst = ROOT / rel, into / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=skip)
        else:
            shutil.copy2(src, dst)
    if function == "dashboard":
        folder = assets.fetch(settings)
        shutil.copytree(folder, into / "dashboard-assets" / folder.name)
    return into


def context_digest(context: Path, containerfile: Path, base_id: str) -> str:
    """What an image is built from, as one SHA-256: its files, its Containerfile, its base."""
    digest = hashlib.sha256(base_id.encode() + b"\0" + containerfile.read_bytes())
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        digest.update(b"\0" + str(path.relative_to(context)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build(
    buildah: Buildah, function: str, base: str, settings: Settings, force: bool = False
) -> bool:
    """Build ``function``'s image from its Containerfile unless the image there was built from
    exactly these files (its ``DIGEST_LABEL``); True when it was built."""
    if function not in FUNCTIONS:
        raise StackError(f"no image for {function!r}: the images are {', '.join(FUNCTIONS)}")
    name, containerfile = image_name(function), CONTAINERFILES / f"{function}.Containerfile"
    base = deps_image(buildah, EXTRAS[function], base)
    context = stage_context(function, buildah.home / "context" / function, settings)
    base_id = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", base)
    digest = context_digest(context, containerfile, base_id)
    if not force and buildah.has_image(name):
        if (buildah.image_config(name).get("Labels") or {}).get(DIGEST_LABEL) == digest:
            shutil.rmtree(context, ignore_errors=True)
            return False
    pip_cache = buildah.home / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    args = [
        "build", "--isolation", "chroot", "--network", "host", "--pull=never",
        "-f", str(containerfile), "-t", name, "--label", f"{DIGEST_LABEL}={digest}",
        "--build-arg", f"BASE={base}", "--build-arg", f"WHEEL_CACHE={BUILD_CACHE}",
        "-v", f"{pip_cache}:{BUILD_CACHE}",
    ]  # fmt: skip
    ca = _ca_bundle()
    if ca is not None:  # pip in the build trusts what pip here trusts
        args += ["--build-arg", f"CA_BUNDLE={BUILD_CA}", "-v", f"{ca}:{BUILD_CA}:ro"]
    buildah(*args, str(context), quiet=False)
    shutil.rmtree(context, ignore_errors=True)
    return True


def _ca_bundle() -> Path | None:
    for candidate in (os.environ.get("PIP_CERT"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def _run(argv: list[str], what: str, timeout: float) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise StackError(f"{what} failed (exit {done.returncode}):\n{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kml.dev.images", description=__doc__)
    parser.add_argument("command", choices=["build", "sizes"])
    parser.add_argument("functions", nargs="*", default=list(FUNCTIONS))
    parser.add_argument("--force", action="store_true", help="build even when up to date")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    buildah = Buildah.from_settings(settings)
    try:
        if args.command == "build":
            started = time.monotonic()
            base = ensure_base(buildah)
            print(f"images: base {base} ready after {time.monotonic() - started:.0f}s", flush=True)
            for function in args.functions:
                began = time.monotonic()
                built = build(buildah, function, base, settings, force=args.force)
                took = f"built in {time.monotonic() - began:.0f}s" if built else "up to date"
                print(f"images: {image_name(function)} {took}", flush=True)
            buildah("rmi", "--prune")  # the images these tags pointed at before
            print(f"images: all ready after {time.monotonic() - started:.0f}s")
        for function in args.functions:
            name = image_name(function)
            size = buildah.image_size(name) if buildah.has_image(name) else None
            print(f"images: {name} " + (f"{size / 1e6:.0f} MB" if size else "not built"))
    except StackError as e:
        print(f"images: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
