"""Optional artifact signatures (ed25519, through the `cryptography` package).

The sha256 entries inside an artifact catch corruption, not tampering: whoever edits a member can recompute them.
An artifact runs code (firmware, compiled libraries), so an unsigned one must be trusted like any program you
download. With a key pair:

    openssl genpkey -algorithm ed25519 -out lcs-sign.pem          # private key (keep it)
    openssl pkey -in lcs-sign.pem -pubout -out lcs-sign.pub       # public key (give it to the boards)
    lcs build ck.safetensors --target host-sim -o m.lcsa --sign lcs-sign.pem    # writes m.lcsa and m.lcsa.sig
    lcs deploy m.lcsa --sim host-sim --verify-key lcs-sign.pub
    python -m lcs.runtime m.lcsa --verify-key lcs-sign.pub

The signature is detached, `ARTIFACT.sig` beside the artifact: a small JSON file holding the artifact's sha256 and
an ed25519 signature over `lcs-artifact-signature-v1\\0` + that digest (the digest of the whole file, so every member
and the manifest are covered). `--verify-key` refuses an artifact without a signature, with a signature by another
key, or whose bytes changed after signing. Keys are PEM (PKCS#8 private, SubjectPublicKeyInfo public), as openssl
writes them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from lcs import atomic
from lcs.errors import LcsError

SUFFIX = ".sig"
FORMAT = "lcs-artifact-signature"
DOMAIN = b"lcs-artifact-signature-v1\0"


class SignatureError(LcsError):
    """A missing, malformed or wrong signature, or an unusable key."""


def signature_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SUFFIX)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise SignatureError(f"cannot read {path}: {exc.strerror}") from None
    return h.hexdigest()


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SignatureError("signing needs the cryptography package (pip install cryptography)") from None
    return serialization, ed25519, InvalidSignature


def load_private_key(path: str | Path):
    serialization, ed25519, _ = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise SignatureError(f"cannot read signing key {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an ed25519 key (openssl genpkey -algorithm ed25519)")
    return key


def load_public_key(path: str | Path):
    serialization, ed25519, _ = _crypto()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read verify key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:  # a private key works too: its public half
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise SignatureError(f"{path} is not a PEM public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SignatureError(f"{path} is not an ed25519 public key")
    return key


def _raw_public(key) -> str:
    serialization, _, _ = _crypto()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sign_artifact(artifact: str | Path, key) -> Path:
    """Write ARTIFACT.sig for `artifact` with `key` (a loaded private key or a PEM path); returns its path."""
    if not hasattr(key, "sign"):
        key = load_private_key(key)
    artifact = Path(artifact)
    digest = _file_sha256(artifact)
    record = {"format": FORMAT, "version": 1, "algorithm": "ed25519", "artifact": artifact.name, "sha256": digest,
              "public_key": _raw_public(key.public_key()),
              "signature": base64.b64encode(key.sign(DOMAIN + bytes.fromhex(digest))).decode()}
    target = signature_path(artifact)
    atomic.write_text(target, json.dumps(record, indent=2) + "\n")
    return target


def verify_artifact(artifact: str | Path, public_key) -> str:
    """Refuse `artifact` unless ARTIFACT.sig is a valid signature of its current bytes by `public_key` (a loaded key
    or a PEM path). Returns the artifact's sha256."""
    _, _, InvalidSignature = _crypto()
    if not hasattr(public_key, "verify"):
        public_key = load_public_key(public_key)
    artifact = Path(artifact)
    sig_path = signature_path(artifact)
    if not artifact.is_file():
        raise SignatureError(f"artifact {artifact} does not exist")
    if not sig_path.is_file():
        raise SignatureError(f"{artifact} is not signed (no {sig_path.name} beside it); refusing it under --verify-key")
    try:
        record = json.loads(sig_path.read_text())
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("algorithm") != "ed25519":
            raise ValueError("not an lcs ed25519 signature")
        digest, signature = str(record["sha256"]), base64.b64decode(record["signature"], validate=True)
        bytes.fromhex(digest)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise SignatureError(f"{sig_path} is not a valid signature file ({exc})") from None
    actual = _file_sha256(artifact)
    if actual != digest:
        raise SignatureError(f"{artifact} changed after it was signed (sha256 {actual[:16]}..., signed "
                             f"{digest[:16]}...)")
    try:
        public_key.verify(signature, DOMAIN + bytes.fromhex(digest))
    except InvalidSignature:
        raise SignatureError(f"{artifact} is not signed by the --verify-key key") from None
    return actual
