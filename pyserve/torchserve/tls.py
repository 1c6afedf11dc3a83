"""HTTPS for TorchServe's APIs from TorchServe's settings (ConfigManager.getSslContext).

A Java keystore (`keystore`, `keystore_pass` default "changeit", `keystore_type` PKCS12 or
JKS) wins over `private_key_file`/`certificate_file` (PEM); with neither, an https address gets
a self-signed certificate, as TorchServe makes one. TorchServe serves what Java accepts, which
includes keys OpenSSL 3 refuses at its default security level (its own sample certificate is a
1024-bit RSA key): such a key is served with a warning naming its size, the security level
lowered for this context only.
"""

from __future__ import annotations

import datetime
import logging
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pyserve.errors import ErrorCode, ServerError

log = logging.getLogger("pyserve")

_NEEDS_EXTRA = "pip install 'pyserve[torchserve]'"


@dataclass
class ServerTls:
    """The https addresses' material: the SSL context of Python's servers, and the same key,
    chain and security level as PEM for the native HTTP frontend."""
    context: ssl.SSLContext
    key_pem: bytes
    chain_pem: bytes
    security_level: int | None  # None: OpenSSL's default

    def native(self) -> dict:
        """As pyserve._http_server.Server's `tls` takes it."""
        return {"certificate_chain": self.chain_pem, "private_key": self.key_pem,
                "security_level": self.security_level}


def server_tls(options) -> ServerTls:
    """The TLS material of the https addresses of `options` (TorchServeOptions)."""
    if options.keystore is not None:
        key_pem, chain_pem = _read_keystore(options.keystore, options.keystore_pass,
                                            options.keystore_type)
        source = f"keystore {options.keystore}"
    elif options.certificate_file is not None:
        try:
            key_pem = Path(options.private_key_file).read_bytes()
            chain_pem = Path(options.certificate_file).read_bytes()
        except OSError as e:
            raise ServerError(f"cannot read the TLS key or certificate: {e}") from None
        source = f"certificate_file {options.certificate_file}"
    else:
        key_pem, chain_pem = _self_signed()
        source = "a self-signed certificate"
        log.warning("https without keystore or certificate_file: serving a self-signed "
                    "certificate, as TorchServe does")
    try:
        levels = [_security_level(chain_pem, source)]
    except ImportError:  # no key size to read: the lowest level that takes the key, found
        levels = [None, 1, 0]
    for level in levels:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if level is not None:
            context.set_ciphers(f"DEFAULT:@SECLEVEL={level}")
        try:
            _load_chain(context, key_pem, chain_pem)
        except ssl.SSLError as e:
            error = e
            continue
        if level is not None and len(levels) > 1:
            log.warning("TLS: the key of %s is below OpenSSL's default security level; served "
                        "as TorchServe serves it (security level %d for TorchServe's APIs "
                        "only)", source, level)
        return ServerTls(context, key_pem, chain_pem, level)
    raise ServerError(f"TLS: cannot use {source}: {error}", ErrorCode.INVALID_ARG)


def _load_chain(context: ssl.SSLContext, key_pem: bytes, chain_pem: bytes) -> None:
    """load_cert_chain reads files: the PEMs go through a private directory, removed at once."""
    with tempfile.TemporaryDirectory(prefix="pyserve-tls-") as directory:
        key_path, chain_path = Path(directory) / "key.pem", Path(directory) / "chain.pem"
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        chain_path.write_bytes(chain_pem)
        context.load_cert_chain(chain_path, key_path)


