"""Helpers for the authorization tests: key files, a config with an [auth] section, and tokens
minted with PyJWT (Debian's python3-jwt) and python3-cryptography, as applications do."""

import base64
import json
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from conftest import render_config

SECRET = b"s3cret-for-the-tests-0123456789-abcdefghijklmnop"  # 48 bytes
ADMIN_TOKEN = "admin-token-0123456789-0123456789-abcdef"


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(claims=None, key=SECRET, alg="HS256", kid=None, exp_in=300, grants=None, sub="alice"):
    """A token for `sub` with grants {"pub": [...], "sub": [...], "admin": bool} under the
    claim "sluice"; exp_in seconds from now (None: no exp)."""
    c = {"sub": sub}
    if exp_in is not None:
        c["exp"] = int(time.time()) + exp_in
    if grants is not None:
        c["sluice"] = grants
    c.update(claims or {})
    headers = {"kid": kid} if kid else None
    return jwt.encode(c, key, algorithm=alg, headers=headers)


def unsigned(claims):
    """An alg=none token, as an attacker writes it."""
    h = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    p = b64url(json.dumps(claims).encode())
    return f"{h}.{p}."


def start_auth(factory, tmp_path, auth=None, topics=None, server=None, limits=None,
               secret=SECRET, admin=True):
    """A server with [auth]: an HMAC secret file (and an admin token file unless admin=False),
    plus the keys of `auth`."""
    (tmp_path / "secret").write_bytes(secret + b"\n")
    conf = {"hmac_secret_file": str(tmp_path / "secret")}
    if admin:
        (tmp_path / "admin").write_text(ADMIN_TOKEN + "\n")
        conf["admin_token_file"] = str(tmp_path / "admin")
    conf.update(auth or {})
    conf = {k: v for k, v in conf.items() if v is not None}
    srv_conf = {"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "data"),
                "shutdown_drain": "1s", "log_level": "info", "memory_limit": "64MiB"}
    srv_conf.update(server or {})
    text = render_config(srv_conf, limits, topics)
    text += "[auth]\n" + "".join(f"{k} = {v}\n" for k, v in conf.items())
    return factory(text=text, port=0)


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_public(priv):
    return priv.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def jwk_public(priv, kid):
    """The public JWK of an EC P-256 or Ed25519 key."""
    pub = priv.public_key()
    if isinstance(priv, ed25519.Ed25519PrivateKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw), "kid": kid}
    nums = pub.public_numbers()
    return {"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": b64url(nums.x.to_bytes(32, "big")), "y": b64url(nums.y.to_bytes(32, "big"))}


def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def ed_key():
    return ed25519.Ed25519PrivateKey.generate()


def bearer(tok):
    return {"Authorization": f"Bearer {tok}"}
