"""SHA-512 crypt against the published vectors of Drepper's specification, and against crypt(3)."""

import re
import warnings

import pytest

from kahuna.cloudinit.shacrypt import SALT_LENGTH, hash_password, sha512_crypt, verify_password

# "Unix crypt using SHA-256 and SHA-512", test vectors for SHA-512
SPEC_VECTORS = [
    ("Hello world!", "saltstring", None,
     "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"),
    ("Hello world!", "saltstringsaltstring", 10000,
     "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."),
    ("This is just a test", "toolongsaltstring", 5000,
     "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0"),
    ("a very much longer text to encrypt.  This one even stretches over morethan one line.",
     "anotherlongsaltstring", 1400,
     "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1"),
    ("we have a short salt string but not a short password", "short", 77777,
     "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0"),
    ("a short string", "asaltof16chars..", 123456,
     "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1"),
    ("the minimum number is still observed", "roundstoolow", 10,
     "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX."),
]


@pytest.mark.parametrize("password,salt,rounds,expected", SPEC_VECTORS)
def test_spec_vectors(password, salt, rounds, expected):
    assert sha512_crypt(password, salt, rounds) == expected
    assert verify_password(password, expected)
    assert not verify_password(password + "x", expected)


def test_fresh_hash_shape_and_randomness():
    a, b = hash_password("s3cret"), hash_password("s3cret")
    assert re.fullmatch(r"\$6\$[./0-9A-Za-z]{%d}\$[./0-9A-Za-z]{86}" % SALT_LENGTH, a)
    assert a != b  # random salt
    assert verify_password("s3cret", a) and verify_password("s3cret", b)
    assert not verify_password("s3cret", "$1$md5$nope") and not verify_password("x", "garbage")


def test_matches_system_crypt():
    """glibc's crypt(3) (what the guest's login uses) accepts our hashes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt")
    for pw in ("root", "pässwörd €", "x" * 100):
        h = hash_password(pw)
        assert crypt.crypt(pw, h) == h
