"""MASB crypto: party keys, the field-level encryption envelope, the signed unit publication.

Formats: docs/keys.md and docs/envelope.md. All primitives come from libsodium via PyNaCl.
"""

from .envelope import (
    BadSignature,
    EnvelopeError,
    EnvelopeOpener,
    EnvelopeSealer,
    FieldDecryptionFailed,
    KeyUnwrapFailed,
    MalformedEnvelope,
    OpenedEnvelope,
    RouterKeys,
    UnknownRecipientKey,
    UnknownSigner,
    WrongRecipient,
    assemble,
    envelope_sha256,
)
from .keys import (
    KeyFileError,
    Keyring,
    PrivateKeyRecord,
    PublicKeyRecord,
    generate_key,
    key_id,
    load_private_key,
    parse_public_record,
    public_record,
    write_private_key,
    write_public_key,
)
from .publication import (
    OpenedPublication,
    PublicationError,
    open_publication,
    seal_publication,
)

__all__ = [
    "BadSignature",
    "EnvelopeError",
    "EnvelopeOpener",
    "EnvelopeSealer",
    "FieldDecryptionFailed",
    "KeyFileError",
    "KeyUnwrapFailed",
    "Keyring",
    "MalformedEnvelope",
    "OpenedEnvelope",
    "OpenedPublication",
    "PrivateKeyRecord",
    "PublicKeyRecord",
    "PublicationError",
    "RouterKeys",
    "UnknownRecipientKey",
    "UnknownSigner",
    "WrongRecipient",
    "assemble",
    "envelope_sha256",
    "generate_key",
    "key_id",
    "load_private_key",
    "open_publication",
    "parse_public_record",
    "public_record",
    "seal_publication",
    "write_private_key",
    "write_public_key",
]
