"""Registry credentials (docker ``config.json``) and ``WWW-Authenticate`` challenges.

The token flow is the distribution spec's: a 401 carries ``Bearer realm=..,service=..,
scope=..``; the client asks the realm for a token (with basic credentials when it has any)
and repeats the request with it. See https://distribution.github.io/distribution/spec/auth/token/.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Challenge",
    "Credentials",
    "CredentialsError",
    "load_credentials",
    "parse_challenge",
    "token_params",
]

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')
# Docker Hub is known under several names in config files; its tokens come from auth.docker.io.
_HUB_NAMES = ("docker.io", "index.docker.io", "registry-1.docker.io")
_HUB_REALMS = ("auth.docker.io",)


class CredentialsError(ValueError):
    """The credentials file cannot be read."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` header: the scheme (lower case) and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenge(header: str) -> Challenge:
    """Parse ``Bearer realm="https://auth/token",service="reg",scope="repository:a:pull"``."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None or match.end() == position:
            break
        value = match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[match.group(1).lower()] = value
        position = match.end()
    return Challenge(scheme.lower(), params)


def token_params(challenge: Challenge, repository: str) -> tuple[str, dict[str, str]]:
    """The realm URL and query parameters to ask for a pull token for ``repository``."""
    realm = challenge.params.get("realm", "")
    if not realm.startswith(("https://", "http://")):
        raise ValueError(f"the registry's token realm {realm!r} is not an http(s) URL")
    query = {"scope": challenge.params.get("scope") or f"repository:{repository}:pull"}
    if challenge.params.get("service"):
        query["service"] = challenge.params["service"]
    return realm, query


@dataclass(frozen=True, slots=True)
class Credentials:
    """Usernames and passwords per registry host.

    Usage::

        creds = load_credentials(open("/etc/virt-agent/registry.json").read())
        creds.lookup("registry.example:5000")   # ("user", "secret") or None
    """

    by_host: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    # Token realms (host or host:port) other than the registry's own host that may receive
    # its credentials: the entry's ``"realms": [...]`` in the file.
    realms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def lookup(self, registry: str) -> tuple[str, str] | None:
        if registry in _HUB_NAMES:
            for name in _HUB_NAMES:
                if name in self.by_host:
                    return self.by_host[name]
        return self.by_host.get(registry)

    def may_receive(self, registry: str, registry_host: str, realm: str) -> bool:
        """Whether a token realm at ``realm`` (host[:port]) may get ``registry``'s
        credentials: only on the registry's own host, or listed for it in the file."""
        realm_host = _hostname(realm)
        if realm_host == _hostname(registry_host):
            return True
        listed = self.realms.get(registry, ())
        if registry in _HUB_NAMES:
            listed = _HUB_REALMS + tuple(r for n in _HUB_NAMES for r in self.realms.get(n, ()))
        return realm in listed or realm_host in listed


def _hostname(host_port: str) -> str:
    """``reg:5000`` → ``reg``; ``[::1]:5000`` → ``[::1]``."""
    host = host_port.lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


def _host_key(key: str) -> str:
    """``https://index.docker.io/v1/`` → ``index.docker.io``; ``reg:5000`` stays."""
    host = key.split("://", 1)[-1]
    return host.split("/", 1)[0].lower()


def load_credentials(text: str) -> Credentials:
    """Read docker's config.json format: ``{"auths": {"host": {"auth": base64(user:pass)}}}``
    (or ``username``/``password`` fields). Credential helpers are not supported."""
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CredentialsError(f"not JSON: {exc}") from None
    auths = data.get("auths", {}) if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        raise CredentialsError('expected an object with an "auths" object')
    found: dict[str, tuple[str, str]] = {}
    realms: dict[str, tuple[str, ...]] = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise CredentialsError(f"auths[{key!r}] is not an object")
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise CredentialsError(f"auths[{key!r}].auth is not base64 text") from None
            user, colon, password = decoded.partition(":")
            if not colon:
                raise CredentialsError(f"auths[{key!r}].auth is not base64 of user:password")
        elif entry.get("username"):
            user, password = str(entry["username"]), str(entry.get("password", ""))
        else:
            continue  # e.g. only an identitytoken: nothing this agent can use
        found[_host_key(str(key))] = (user, password)
        listed = entry.get("realms", [])
        if not isinstance(listed, list) or not all(isinstance(r, str) for r in listed):
            raise CredentialsError(f"auths[{key!r}].realms is not a list of hosts")
        realms[_host_key(str(key))] = tuple(r.lower() for r in listed)
    return Credentials(found, realms)
