"""API keys: create, hash, verify in constant time, list, revoke; admin and user roles."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sdserver.database import api_keys, utcnow
from sdserver.errors import InvalidKeyError, NotFoundError, ValidationError

KEY_PREFIX = "sd_"
# Shortest key we accept for SDSERVER_ADMIN_KEY: anything shorter is guessable.
MIN_KEY_LENGTH = 16


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: int
    name: str
    role: Role
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyStore:
    """Keys live hashed in the SQL database; the plaintext is shown once, at creation."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def create(self, name: str, role: Role = Role.USER, *, plaintext: str | None = None) -> tuple[ApiKey, str]:
        name = name.strip()
        if not name:
            raise ValidationError.for_field("name", "must not be empty", name)
        secret = plaintext if plaintext is not None else generate_key()
        if len(secret) < MIN_KEY_LENGTH:
            raise ValidationError.for_field("key", f"must be at least {MIN_KEY_LENGTH} characters", "<hidden>")
        now = utcnow()
        with self._engine.begin() as conn:
            key_id = conn.execute(
                sa.insert(api_keys)
                .values(
                    name=name,
                    role=role.value,
                    key_hash=hash_key(secret),
                    key_prefix=secret[:8],
                    created_at=now,
                )
                .returning(api_keys.c.id)
            ).scalar_one()
        return ApiKey(key_id, name, role, secret[:8], now, None), secret

    def verify(self, plaintext: str | None) -> ApiKey:
        """Return the live key for this secret or raise InvalidKeyError."""
        if not plaintext:
            raise InvalidKeyError()
        digest = hash_key(plaintext)
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_hash == digest)).first()
        # The lookup is by hash, so timing reveals nothing about the secret; compare again in constant time
        # so a collation or index quirk can never turn a near-match into a match.
        if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
            raise InvalidKeyError()
        return _to_api_key(row)

    def ensure(self, plaintext: str, *, name: str, role: Role) -> tuple[ApiKey, bool]:
        """Install a key given by the operator if it is not stored yet. Returns (key, created)."""
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_hash == hash_key(plaintext))).first()
        if row is not None:
            return _to_api_key(row), False
        key, _ = self.create(name, role, plaintext=plaintext)
        return key, True

    def list(self) -> list[ApiKey]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.id)).all()
        return [_to_api_key(row) for row in rows]

    def count_active(self) -> int:
        with self._engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
            return int(conn.execute(query).scalar_one())

    def revoke(self, key_id: int) -> ApiKey:
        with self._engine.begin() as conn:
            # Revoking twice keeps the first revocation time.
            conn.execute(
                sa.update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            raise NotFoundError(f"No key with id {key_id}")
        return _to_api_key(row)


def _to_api_key(row: sa.Row[tuple[object, ...]]) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        prefix=row.key_prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
