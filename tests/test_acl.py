"""Search permission for one other user through 0700 folders, checked as that user."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from pcloud.acl import allow_search, allow_search_to

NOBODY = 65534


@pytest.fixture
def private_tree(tmp_path):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to act as another user")
    top = tmp_path / "state"
    inner = top / "dpe" / "web"
    inner.mkdir(parents=True)
    for folder in (top, top / "dpe", inner):
        folder.chmod(0o700)
    (inner / "boot.qcow2").write_text("disk\n")
    (inner / "boot.qcow2").chmod(0o644)
    (inner / "secret").write_text("password\n")
    (inner / "secret").chmod(0o600)
    tmp_path.chmod(0o755)
    return inner


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", *argv], capture_output=True, text=True)


def test_the_user_may_open_a_named_file_and_nothing_more(private_tree):
    disk = private_tree / "boot.qcow2"
    assert as_nobody("cat", str(disk)).returncode != 0            # 0700 folders: no way in
    changed = allow_search_to(disk, NOBODY)
    assert private_tree in changed
    assert as_nobody("cat", str(disk)).stdout == "disk\n"
    assert as_nobody("ls", str(private_tree)).returncode != 0     # no listing
    assert as_nobody("cat", str(private_tree / "secret")).returncode != 0
    assert oct(private_tree.stat().st_mode & 0o777) == "0o710"    # mask: search only
    assert allow_search_to(disk, NOBODY) == []                    # already there


def test_a_chmod_takes_it_back_and_a_new_grant_restores_it(private_tree):
    disk = private_tree / "boot.qcow2"
    allow_search_to(disk, NOBODY)
    private_tree.chmod(0o700)                  # what pcloud's private_dir does
    assert as_nobody("cat", str(disk)).returncode != 0
    assert allow_search(private_tree, NOBODY)
    assert as_nobody("cat", str(disk)).returncode == 0


def test_folders_anyone_may_pass_are_left_alone(tmp_path):
    tmp_path.chmod(0o755)
    assert not allow_search(tmp_path, NOBODY)
    assert "system.posix_acl_access" not in os.listxattr(tmp_path)
