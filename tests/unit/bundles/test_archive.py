"""Bundle archives: deterministic packing, and every hostile archive refused with its message."""

from __future__ import annotations

import gzip
import io
import tarfile
import time
import tracemalloc
from pathlib import Path

import pytest

from policy_service.bundles.archive import pack_bundle, unpack_bundle
from policy_service.bundles.files import (
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_TOTAL_BYTES,
    BundleFiles,
)
from policy_service.bundles.loader import load_bundle_files, read_bundle
from policy_service.bundles.signing import (
    generate_signing_key,
    load_signed_bundle,
    sign_bundle,
)
from policy_service.errors import BundleError
from tests.support.bundles import write_test_bundle

ORIGIN = "https://bundles.test.example/policy.tar.gz"
KEY = generate_signing_key("ed25519")


def signed_directory(tmp_path: Path) -> BundleFiles:
    write_test_bundle(tmp_path)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "README").write_text("nested files keep their relative names")
    files = read_bundle(tmp_path)
    bundle = load_bundle_files(files, environ={})
    files.signature = sign_bundle(files, KEY, revision=bundle.revision)
    return files


def test_pack_then_unpack_gives_back_the_same_snapshot(tmp_path: Path) -> None:
    files = signed_directory(tmp_path)

    unpacked = unpack_bundle(pack_bundle(files), ORIGIN)

    assert unpacked.entry == "bundle.yaml"
    assert unpacked.files == files.files
    assert unpacked.signature == files.signature
    assert unpacked.sealed
    assert unpacked.root is None
    assert unpacked.source == f"{ORIGIN}/bundle.yaml"
    bundle = load_signed_bundle(unpacked, KEY.verification_key, environ={})
    assert bundle.revision == "test-1"


def test_packing_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = signed_directory(tmp_path)
    reordered = BundleFiles(
        entry=files.entry,
        origin="elsewhere",
        files=dict(reversed(list(files.files.items()))),
        signature=files.signature,
    )

    first = pack_bundle(files)
    # A packer that recorded the time (gzip does by default) would now write other bytes.
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)

    assert pack_bundle(files) == first
    assert pack_bundle(reordered) == first


def test_members_carry_no_times_owners_or_modes_of_the_packer(tmp_path: Path) -> None:
    data = pack_bundle(signed_directory(tmp_path))
    assert data[4:8] == b"\0\0\0\0"  # gzip header mtime
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        members = archive.getmembers()
    assert [member.name for member in members] == [
        "bundle.yaml",
        "bundle.yaml.sig",
        "jwks.json",
        "keys/README",
    ]
    for member in members:
        assert (member.mtime, member.uid, member.gid, member.mode) == (0, 0, 0, 0o644)
        assert (member.uname, member.gname) == ("", "")
        assert member.isfile()


def test_an_unsigned_single_file_bundle_is_archived_as_bundle_yaml(tmp_path: Path) -> None:
    write_test_bundle(tmp_path)
    policy = tmp_path / "policy.yaml"
    (tmp_path / "bundle.yaml").rename(policy)
    files = read_bundle(policy)
    load_bundle_files(files, environ={})

    unpacked = unpack_bundle(pack_bundle(files), ORIGIN)

    assert sorted(unpacked.files) == ["bundle.yaml", "jwks.json"]
    assert unpacked.files["bundle.yaml"] == policy.read_bytes()
    assert unpacked.signature is None
    assert load_bundle_files(unpacked, environ={}).revision == "test-1"


def test_a_signed_entry_is_not_renamed(tmp_path: Path) -> None:
    files = BundleFiles(
        entry="policy.yaml",
        origin=str(tmp_path / "policy.yaml"),
        files={"policy.yaml": b"version: v1\n"},
        signature=b"a.b.c",
    )
    with pytest.raises(BundleError) as caught:
        pack_bundle(files)
    [problem] = caught.value.problems
    assert problem.message == (
        "a signed bundle is archived only when its entry is named 'bundle.yaml' (the "
        "signature names 'policy.yaml'): rename it and sign it again"
    )


def test_a_file_that_would_shadow_the_entry_is_not_packed() -> None:
    files = BundleFiles(
        entry="policy.yaml",
        origin="policy.yaml",
        files={"policy.yaml": b"version: v1\n", "bundle.yaml": b"version: v1\n"},
    )
    with pytest.raises(BundleError) as caught:
        pack_bundle(files)
    assert caught.value.problems[0].message == (
        "cannot archive the file 'bundle.yaml': in an archive that name is the bundle's entry"
    )


def test_an_archive_made_with_tar_from_inside_the_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    write_test_bundle(tmp_path / "b")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(tmp_path / "b", arcname=".")  # ./ , ./bundle.yaml , ./jwks.json
    unpacked = unpack_bundle(buffer.getvalue(), ORIGIN)
    assert sorted(unpacked.files) == ["bundle.yaml", "jwks.json"]


# --- hostile archives ------------------------------------------------------------------------