def _security_level(chain_pem: bytes, source: str) -> int | None:
    """The OpenSSL security level the certificate's key and signature need where the default
    (2: RSA/DSA keys of 2048 bits, SHA-256 signatures) would refuse them; None where it does
    not."""
    from cryptography import x509  # ImportError: the caller probes instead
    from cryptography.hazmat.primitives.asymmetric import dsa, rsa

    try:
        certificate = x509.load_pem_x509_certificates(chain_pem)[0]
    except ValueError:
        return None  # not a PEM certificate: load_cert_chain says why
    key = certificate.public_key()
    level = None
    if isinstance(key, (rsa.RSAPublicKey, dsa.DSAPublicKey)) and key.key_size < 2048:
        level = 1 if key.key_size >= 1024 else 0
        log.warning("TLS: %s has a %d-bit %s key, below the 2048 bits OpenSSL requires by "
                    "default; served as TorchServe serves it (OpenSSL security level %d for "
                    "TorchServe's APIs only). Replace it with a key of 2048 bits or more.",
                    source, key.key_size, "RSA" if isinstance(key, rsa.RSAPublicKey) else "DSA",
                    level)
    algorithm = certificate.signature_hash_algorithm
    if algorithm is not None and algorithm.name in ("md5", "sha1"):
        level = 0
        log.warning("TLS: %s is signed with %s, which OpenSSL refuses by default; served as "
                    "TorchServe serves it (OpenSSL security level 0 for TorchServe's APIs "
                    "only)", source, algorithm.name.upper())
    return level


def _read_keystore(path: Path, password: str, kind: str) -> tuple[bytes, bytes]:
    """(private key, certificate chain) as PEM from the first key entry of a keystore, as
    TorchServe takes them."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ServerError(f"cannot read keystore {path}: {e.strerror}") from None
    kind = (kind or "PKCS12").upper()
    if kind in ("PKCS12", "P12", "PFX"):
        return _read_pkcs12(data, password, path)
    if kind in ("JKS", "JCEKS"):
        return _read_jks(data, password, path)
    raise ServerError(f"keystore_type '{kind}' is not supported (PKCS12, JKS)",
                      ErrorCode.UNSUPPORTED)


def _read_pkcs12(data: bytes, password: str, path: Path) -> tuple[bytes, bytes]:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.serialization import pkcs12
    except ImportError:
        raise ServerError(f"a PKCS12 keystore needs the cryptography package: {_NEEDS_EXTRA}",
                          ErrorCode.UNAVAILABLE) from None
    try:
        key, certificate, extra = pkcs12.load_key_and_certificates(data, password.encode())
    except ValueError as e:
        raise ServerError(f"cannot open keystore {path}: {e}", ErrorCode.INVALID_ARG) from None
    if key is None or certificate is None:
        raise ServerError(f"keystore {path}: No key entry found in keystore.",
                          ErrorCode.INVALID_ARG)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    chain = [certificate, *(extra or [])]
    return key_pem, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


def _read_jks(data: bytes, password: str, path: Path) -> tuple[bytes, bytes]:
    try:
        import jks
    except ImportError:
        raise ServerError(f"a JKS keystore needs the pyjks package: {_NEEDS_EXTRA}",
                          ErrorCode.UNAVAILABLE) from None
    try:
        store = jks.KeyStore.loads(data, password)
    except Exception as e:  # noqa: BLE001 - pyjks' errors share no base class
        raise ServerError(f"cannot open keystore {path}: {e}", ErrorCode.INVALID_ARG) from None
    for entry in store.private_keys.values():
        if not entry.is_decrypted():  # a key password other than the store's
            try:
                entry.decrypt(password)
            except Exception as e:  # noqa: BLE001 - pyjks' errors share no base class
                raise ServerError(f"keystore {path}: cannot decrypt key '{entry.alias}': {e}",
                                  ErrorCode.INVALID_ARG) from None
        key_pem = _pem("PRIVATE KEY", entry.pkey_pkcs8)
        chain_pem = b"".join(_pem("CERTIFICATE", der) for _, der in entry.cert_chain)
        return key_pem, chain_pem
    raise ServerError(f"keystore {path}: No key entry found in keystore.", ErrorCode.INVALID_ARG)


def _pem(label: str, der: bytes) -> bytes:
    import base64

    body = base64.encodebytes(der).decode("ascii").replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return (f"-----BEGIN {label}-----\n" + "\n".join(lines) +
            f"\n-----END {label}-----\n").encode("ascii")


def _self_signed() -> tuple[bytes, bytes]:
    """A key and certificate for this run, as Netty's SelfSignedCertificate makes them."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise ServerError("an https address without keystore or certificate_file needs the "
                          f"cryptography package for a self-signed certificate: {_NEEDS_EXTRA}",
                          ErrorCode.UNAVAILABLE) from None
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=365))
                   .sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            certificate.public_bytes(serialization.Encoding.PEM))
