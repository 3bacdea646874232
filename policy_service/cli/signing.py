"""The `keygen`, `sign` and `verify` commands: how a security team ships signed bundles.

policy-service keygen OUT_PREFIX [--algorithm ed25519|es256]   (never inside a bundle directory)
policy-service sign BUNDLE --key PRIVATE.pem [--archive OUT.tar.gz] [--skip-tests]
                                                    (runs the bundle's policy tests first)
policy-service verify BUNDLE --key PUBLIC.pem [--key PUBLIC.pem...]
                                                    (BUNDLE: file, directory or .tar.gz)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from policy_service.bundles.files import DIRECTORY_ENTRY, BundleFiles
from policy_service.errors import BundleError, ConfigError

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")

if TYPE_CHECKING:
    from policy_service.cli.flags import Commands
    from policy_service.policy.model import CompiledBundle


def _cmd_keygen(args: argparse.Namespace) -> int:
    from policy_service.bundles.signing import generate_signing_key

    private_path = Path(f"{args.out_prefix}.key")
    public_path = Path(f"{args.out_prefix}.pub")
    _refuse_inside_a_bundle(private_path)
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} already exists; keygen does not overwrite keys")
    key = generate_signing_key(args.algorithm)
    if not private_path.parent.is_dir():
        try:
            # 0700: the folder of a signing key is nobody else's business either.
            private_path.parent.mkdir(mode=0o700, parents=True)
        except OSError as exc:
            raise ConfigError(
                f"{private_path.parent} cannot be made ({(exc.strerror or '').lower()})"
            ) from None
    # O_EXCL: a file that appeared since the check above is still not overwritten, and the
    # private key is 0600 from its first byte rather than chmod'ed after being written.
    _write_new(private_path, key.private_pem(), 0o600)
    _write_new(public_path, key.verification_key.public_pem(), 0o644)
    print(f"key id {key.key_id} ({key.algorithm})")
    print(f"private key: {private_path} (keep it secret; it signs bundles)")
    print(f"public key: {public_path} (give it to the gateway)")
    return 0


def _refuse_inside_a_bundle(private_path: Path) -> None:
    """A private key in a bundle directory (or a folder below one) ships with the bundle:
    ``sign DIR`` signs every file in it and ``--archive`` packs them all."""
    folder = private_path.parent.resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / DIRECTORY_ENTRY).is_file():
            raise ConfigError(
                f"{private_path} would be inside the bundle directory {candidate} (it holds "
                f"{DIRECTORY_ENTRY}), and a private key must never ship in a bundle: write the "
                "key outside it (for example keygen ../keys/signing)"
            )


def _write_new(path: Path, content: bytes, mode: int) -> None:
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; keygen does not overwrite keys") from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be written ({(exc.strerror or '').lower()})") from None
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)


def _cmd_sign(args: argparse.Namespace) -> int:
    from policy_service.bundles.archive import pack_bundle
    from policy_service.bundles.loader import load_bundle_files, read_bundle
    from policy_service.bundles.signing import load_signing_key, sign_bundle, signature_name

    key = load_signing_key(args.key)
    files = read_bundle(args.bundle)
    if args.archive and files.entry != DIRECTORY_ENTRY:
        # Checked before signing, so a refused --archive leaves nothing half written.
        raise ConfigError(
            f"--archive needs the bundle's entry to be named {DIRECTORY_ENTRY} (the signature "
            f"names its entry): rename {files.entry} or sign a bundle directory"
        )
    try:
        # Lint first: a bundle that would not load is never signed. Loading also reads the
        # JWKS files a single-file bundle names, so the manifest covers them.
        bundle = load_bundle_files(files)
    except BundleError as exc:
        print(f"policy-service sign: {exc}", file=sys.stderr)
        print(f"policy-service sign: {args.bundle} was not signed", file=sys.stderr)
        return 1
    if not _policy_tests_pass(args, bundle):
        return 1
    signature = sign_bundle(files, key, revision=bundle.revision)
    signature_path = _entry_directory(files) / signature_name(files)
    _write_replacing(signature_path, signature)
    print(
        f"signed {files.source}: revision {bundle.revision}, {len(files.files)} files, "
        f"key id {key.key_id}"
    )
    print(f"signature: {signature_path}")
    if args.archive:
        files.signature = signature
        _write_replacing(Path(args.archive), pack_bundle(files))
        print(f"archive: {args.archive}")
    return 0


def _policy_tests_pass(args: argparse.Namespace, bundle: CompiledBundle) -> bool:
    """The bundle's own tests, as ``test`` finds and runs them: a signature vouches for a
    bundle, and one that fails its own tests should not be vouched for by accident."""
    from policy_service.cli.authoring import CASES_SUFFIX, cases_beside, run_case_files

    def say(message: str) -> None:
        print(f"policy-service sign: {message}", file=sys.stderr)

    if args.skip_tests:
        say(f"--skip-tests: the policy tests of {args.bundle} were not run")
        return True
    case_paths = cases_beside(Path(args.bundle))
    if not case_paths:
        say(f"note: no policy tests beside {args.bundle} (*{CASES_SUFFIX}) to run before signing")
        return True
    try:
        failed = run_case_files(bundle, case_paths, args.bundle)
    except BundleError as exc:
        say(str(exc))
        say(f"{args.bundle} was not signed")
        return False
    if failed:
        case_word = "case fails" if failed == 1 else "cases fail"
        say(
            f"{failed} policy test {case_word}, so {args.bundle} was not signed; see "
            f"policy-service test {args.bundle} (or sign with --skip-tests to sign it anyway)"
        )
        return False
    return True


def _entry_directory(files: BundleFiles) -> Path:
    origin = Path(files.origin)
    return origin if origin.is_dir() else origin.parent


def _write_replacing(path: Path, content: bytes) -> None:
    """Write whole or not at all: a gateway reloading meanwhile never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_bytes(content)
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"{path} cannot be written ({(exc.strerror or '').lower()})") from None