def member(name: str, content: bytes = b"{}", **fields: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    for field, value in fields.items():
        setattr(info, field, value)
    if info.type != tarfile.REGTYPE:
        info.size = 0
    return info, content


def archive_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        for info, content in members:
            archive.addfile(info, io.BytesIO(content) if info.isfile() else None)
    return buffer.getvalue()


ENTRY = member("bundle.yaml", b"version: v1\n")


def oversized_header_archive() -> bytes:
    # Only the header is honest about the size; the refusal must come before the content.
    info = tarfile.TarInfo("jwks.json")
    info.size = MAX_FILE_BYTES + 1
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    return gzip.compress(ENTRY[0].tobuf() + ENTRY[1].ljust(512, b"\0") + header + b"\0" * 512)


HOSTILE = {
    "absolute_path": (
        archive_of(ENTRY, member("/etc/cron.d/x")),
        "member '/etc/cron.d/x' is not a relative path",
    ),
    "dot_dot": (
        archive_of(ENTRY, member("../x")),
        "member '../x' points outside the bundle",
    ),
    "dot_dot_inside": (
        archive_of(ENTRY, member("keys/../../x")),
        "member 'keys/../../x' points outside the bundle",
    ),
    "symlink": (
        archive_of(ENTRY, member("jwks.json", type=tarfile.SYMTYPE, linkname="/etc/passwd")),
        "member 'jwks.json' is a symbolic link",
    ),
    "hardlink": (
        archive_of(ENTRY, member("jwks.json", type=tarfile.LNKTYPE, linkname="bundle.yaml")),
        "member 'jwks.json' is a hard link",
    ),
    "device": (
        archive_of(ENTRY, member("jwks.json", type=tarfile.CHRTYPE, devmajor=1, devminor=3)),
        "member 'jwks.json' is a device or a pipe",
    ),
    "fifo": (
        archive_of(ENTRY, member("jwks.json", type=tarfile.FIFOTYPE)),
        "member 'jwks.json' is a device or a pipe",
    ),
    "directory_named_as_the_entry": (
        archive_of(member("bundle.yaml", type=tarfile.DIRTYPE), ENTRY),
        "'bundle.yaml' is both a file and a directory",
    ),
    "file_that_is_also_a_folder": (
        archive_of(ENTRY, member("keys"), member("keys/jwks.json")),
        "'keys' is both a file and a directory",
    ),
    "oversized_member": (
        archive_of(ENTRY, member("jwks.json", b"\0" * (MAX_FILE_BYTES + 1))),
        f"'jwks.json' is larger than {MAX_FILE_BYTES} bytes",
    ),
    "oversized_member_by_header": (
        oversized_header_archive(),
        f"'jwks.json' is larger than {MAX_FILE_BYTES} bytes",
    ),
    "too_large_in_total": (
        archive_of(ENTRY, *(member(f"f{index}", b"\0" * MAX_FILE_BYTES) for index in range(4))),
        f"unpacks to more than {MAX_TOTAL_BYTES} bytes",
    ),
    "too_many_members": (
        archive_of(ENTRY, *(member(f"f{index}.json") for index in range(MAX_FILES))),
        f"holds more than {MAX_FILES} files",
    ),
    "duplicate_names": (
        archive_of(ENTRY, member("jwks.json"), member("./jwks.json")),
        "holds 'jwks.json' twice",
    ),
    "duplicate_signatures": (
        archive_of(ENTRY, member("bundle.yaml.sig", b"a"), member("bundle.yaml.sig", b"b")),
        "holds 'bundle.yaml.sig' twice",
    ),
    "no_bundle_yaml": (
        archive_of(member("policy.yaml", b"version: v1\n")),
        "has no bundle.yaml at its top",
    ),
    "bundle_yaml_not_at_the_top": (
        archive_of(member("policy/bundle.yaml", b"version: v1\n")),
        "has no bundle.yaml at its top",
    ),
    "not_gzip": (b"PK\x03\x04 a zip file", "is not a gzip'd tar archive"),
    "gzip_but_not_tar": (
        gzip.compress(b"version: v1\n" * 100),
        "is not a valid gzip'd tar archive (corrupt or truncated)",
    ),
    "truncated": (
        archive_of(ENTRY, member("jwks.json", bytes(range(256)) * 64))[:-200],
        "is not a valid gzip'd tar archive (corrupt or truncated)",
    ),
}


@pytest.mark.parametrize("case", HOSTILE, ids=str)
def test_hostile_archive_is_refused(case: str) -> None:
    data, message = HOSTILE[case]
    with pytest.raises(BundleError) as caught:
        unpack_bundle(data, ORIGIN)
    [problem] = caught.value.problems
    assert (problem.file, problem.path, problem.message) == (ORIGIN, "", message)


def gzip_bomb(inflated_bytes: int) -> bytes:
    """A tar whose first header announces a PAX record of ``inflated_bytes`` zeros.

    tarfile reads a PAX record whole before parsing it, and no member size check sees it,
    so only a cap on the decompressed stream stops it. gzip members concatenate, so one
    compressed MiB of zeros repeated makes any size from a few KiB each.
    """
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = inflated_bytes
    mebibyte = gzip.compress(b"\0" * 2**20, compresslevel=9)
    return gzip.compress(header.tobuf(format=tarfile.USTAR_FORMAT)) + mebibyte * (
        inflated_bytes // 2**20
    )


def test_a_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip_bomb(2 * 2**30)  # 2 GiB once inflated
    assert len(bomb) < 4 * 2**20

    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(BundleError) as caught:
            unpack_bundle(bomb, ORIGIN)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert caught.value.problems[0].message == f"unpacks to more than {MAX_TOTAL_BYTES} bytes"
    # Inflating 2 GiB takes seconds and gigabytes; stopping at the cap takes neither.
    assert elapsed < 2.0
    assert peak < 4 * MAX_TOTAL_BYTES


def test_names_are_shown_without_control_characters() -> None:
    # A member name is attacker text that ends up in logs and on terminals.
    data = archive_of(ENTRY, member("\x1b[2Jevil", type=tarfile.SYMTYPE, linkname="x"))
    with pytest.raises(BundleError) as caught:
        unpack_bundle(data, ORIGIN)
    assert caught.value.problems[0].message == "member '?[2Jevil' is a symbolic link"
