"""#10: the xfs-quota backend's calls, against a fake xfs_quota and xfs_io on PATH
(this machine's kernel cannot mount XFS with project quota) and a mountinfo file.
What the real tools print is copied from xfsprogs 6.1; docs/sized-volumes.md has the
host set-up. The refusal at start is the real check on a made-up mount table."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from gpudock.adapters.volumes.xfs_quota import XfsQuotaBackend
from gpudock.errors import UserError

MiB = 2**20
ROOT = "/var/lib/docker/volumes"


class Docker:
    """What the backend asks of Docker: the volume it makes and where it lives."""

    def __init__(self) -> None:
        self.volumes: dict[str, dict[str, Any]] = {}

    def create_volume(self, name: str, options: dict[str, str],
                      extra_labels: dict[str, str] | None = None) -> None:
        self.volumes[name] = {"Options": options, "Mountpoint": f"{ROOT}/{name}/_data"}

    def volume_info(self, name: str) -> dict[str, Any] | None:
        return self.volumes.get(name)

    def remove_volume(self, name: str) -> None:
        self.volumes.pop(name, None)


def _mountinfo(tmp_path: Path, fstype: str, options: str) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
                    f"36 22 8:16 / /var/lib/docker rw,noatime shared:2 - {fstype} "
                    f"/dev/sdb {options}\n")
    return path


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake xfs_io and xfs_quota; every call is appended to calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    scripts = {
        "xfs_io": 'echo "xfs_io $*" >> {log}\necho "projid = 42"\n',
        "xfs_quota": ('echo "xfs_quota $*" >> {log}\n'
                      'case "$3" in report*) echo "Project quota on /var/lib/docker '
                      '(/dev/sdb)"; echo "#0 0 0 0 00 [--------]"; '
                      'echo "#42 2048 0 65536 00 [--------]";; esac\n'),
    }
    for name, body in scripts.items():
        script = bin_dir / name
        script.write_text("#!/bin/sh\n" + body.format(log=log))
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")
    return log


def test_10_refused_at_start_without_xfs_project_quota(tmp_path: Path) -> None:
    for fstype, options in (("ext4", "rw"), ("xfs", "rw,attr2,inode64,noquota")):
        backend = XfsQuotaBackend(Path(ROOT), Docker(),  # type: ignore[arg-type]
                                  _mountinfo(tmp_path, fstype, options))
        with pytest.raises(UserError) as refused:
            backend.check()
        assert refused.value.reason == "VolumeRootUnusable"
        assert "prjquota" in refused.value.message
    XfsQuotaBackend(Path(ROOT), Docker(),  # type: ignore[arg-type]
                    _mountinfo(tmp_path, "xfs", "rw,attr2,inode64,prjquota")).check()


def test_10_create_measure_and_resize_through_docker_and_xfs_quota(
    tmp_path: Path, tools: Path,
) -> None:
    docker = Docker()
    backend = XfsQuotaBackend(Path(ROOT), docker,  # type: ignore[arg-type]
                              _mountinfo(tmp_path, "xfs", "rw,prjquota"))
    assert backend.state("ns_data-svol-1") is None
    backend.create("ns_data-svol-1", 64 * MiB)
    assert docker.volumes["ns_data-svol-1"]["Options"] == {"size": str(64 * MiB)}
    assert backend.docker_options("ns_data-svol-1") is None  # Docker made it already
    state = backend.state("ns_data-svol-1")
    assert state is not None
    assert (state.size_bytes, state.used_bytes, state.attached) == (64 * MiB, 2 * MiB, True)
    assert backend.minimum_bytes("ns_data-svol-1") == 2 * MiB
    assert backend.resize_online("ns_data-svol-1", 128 * MiB)
    calls = tools.read_text().splitlines()
    assert f"xfs_io -c lsproj {ROOT}/ns_data-svol-1/_data" in calls
    assert "xfs_quota -x -c report -p -b -N -n /var/lib/docker" in calls
    assert calls[-1] == "xfs_quota -x -c limit -p bhard=131072k 42 /var/lib/docker"
    backend.delete("ns_data-svol-1")
    assert not docker.volumes
