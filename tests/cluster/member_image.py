"""The image of an LXD cluster member: Debian minbase with Debian's lxd, cached by content.

Built once per content and kept under ``/var/cache/container-compute-tests/``:

- ``rootfs-<key>/`` the debootstrapped tree (the slow part, ~2 min), keyed by suite, variant
  and package list; a ``.complete`` marker says it was built to the end;
- ``member-<key>.squashfs`` + ``member-<key>.meta.tar.gz`` the LXD image, keyed by the rootfs
  key and the files added to it (init, inittab).

A member boots busybox's init from a tiny ``/sbin/init`` (no systemd); its address and its LXD
daemon are set up afterwards by the fixture through ``lxc exec``, so the image holds nothing
specific to a run.
"""

import hashlib
import io
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

CACHE_DIR = Path("/var/cache/container-compute-tests")
DEBOOTSTRAP = "/usr/sbin/debootstrap"
MKSQUASHFS = "/usr/bin/mksquashfs"
SUITE = "bookworm"
PACKAGES = ("lxd", "lxd-client", "busybox-static", "iproute2", "kmod", "iptables")
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# PID 1 of a member: mount what LXD needs, then busybox init (which only reaps). LXC leaves
# /sys/fs/cgroup empty in these nested members: without the cgroup hierarchies the members'
# LXD cannot apply workers' limits, so mount them (v1 per host hierarchy, or cgroup2 alone).
MEMBER_INIT = r"""#!/bin/sh
mount -t tmpfs tmpfs /run 2>/dev/null
mount -t tmpfs tmpfs /tmp 2>/dev/null
mkdir -p /run/lock
if [ -z "$(ls /sys/fs/cgroup 2>/dev/null)" ]; then
  v1=$(awk 'NR>1 && $2!=0 && $4==1 {h[$2]=h[$2] ? h[$2]","$1 : $1}
            END {for (k in h) print h[k]}' /proc/cgroups)
  if [ -n "$v1" ]; then
    mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
    for c in $v1 none,name=systemd; do
      d=/sys/fs/cgroup/${c#none,name=}
      mkdir -p "$d" && mount -t cgroup -o "$c" cgroup "$d" || rmdir "$d"
    done
    mkdir -p /sys/fs/cgroup/unified
    mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified || rmdir /sys/fs/cgroup/unified
  else
    mount -t cgroup2 cgroup2 /sys/fs/cgroup
  fi
fi
ip link set lo up
exec /bin/busybox init
"""
MEMBER_INITTAB = "::sysinit:/bin/true\n"


def host_mirror() -> str:
    """Return the Debian mirror this machine's apt uses (the first main-suite URI)."""
    for path in APT_SOURCES:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and len(words) > 1 and "security" not in words[1]:
                return words[1]
            if words[:1] == ["deb"] and len(words) > 2 and "security" not in words[-2]:
                return next(w for w in words[1:] if "://" in w)
    return DEFAULT_MIRROR


def rootfs_key() -> str:
    """The content key of the debootstrapped tree."""
    text = f"{SUITE}|minbase|{','.join(sorted(PACKAGES))}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def image_key() -> str:
    """The content key of the member image (rootfs plus the files added to it)."""
    text = f"{rootfs_key()}|{MEMBER_INIT}|{MEMBER_INITTAB}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_rootfs(cache: Path = CACHE_DIR, log=print) -> Path:
    """Return the cached debootstrapped tree, building it first when absent."""
    root = cache / f"rootfs-{rootfs_key()}"
    if (root / ".complete").exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    if root.exists():
        shutil.rmtree(root)
    begin = time.monotonic()
    subprocess.run(
        [
            DEBOOTSTRAP,
            "--variant=minbase",
            "--include=" + ",".join(PACKAGES),
            SUITE,
            str(root),
            host_mirror(),
        ],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    (root / ".complete").write_text("")
    log(f"member rootfs debootstrapped in {time.monotonic() - begin:.0f}s")
    return root


def _metadata_tar() -> bytes:
    text = (
        "architecture: x86_64\n"
        f"creation_date: {int(time.time())}\n"
        "properties:\n  description: container-compute test cluster member (Debian lxd)\n"
    ).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("metadata.yaml")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    return buffer.getvalue()


def build_image(cache: Path = CACHE_DIR, log=print) -> tuple[Path, Path, str]:
    """Return (metadata tarball, squashfs, key) of the member image, building what is absent."""
    key = image_key()
    meta = cache / f"member-{key}.meta.tar.gz"
    squashfs = cache / f"member-{key}.squashfs"
    if meta.exists() and squashfs.exists():
        return meta, squashfs, key
    root = build_rootfs(cache, log)
    begin = time.monotonic()
    init = root / "sbin/init"
    if init.is_symlink() or init.exists():
        init.unlink()
    init.write_text(MEMBER_INIT)
    init.chmod(0o755)
    (root / "etc/inittab").write_text(MEMBER_INITTAB)
    partial = squashfs.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    subprocess.run(
        [
            MKSQUASHFS,
            str(root),
            str(partial),
            "-comp",
            "lz4",
            "-noappend",
            "-quiet",
            "-e",
            ".complete",
        ],
        check=True,
        capture_output=True,
    )
    meta.write_bytes(_metadata_tar())
    partial.rename(squashfs)
    log(f"member image squashed in {time.monotonic() - begin:.0f}s")
    return meta, squashfs, key


if __name__ == "__main__":
    print(build_image())
