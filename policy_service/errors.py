"""The service's exception tree.

Exceptions are for the operator's mistakes (a bad bundle, a bad flag) and for faults in a
real part (JWKS unreachable). A denial of a request is never an exception: it is a value
(see ``policy_service.decisions``) so nothing can escape to gRPC as an accidental allow.

    PolicyServiceError
    ├── BundleError            a bundle failed to load or validate; carries every problem
    │   └── CaseFileError      a policy test file is malformed
    ├── ConfigError            a command-line or environment setting is wrong
    └── KeySourceError         a JWKS URL or file could not be read or parsed
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class PolicyServiceError(Exception):
    """Base of every exception the service raises on purpose."""


@dataclass(frozen=True)
class BundleProblem:
    """One thing wrong with a bundle, located by file and by path inside the document."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class BundleError(PolicyServiceError):
    subject = "bundle"

    def __init__(self, problems: Sequence[BundleProblem]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        summary = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(
            f"{self.subject} is invalid ({count} problem{'s' if count != 1 else ''}):\n{summary}"
        )


class CaseFileError(BundleError):
    """A policy test file (``policy-service test``) is malformed or names what isn't there."""

    subject = "case file"


class ConfigError(PolicyServiceError):
    """A setting given to the process (flag, environment variable) is wrong."""


class KeySourceError(PolicyServiceError):
    """Verification keys could not be fetched or parsed. Never carries key material."""
