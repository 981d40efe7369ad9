"""XChaCha20-Poly1305-IETF encryption, called straight into PyNaCl's libsodium.

PyNaCl's wrapper (``nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt``) formats its four
error messages on every call, which costs more than encrypting a short field; the router encrypts
some 30 fields per event. :func:`encrypt` calls the same libsodium function through PyNaCl's own
cffi binding (``nacl._sodium``), after the same checks, made cheaply: the ciphertext is the same
bytes (tests/test_envelope.py compares the two on random inputs). Decryption stays with PyNaCl.
"""

from __future__ import annotations

import nacl.exceptions
from nacl._sodium import ffi, lib

KEY_BYTES = lib.crypto_aead_xchacha20poly1305_ietf_keybytes()      # 32
NONCE_BYTES = lib.crypto_aead_xchacha20poly1305_ietf_npubbytes()   # 24
TAG_BYTES = lib.crypto_aead_xchacha20poly1305_ietf_abytes()        # 16
_MESSAGE_BYTES_MAX = lib.crypto_aead_xchacha20poly1305_ietf_messagebytes_max()


def encrypt(message: bytes, aad: bytes, nonce: bytes, key: bytes) -> bytes:
    """``crypto_aead_xchacha20poly1305_ietf_encrypt(message, aad, nonce, key)``: the encrypted
    bytes followed by the 16-byte tag. TypeError for arguments of the wrong type or size (libsodium
    reads the nonce and key by their fixed sizes, so they are checked before the call)."""
    if type(message) is not bytes or type(aad) is not bytes or type(nonce) is not bytes or type(key) is not bytes:
        raise TypeError("message, aad, nonce and key must be bytes")
    if len(nonce) != NONCE_BYTES or len(key) != KEY_BYTES:
        raise TypeError(f"the nonce must be {NONCE_BYTES} bytes and the key {KEY_BYTES}")
    size = len(message)
    if size > _MESSAGE_BYTES_MAX:
        raise ValueError("message too long")
    out = ffi.new("unsigned char[]", size + TAG_BYTES)
    written = ffi.new("unsigned long long *")
    if lib.crypto_aead_xchacha20poly1305_ietf_encrypt(out, written, message, size, aad or ffi.NULL, len(aad),
                                                      ffi.NULL, nonce, key) != 0:
        raise nacl.exceptions.CryptoError("encryption failed")
    return ffi.buffer(out, written[0])[:]
