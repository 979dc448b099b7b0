"""The one mount-table reader: octal escapes decoded exactly as the kernel writes them."""

from __future__ import annotations

from pathlib import Path

from pytest_dataplane._host import (
    Mount,
    cgroup2_mount,
    cgroup2_mounts,
    parse_mounts,
    read_mounts,
    unescape,
)


def test_unescape_decodes_the_four_characters_the_kernel_escapes() -> None:
    assert unescape(r"/mnt/a\040b\011c\012d\134e") == "/mnt/a b\tc\nd\\e"


def test_unescape_leaves_anything_else_alone() -> None:
    # Not three octal digits: not an escape (the kernel never writes these).
    assert unescape(r"/mnt/\08x\9") == r"/mnt/\08x\9"
    assert unescape(r"/mnt/end\04") == r"/mnt/end\04"
    # A decoded backslash is not decoded again.
    assert unescape(r"/mnt/\134040") == "/mnt/\\040"


def test_parse_mounts_splits_and_unescapes_every_field() -> None:
    text = (
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0\n"
        "bpf /run/with\\040space/bpf bpf rw,relatime,mode=700 0 0\n"
        "\n"
    )
    assert parse_mounts(text) == [
        Mount("cgroup2", "/sys/fs/cgroup/unified", "cgroup2", "rw,nosuid"),
        Mount("bpf", "/run/with space/bpf", "bpf", "rw,relatime,mode=700"),
    ]


def test_read_mounts_reads_a_table_and_copes_with_a_missing_one(tmp_path: Path) -> None:
    table = tmp_path / "mounts"
    table.write_bytes(b"tmpfs /tmp/caf\xc3\xa9\\040x tmpfs rw 0 0\n")
    assert read_mounts(str(table)) == [Mount("tmpfs", "/tmp/café x", "tmpfs", "rw")]
    assert read_mounts(str(tmp_path / "absent")) == []


def test_read_mounts_sees_this_machines_root() -> None:
    assert any(mount.target == "/" for mount in read_mounts())


def test_cgroup2_mount_is_read_from_the_mount_table(tmp_path: Path) -> None:
    table = tmp_path / "mounts"
    table.write_text(
        "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    )
    assert cgroup2_mount(str(table)) == "/sys/fs/cgroup/unified"
    # The first cgroup2 line wins, its target unescaped like every other field.
    table.write_text("cgroup2 /run/a\\040b cgroup2 rw 0 0\ncgroup2 /x cgroup2 rw 0 0\n")
    assert cgroup2_mount(str(table)) == "/run/a b"
    table.write_text("proc /proc proc rw 0 0\n")
    assert cgroup2_mount(str(table)) is None


def test_cgroup2_mounts_are_found_wherever_they_are() -> None:
    mounts = (
        "sysfs /sys sysfs rw 0 0\n"
        "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
        "none /mnt/with\\040space cgroup2 rw 0 0\n"
    )
    assert cgroup2_mounts(parse_mounts(mounts)) == [
        Path("/sys/fs/cgroup/unified"),
        Path("/mnt/with space"),
    ]
    assert cgroup2_mounts(parse_mounts("proc /proc proc rw 0 0\n")) == []
