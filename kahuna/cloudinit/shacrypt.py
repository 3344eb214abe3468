"""SHA-512 crypt (`$6$`), the hash cloud-init's `hashed_passwd` and glibc's crypt(3) understand.

Why our own ~60 lines instead of a library: the algorithm is fixed and fully specified (Ulrich
Drepper, "Unix crypt using SHA-256 and SHA-512", with published test vectors that
tests/unit/test_shacrypt.py checks), it needs only `hashlib`; the stdlib `crypt` module is
deprecated and removed in Python 3.13 (and depends on the libc's crypt), `passlib` has been
unmaintained since 2020, and its fork `libpass` would be a whole new runtime dependency for one
function. Upstream uses 4096 rounds; we use the spec's default 5000 (the `$6$salt$` form, no
`rounds=` field) unless asked for more.

The plaintext and the hash are secrets: nothing here logs them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ROUNDS_DEFAULT = 5000
_ROUNDS_MIN, _ROUNDS_MAX = 1000, 999_999_999
SALT_LENGTH = 16

# byte permutation of the final base-64 encoding (spec, step 22 for SHA-512)
_ORDER = [(0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26),
          (6, 27, 48), (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32),
          (12, 33, 54), (34, 55, 13), (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38),
          (18, 39, 60), (40, 61, 19), (62, 20, 41)]


def _b64(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(_ALPHABET[w & 0x3F])
        w >>= 6
    return "".join(out)


def _repeat(digest: bytes, length: int) -> bytes:
    return (digest * (length // len(digest) + 1))[:length]


def sha512_crypt(password: str | bytes, salt: str, rounds: int | None = None) -> str:
    """The `$6$[rounds=N$]salt$hash` string (salt truncated to 16 characters as the spec says)."""
    key = password.encode() if isinstance(password, str) else password
    explicit = rounds is not None
    rounds = ROUNDS_DEFAULT if rounds is None else max(_ROUNDS_MIN, min(_ROUNDS_MAX, rounds))
    salt_b = salt.encode()[:SALT_LENGTH]

    b = hashlib.sha512(key + salt_b + key).digest()
    a = hashlib.sha512(key + salt_b + _repeat(b, len(key)))
    n = len(key)
    while n:
        a.update(b if n & 1 else key)
        n >>= 1
    a_digest = a.digest()
    p = _repeat(hashlib.sha512(key * len(key)).digest(), len(key))
    s = _repeat(hashlib.sha512(salt_b * (16 + a_digest[0])).digest(), len(salt_b))

    c = a_digest
    for i in range(rounds):
        h = hashlib.sha512(p if i & 1 else c)
        if i % 3:
            h.update(s)
        if i % 7:
            h.update(p)
        h.update(c if i & 1 else p)
        c = h.digest()

    encoded = "".join(_b64(c[x], c[y], c[z], 4) for x, y, z in _ORDER) + _b64(0, 0, c[63], 2)
    head = f"$6$rounds={rounds}$" if explicit else "$6$"
    return f"{head}{salt_b.decode()}${encoded}"


def new_salt(length: int = SALT_LENGTH) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def hash_password(password: str, rounds: int | None = None) -> str:
    """A fresh `$6$` hash with a random 16-character salt."""
    return sha512_crypt(password, new_salt(), rounds)


def verify_password(password: str, hashed: str) -> bool:
    """Does `password` match a `$6$` hash? (constant-time comparison of the result)"""
    parts = hashed.split("$")
    if len(parts) < 4 or parts[1] != "6":
        return False
    rounds = None
    salt = parts[2]
    if salt.startswith("rounds=") and len(parts) == 5:
        try:
            rounds = int(salt[len("rounds="):])
        except ValueError:
            return False
        salt = parts[3]
    return hmac.compare_digest(sha512_crypt(password, salt, rounds).encode(), hashed.encode())
