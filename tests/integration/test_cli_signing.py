"""keygen, sign and verify as a security team runs them: the real CLI in a subprocess."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from tests.support.bundles import write_test_bundle

INVALID = Path(__file__).parent.parent / "fixtures" / "bundles" / "invalid"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "policy_service", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def keygen(prefix: Path, algorithm: str = "ed25519") -> str:
    result = run("keygen", str(prefix), "--algorithm", algorithm)
    assert result.returncode == 0, result.stderr
    match = re.match(r"key id ([0-9a-f]{16}) ", result.stdout)
    assert match, result.stdout
    return match.group(1)


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    result = run("keygen", str(tmp_path / "signer"))

    assert result.returncode == 0, result.stderr
    private, public = tmp_path / "signer.key", tmp_path / "signer.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert re.fullmatch(
        rf"key id [0-9a-f]{{16}} \(EdDSA\)\n"
        rf"private key: {re.escape(str(private))} \(keep it secret; it signs bundles\)\n"
        rf"public key: {re.escape(str(public))} \(give it to the gateway\)\n",
        result.stdout,
    )
    for line in private.read_text().splitlines()[1:-1]:
        assert line not in result.stdout


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    keygen(tmp_path / "signer")
    before = (tmp_path / "signer.key").read_bytes()

    result = run("keygen", str(tmp_path / "signer"))

    assert result.returncode == 1
    assert result.stderr == (
        f"policy-service keygen: {tmp_path / 'signer.key'} already exists; "
        "keygen does not overwrite keys\n"
    )
    assert (tmp_path / "signer.key").read_bytes() == before


def test_sign_then_verify_a_single_file_bundle(tmp_path: Path) -> None:
    key_id = keygen(tmp_path / "signer", "es256")
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    bundle = write_test_bundle(bundle_dir)

    signed = run("sign", str(bundle.path), "--key", str(tmp_path / "signer.key"))

    assert signed.returncode == 0, signed.stderr
    signature = bundle_dir / "bundle.yaml.sig"
    assert signed.stdout == (
        f"signed {bundle.path}: revision test-1, 2 files, key id {key_id}\nsignature: {signature}\n"
    )
    assert signature.is_file()

    verified = run("verify", str(bundle.path), "--key", str(tmp_path / "signer.pub"))

    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == (
        f"{bundle.path}: ok (revision test-1; 2 signed files; key id {key_id})\n"
    )


def test_verify_refuses_a_tampered_jwks_file(tmp_path: Path) -> None:
    keygen(tmp_path / "signer")
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    bundle = write_test_bundle(bundle_dir)
    assert run("sign", str(bundle.path), "--key", str(tmp_path / "signer.key")).returncode == 0
    jwks = bundle_dir / "jwks.json"
    jwks.write_text(jwks.read_text().replace('"kty"', '"kty" '))

    result = run("verify", str(bundle.path), "--key", str(tmp_path / "signer.pub"))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "policy-service verify: bundle is invalid (1 problem):\n"
        f"  {bundle.path}: file 'jwks.json' has changed since it was signed\n"
    )


def test_sign_refuses_a_bundle_that_does_not_load(tmp_path: Path) -> None:
    keygen(tmp_path / "signer")
    broken = tmp_path / "broken.yaml"
    shutil.copy(INVALID / "many_problems.yaml", broken)

    result = run("sign", str(broken), "--key", str(tmp_path / "signer.key"))

    assert result.returncode == 1
    assert result.stderr.startswith("policy-service sign: bundle is invalid (4 problems):\n")
    assert result.stderr.endswith(f"policy-service sign: {broken} was not signed\n")
    assert not (tmp_path / "broken.yaml.sig").exists()


def test_a_signed_directory_archive_verifies(tmp_path: Path) -> None:
    key_id = keygen(tmp_path / "signer")
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    write_test_bundle(bundle_dir)
    archive = tmp_path / "bundle.tar.gz"

    signed = run(
        "sign", str(bundle_dir), "--key", str(tmp_path / "signer.key"), "--archive", str(archive)
    )

    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.endswith(f"archive: {archive}\n")
    assert (bundle_dir / "bundle.yaml.sig").is_file()
    verified = run("verify", str(archive), "--key", str(tmp_path / "signer.pub"))
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == f"{archive}: ok (revision test-1; 2 signed files; key id {key_id})\n"

    keygen(tmp_path / "stranger")
    refused = run("verify", str(archive), "--key", str(tmp_path / "stranger.pub"))
    assert refused.returncode == 1
    assert f"the bundle was signed by key '{key_id}', not by the verification key" in (
        refused.stderr
    )


def test_archive_of_a_file_not_named_bundle_yaml_is_refused_before_signing(
    tmp_path: Path,
) -> None:
    keygen(tmp_path / "signer")
    bundle = write_test_bundle(tmp_path)
    policy = tmp_path / "policy.yaml"
    bundle.path.rename(policy)

    result = run(
        "sign",
        str(policy),
        "--key",
        str(tmp_path / "signer.key"),
        "--archive",
        str(tmp_path / "o.tgz"),
    )

    assert result.returncode == 1
    assert result.stderr == (
        "policy-service sign: --archive needs the bundle's entry to be named bundle.yaml "
        "(the signature names its entry): rename policy.yaml or sign a bundle directory\n"
    )
    assert not (tmp_path / "policy.yaml.sig").exists()
    assert not (tmp_path / "o.tgz").exists()


def test_keys_swapped_between_commands_are_refused(tmp_path: Path) -> None:
    keygen(tmp_path / "signer")
    bundle = write_test_bundle(tmp_path)

    sign = run("sign", str(bundle.path), "--key", str(tmp_path / "signer.pub"))
    verify = run("verify", str(bundle.path), "--key", str(tmp_path / "signer.key"))

    assert sign.returncode == verify.returncode == 1
    assert sign.stderr == (
        f"policy-service sign: signing key {tmp_path / 'signer.pub'} is not a PEM private key "
        "(PKCS8)\n"
    )
    assert verify.stderr == (
        f"policy-service verify: verification key {tmp_path / 'signer.key'} holds a private "
        "key; give the gateway the public key (.pub)\n"
    )
    for line in (tmp_path / "signer.key").read_text().splitlines()[1:-1]:
        assert line not in verify.stderr


def test_keygen_refuses_to_write_a_key_inside_a_bundle_directory(tmp_path: Path) -> None:
    write_test_bundle(tmp_path)
    (tmp_path / "keys").mkdir()

    for prefix in (tmp_path / "signing", tmp_path / "keys" / "signing"):
        result = run("keygen", str(prefix))

        assert result.returncode == 1
        assert result.stderr == (
            f"policy-service keygen: {prefix}.key would be inside the bundle directory "
            f"{tmp_path} (it holds bundle.yaml), and a private key must never ship in a "
            "bundle: write the key outside it (for example keygen ../keys/signing)\n"
        )
        assert not prefix.with_suffix(".key").exists()
        assert not prefix.with_suffix(".pub").exists()


def test_keygen_makes_a_private_folder_for_a_key_outside_the_bundle(tmp_path: Path) -> None:
    keygen(tmp_path / "keys" / "signing")

    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert (tmp_path / "keys" / "signing.key").is_file()


def test_sign_refuses_a_bundle_holding_a_private_key_and_writes_nothing(tmp_path: Path) -> None:
    keygen(tmp_path / "signer")
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    write_test_bundle(bundle_dir)
    # Whatever its name: a copy of the signing key, left in the bundle.
    shutil.copy(tmp_path / "signer.key", bundle_dir / "notes.txt")
    archive = tmp_path / "bundle.tar.gz"

    result = run(
        "sign", str(bundle_dir), "--key", str(tmp_path / "signer.key"), "--archive", str(archive)
    )

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "policy-service sign: bundle is invalid (1 problem):\n"
        f"  {bundle_dir}/bundle.yaml: file 'notes.txt' holds a PEM private key "
        "('-----BEGIN PRIVATE KEY-----'); private keys must never ship in a bundle: move it "
        "out of the bundle\n"
        f"policy-service sign: {bundle_dir} was not signed\n"
    )
    assert not (bundle_dir / "bundle.yaml.sig").exists()
    assert not archive.exists()


def test_sign_refuses_a_private_jwk_in_the_jwks_file_a_bundle_names(tmp_path: Path) -> None:
    keygen(tmp_path / "signer")
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    bundle = write_test_bundle(bundle_dir)
    jwks = bundle_dir / "jwks.json"
    jwks.write_text(jwks.read_text().replace('"kty"', '"d": "c2VjcmV0", "kty"', 1))

    result = run("sign", str(bundle.path), "--key", str(tmp_path / "signer.key"))

    assert result.returncode == 1
    assert "file 'jwks.json' holds a private JWK (members 'd')" in result.stderr
    assert not (bundle_dir / "bundle.yaml.sig").exists()


def test_verify_accepts_a_bundle_signed_by_any_of_its_keys_while_rotating(
    tmp_path: Path,
) -> None:
    old_id = keygen(tmp_path / "old")
    new_id = keygen(tmp_path / "new")
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    bundle = write_test_bundle(bundle_dir)
    old_pub, new_pub = str(tmp_path / "old.pub"), str(tmp_path / "new.pub")

    def verify(*keys: str) -> subprocess.CompletedProcess[str]:
        return run("verify", str(bundle.path), *[arg for key in keys for arg in ("--key", key)])

    assert run("sign", str(bundle.path), "--key", str(tmp_path / "old.key")).returncode == 0
    both = verify(old_pub, new_pub)
    assert both.returncode == 0, both.stderr
    assert both.stdout.endswith(f"key id {old_id})\n")

    assert run("sign", str(bundle.path), "--key", str(tmp_path / "new.key")).returncode == 0
    for keys in ((old_pub, new_pub), (new_pub,)):
        result = verify(*keys)
        assert result.returncode == 0, result.stderr
        assert result.stdout.endswith(f"key id {new_id})\n")

    refused = verify(old_pub)
    assert refused.returncode == 1
    assert refused.stderr == (
        "policy-service verify: bundle is invalid (1 problem):\n"
        f"  {bundle.path}: the bundle was signed by key '{new_id}', not by the verification "
        f"key '{old_id}'\n"
    )


# --- sign runs the bundle's own policy tests -----------------------------------------------

FINANCE = Path(__file__).parent.parent.parent / "examples" / "finance"


def finance_copy(tmp_path: Path, *, analysts_may_trade: bool = False) -> Path:
    """The finance example with its tests beside it; optionally broken so one case fails."""
    copy = tmp_path / "policy"
    shutil.copytree(FINANCE, copy)
    if analysts_may_trade:
        bundle = copy / "bundle.yaml"
        text = bundle.read_text()
        assert text.count("scopes: [fininfo:trade]") == 1
        bundle.write_text(text.replace("scopes: [fininfo:trade]", "scopes: []"))
    return copy / "bundle.yaml"


def test_sign_runs_the_policy_tests_beside_the_bundle_first(tmp_path: Path) -> None:
    keygen(tmp_path / "signer")
    bundle = finance_copy(tmp_path)

    result = run("sign", str(bundle), "--key", str(tmp_path / "signer.key"))

    assert result.returncode == 0, result.stderr
    assert f"{bundle.with_name('bundle.cases.yaml')} against {bundle}" in result.stdout
    assert "\n11 passed, 0 failed\nsigned " in result.stdout
    assert result.stderr == ""
    assert (bundle.parent / "bundle.yaml.sig").is_file()


def test_sign_refuses_a_bundle_whose_policy_tests_fail(tmp_path: Path) -> None:
    keygen(tmp_path / "signer")
    bundle = finance_copy(tmp_path, analysts_may_trade=True)

    result = run("sign", str(bundle), "--key", str(tmp_path / "signer.key"))

    assert result.returncode == 1
    assert "  FAIL  an analyst cannot trade" in result.stdout
    assert result.stderr == (
        f"policy-service sign: 1 policy test case fails, so {bundle} was not signed; see "
        f"policy-service test {bundle} (or sign with --skip-tests to sign it anyway)\n"
    )
    assert not (bundle.parent / "bundle.yaml.sig").exists()


def test_sign_skips_the_policy_tests_only_when_told_and_says_so(tmp_path: Path) -> None:
    keygen(tmp_path / "signer")
    bundle = finance_copy(tmp_path, analysts_may_trade=True)

    result = run("sign", str(bundle), "--key", str(tmp_path / "signer.key"), "--skip-tests")

    assert result.returncode == 0, result.stderr
    assert "FAIL" not in result.stdout
    assert result.stderr == (
        f"policy-service sign: --skip-tests: the policy tests of {bundle} were not run\n"
    )
    assert (bundle.parent / "bundle.yaml.sig").is_file()


def test_sign_without_policy_tests_signs_and_notes_it(tmp_path: Path) -> None:
    keygen(tmp_path / "signer")
    bundle = write_test_bundle(tmp_path).path

    result = run("sign", str(bundle), "--key", str(tmp_path / "signer.key"))

    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"policy-service sign: note: no policy tests beside {bundle} (*.cases.yaml) to run "
        "before signing\n"
    )
    assert (tmp_path / "bundle.yaml.sig").is_file()


def test_sign_refuses_a_malformed_case_file_beside_the_bundle(tmp_path: Path) -> None:
    keygen(tmp_path / "signer")
    bundle = finance_copy(tmp_path)
    bundle.with_name("bundle.cases.yaml").write_text("cases: [\n")

    result = run("sign", str(bundle), "--key", str(tmp_path / "signer.key"))

    assert result.returncode == 1
    assert result.stderr.startswith("policy-service sign: case file is invalid (1 problem):")
    assert result.stderr.endswith(f"policy-service sign: {bundle} was not signed\n")
    assert not (bundle.parent / "bundle.yaml.sig").exists()