def _cmd_verify(args: argparse.Namespace) -> int:
    from policy_service.bundles.signing import (
        load_signed_bundle,
        load_verification_key,
        signed_key_id,
        verification_keys,
    )

    keys = verification_keys([load_verification_key(path) for path in args.key])
    files = _read_any_bundle(Path(args.bundle))
    bundle = load_signed_bundle(files, keys)
    print(
        f"{args.bundle}: ok (revision {bundle.revision}; {len(files.files)} signed files; "
        f"key id {signed_key_id(files)})"
    )
    return 0


def _read_any_bundle(path: Path) -> BundleFiles:
    from policy_service.bundles.archive import unpack_bundle
    from policy_service.bundles.files import MAX_TOTAL_BYTES
    from policy_service.bundles.loader import read_bundle

    if not path.name.endswith(_ARCHIVE_SUFFIXES) or path.is_dir():
        return read_bundle(path)
    try:
        with path.open("rb") as handle:
            # Compressed is never larger than its content plus headers; the cap is for a
            # wrong path, and unpack_bundle caps what the archive inflates to.
            data = handle.read(2 * MAX_TOTAL_BYTES)
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read ({(exc.strerror or '').lower()})") from None
    return unpack_bundle(data, str(path))


def register(commands: Commands) -> None:
    from policy_service.bundles.signing import KEY_ALGORITHMS

    keygen = commands.add_parser("keygen", help="make a key pair for signing bundles")
    keygen.add_argument("out_prefix", metavar="OUT_PREFIX", help="writes OUT_PREFIX.key and .pub")
    keygen.add_argument(
        "--algorithm", choices=tuple(KEY_ALGORITHMS), default="ed25519", help="signature algorithm"
    )
    keygen.set_defaults(run=_cmd_keygen)

    sign = commands.add_parser("sign", help="lint a bundle, run its policy tests, then sign it")
    sign.add_argument("bundle", metavar="BUNDLE", help="a bundle YAML file or directory")
    sign.add_argument("--key", required=True, help="PEM private key (from keygen)")
    sign.add_argument("--archive", metavar="OUT.tar.gz", help="also write a signed archive")
    sign.add_argument(
        "--skip-tests",
        action="store_true",
        help="sign without running the bundle's policy tests (which are run by default, as "
        "`test` runs them, and a failing case refuses the signature)",
    )
    sign.set_defaults(run=_cmd_sign)

    verify = commands.add_parser("verify", help="check a bundle's signature, then load it")
    verify.add_argument("bundle", metavar="BUNDLE", help="a YAML file, directory or .tar.gz")
    verify.add_argument(
        "--key",
        required=True,
        action="append",
        help="PEM public key (from keygen); repeat it to accept any of several keys",
    )
    verify.set_defaults(run=_cmd_verify)
