"""Piccolo tables. Change them, then `piccolo migrations new clinic --auto` and commit the file."""

from __future__ import annotations

import uuid

from piccolo.columns import (
    JSON,
    UUID,
    Boolean,
    Bytea,
    Float,
    ForeignKey,
    Integer,
    Serial,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.base import OnDelete
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table

ROLES = ("clinician", "admin")


class User(Table, tablename="app_user"):  # `user` is reserved in PostgreSQL
    """A clinician or an admin. ``username_key`` is the casefolded name that must be unique."""

    id: Serial  # annotation only: Piccolo adds this primary key; mypy needs to know

    username = Varchar(length=64)
    username_key = Varchar(length=64, unique=True, index=True)
    password_hash = Varchar(length=255)
    role = Varchar(length=16, default="clinician")
    active = Boolean(default=True)
    created_at = Timestamptz(default=TimestamptzNow())
    # Bumped on logout: the cookie sessions signed before it stop working (cookies cannot be
    # revoked one by one without a server-side session store).
    session_epoch = Integer(default=0)


class Analysis(Table):
    """One analysed image, owned by one user. ``id`` is a UUID so ids in URLs are not guessable."""

    id = UUID(primary_key=True, default=uuid.uuid4)
    owner = ForeignKey(references=User, on_delete=OnDelete.cascade, index=True)
    patient = Varchar(length=128, index=True)
    batch = Varchar(length=32, null=True, default=None, index=True)
    image_path = Varchar(length=255)  # random name relative to images_dir, never user input
    image_sha256 = Varchar(length=64)
    original_filename = Varchar(length=255)  # shown only, never used as a path
    predicted_class = Varchar(length=16, index=True)
    probabilities = JSON()  # {label: probability}; Piccolo hands JSON back as str
    confidence = Float()
    melanoma_flag = Boolean(default=False)
    melanoma_threshold = Float(null=True, default=None)
    model_name = Varchar(length=128)
    model_version = Varchar(length=64)
    model_sha256 = Varchar(length=64)
    created_at = Timestamptz(default=TimestamptzNow(), index=True)
    report_path = Varchar(length=255, null=True, default=None)
    # The intended-use gate's result as JSON ("" before the gate existed); its reasons are
    # kept when a clinician chose "analyse anyway", so pages and the PDF can say so.
    gate = Text(default="")
    # Sealed with the storage key (AES-GCM): the database alone does not name the patient.
    # `patient` and `original_filename` above stay "" for new rows; rows from before are
    # sealed at start-up. Search is by exact match on the keyed hash.
    patient_sealed = Text(default="")
    patient_index = Varchar(length=64, default="", index=True)
    filename_sealed = Text(default="")


class AuditEvent(Table):
    """Who did what to which record, when and from where. Kept when the user is deleted."""

    id: Serial  # annotation only: Piccolo adds this primary key; mypy needs to know

    actor = ForeignKey(references=User, on_delete=OnDelete.set_null, null=True, index=True)
    actor_name = Varchar(length=64, default="")
    action = Varchar(length=48, index=True)
    target = Varchar(length=64, null=True, default=None)
    address = Varchar(length=64, default="")
    detail = Text(default="")
    created_at = Timestamptz(default=TimestamptzNow(), index=True)


class ApiToken(Table):
    """A per-user bearer token for the JSON API; only its SHA-256 is stored."""

    id: Serial  # annotation only: Piccolo adds this primary key; mypy needs to know

    owner = ForeignKey(references=User, on_delete=OnDelete.cascade, index=True)
    name = Varchar(length=64, default="")
    token_hash = Varchar(length=64, unique=True, index=True)
    prefix = Varchar(length=16)  # shown in the UI so a user can tell tokens apart
    created_at = Timestamptz(default=TimestamptzNow())
    last_used_at = Timestamptz(null=True, default=None)
    revoked = Boolean(default=False)
    uses = Integer(default=0)


class StoredBlob(Table, tablename="stored_blob"):
    """An encrypted image or PDF report when ``APP_STORAGE=database`` (app/db/blobs.py).

    ``data`` holds the very bytes the file store would write (``MAGIC | nonce | AES-GCM``, the
    name as associated data), so files move in and out unchanged. ``sha256`` and ``size`` are
    of those encrypted bytes: a backup can be checked without the key.
    """

    name = Varchar(length=64, primary_key=True)  # the store's random name, as in image_path
    data = Bytea()
    sha256 = Varchar(length=64)
    size = Integer()
    created_at = Timestamptz(default=TimestamptzNow())


class LoginFailure(Table, tablename="login_failure"):
    """One failed login, seen by every replica (app/auth/throttle.py, DatabaseThrottle).

    ``at`` is seconds since the epoch; rows older than the window are pruned. ``cleared``: the
    same account and address then logged in, which forgives the pair's count only.
    """

    id: Serial  # annotation only: Piccolo adds this primary key; mypy needs to know

    account = Varchar(length=64, index=True)  # casefolded name tried
    address = Varchar(length=64, index=True)
    at = Float(index=True)
    cleared = Boolean(default=False)


TABLES: tuple[type[Table], ...] = (
    User,
    Analysis,
    AuditEvent,
    ApiToken,
    StoredBlob,
    LoginFailure,
)
