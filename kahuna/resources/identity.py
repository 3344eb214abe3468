"""Users, teams, projects and API tokens (upstream schema v2: `user`, `team`, `project`, `token`),
plus our internal `session` collection (one document per live JWT, so logout really revokes).

Declared once, served by the generic machinery; what is particular to them lives in hooks:
- a user is created disabled; a confirmation link is mailed (`start_registration`), and confirming
  it enables the account and mails a generated password (`confirm_registration`). A forgotten
  password works the same way with a one-hour link (`start_password_reset`,
  `confirm_password_reset`). Link tokens are random, stored as keyed digests with an expiry, and
  single-use (checked and cleared under the user's lock).
- a user may change their own name, description and notifications, never their role or email;
  a superAdmin changing someone's email disables the account until the new address is confirmed
  (and revokes their sessions).
- team membership: `team.user_ids` is the source of truth; `user.team_ids` (upstream keeps both)
  is derived from it by the team hooks, under one lock, so a request learns the caller's teams
  from the user document alone.
- a project's teams and regions must exist; a non-superAdmin may only add teams they belong to.
  Creating a project runs the registered `ProjectStep`s in order (private subnets come with the
  network resources), undoing the done ones when a later one fails; deleting runs their release.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

from kahuna.auth import apikeys, mail, passwords
from kahuna.auth.principal import ROLES, Principal
from kahuna.auth.secrets import equal, generate_token, keyed_digest
from kahuna.logs import get_logger
from kahuna.resources.errors import ConflictError, Forbidden, Invalid, NotFoundError
from kahuna.resources.kind import Access, Hooks, Kind, base_fields, register
from kahuna.resources.types import Bool, Enum, Field, Int, ListOf, Name, Obj, Ref, Str, Type
from kahuna.resources.views import map_as_pairs, register_view
from kahuna.store.base import delete_if_present, is_valid_id, new_id

log = get_logger("kahuna.identity")

Doc = dict[str, Any]


# -- value types ------------------------------------------------------------------------------

_EMAIL_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+\Z")


@dataclass(frozen=True)
class Email(Str):
    """An e-mail address (syntax only, as upstream enforces), kept in lower case: one account
    per mailbox whatever the capitalisation it was typed with."""

    min_len: int = 3
    max_len: int = 254

    def check(self, value, path):
        value = super().check(value, path)
        if not _EMAIL_RE.match(value) or ".." in value:
            raise Invalid(f"{path}: {value!r} is not an e-mail address")
        return value.lower()


@dataclass(frozen=True)
class Date(Type):
    """A calendar date, `YYYY-MM-DD` on the API and in the document (upstream's format)."""

    label = "date"

    def check(self, value, path):
        return apikeys.parse_date(value, path).isoformat()

    def default_empty(self):
        return None


def _unique_ids(values: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for v in values:
        seen.setdefault(v, None)
    return list(seen)


# -- sessions (internal) ----------------------------------------------------------------------

SESSION = register(Kind(
    name="session",
    fields=(),
    unique=(),
    indexed=("user_id",),
    routes=frozenset(),  # internal: one document per live JWT (_id = the token's jti)
    schema_version=1,
))


async def open_session(res, user: Doc, lifetime_seconds: float) -> tuple[str, datetime]:
    """A new session for `user`: answers (session id = JWT jti, expiry). Drops their expired ones."""
    now = datetime.now(timezone.utc)
    expires = now + timedelta(seconds=lifetime_seconds)
    for old in await res.list(SESSION, user_id=user["_id"]):
        if _as_datetime(old.get("expires_at")) <= now:
            await delete_if_present(res.store, SESSION.collection, old["_id"])
    session_id = new_id()
    await res.store.insert(SESSION.collection, {
        "_id": session_id, "schema_version": SESSION.schema_version, "created_at": now,
        "updated_at": now, "user_id": user["_id"], "expires_at": expires})
    return session_id, expires


async def session_alive(res, session_id: str, user_id: str) -> bool:
    if not is_valid_id(session_id):
        return False
    try:
        doc = await res.get(SESSION, session_id)
    except NotFoundError:
        return False
    return doc.get("user_id") == user_id and _as_datetime(doc.get("expires_at")) > datetime.now(timezone.utc)


async def close_session(res, session_id: str) -> None:
    await delete_if_present(res.store, SESSION.collection, session_id)


async def close_sessions(res, user_id: str, *, keep: str | None = None) -> int:
    """Revoke every session of a user (but `keep`); answers how many were revoked."""
    count = 0
    for doc in await res.list(SESSION, user_id=user_id):
        if doc["_id"] != keep:
            await delete_if_present(res.store, SESSION.collection, doc["_id"])
            count += 1
    return count


# -- users ------------------------------------------------------------------------------------

REGISTRATION = ("registration_token", "registration_expires_at", "registration")
RENEWAL = ("password_renewal_token", "password_renewal_expires_at", "password-renewal")
RESET_MAIL_INTERVAL = timedelta(seconds=60)  # at most one reset mail a minute per account


async def _user_before_create(res, doc: Doc, **_: Any) -> None:
    doc.update(enabled=False, password_hash="", team_ids=[])


async def _user_after_create(res, doc: Doc, **_: Any) -> None:
    await start_registration(res, doc)


async def _user_before_update(res, old: Doc, new: Doc, principal: Principal | None = None, **_: Any) -> None:
    if principal is not None and not principal.is_super_admin:
        for field in ("role", "email"):
            if new.get(field) != old.get(field):
                raise Forbidden(f"{field}: only a superAdmin may change it")
    if new.get("email") != old.get("email"):
        new["enabled"] = False  # the new address must be confirmed before it is used to log in


async def _user_after_update(res, old: Doc, new: Doc, **_: Any) -> None:
    if new.get("email") != old.get("email"):
        revoked = await close_sessions(res, new["_id"])
        log.info("user email changed: account awaits confirmation", user=new["_id"], sessions_revoked=revoked)
        await start_registration(res, new, reconfirm=True)


async def _user_before_delete(res, doc: Doc, **_: Any) -> None:
    await apikeys.revoke_for(res, "user", doc["_id"])
    await close_sessions(res, doc["_id"])
    async with res.locks.hold(("membership",)):
        for team_id in doc.get("team_ids") or ():
            try:
                team = await res.get(TEAM, team_id)
            except NotFoundError:
                continue
            users = [u for u in team.get("user_ids") or () if u != doc["_id"]]
            await res.set_fields(TEAM, team_id, {"user_ids": users})


USER = register(Kind(
    name="user",
    fields=base_fields() + (
        Field("email", Email(), required=True),
        Field("role", Enum(choices=ROLES), required=True),
        Field("notifications", Bool(), default=False, db="notifications_enabled"),
    ),
    unique=("email",),  # display names may repeat; mailboxes may not
    access=Access(read="own", create="admin", update="own", delete="admin"),
    hooks=Hooks(before_create=_user_before_create, after_create=_user_after_create,
                before_update=_user_before_update, after_update=_user_after_update,
                before_delete=_user_before_delete),
))


async def find_user_by_email(res, email: str) -> Doc | None:
    if not isinstance(email, str) or len(email) > 254:
        return None
    users = await res.list(USER, email=email.strip().lower())
    return users[0] if users else None


def _digest(res, purpose: str, token: str) -> str:
    return keyed_digest(res.secrets.server_secret.encode(), token, purpose)


async def _issue_link_token(res, user_id: str, which: tuple[str, str, str], hours: float) -> tuple[str, datetime]:
    token_field, expires_field, purpose = which
    token = generate_token()
    expires = datetime.now(timezone.utc) + timedelta(hours=hours)
    await res.set_fields(USER, user_id, {token_field: _digest(res, purpose, token), expires_field: expires})
    return token, expires


async def _consume_link_token(res, user_id: Any, token: Any, which: tuple[str, str, str]) -> Doc | None:
    """Check a mailed link's token and clear it (single use). Call under the user's lock.

    None for every failure alike: unknown user, empty, wrong, reused or expired token.
    """
    token_field, expires_field, purpose = which
    if not isinstance(user_id, str) or not isinstance(token, str) or not token or len(token) > 256:
        return None
    if not is_valid_id(user_id):
        return None
    try:
        user = await res.get(USER, user_id)
    except NotFoundError:
        return None
    stored = user.get(token_field)
    if not isinstance(stored, str) or not stored:
        return None  # upstream compared against an empty stored token and matched an empty one
    valid = equal(_digest(res, purpose, token), stored)
    if not valid:
        return None
    if _as_datetime(user.get(expires_field)) <= datetime.now(timezone.utc):
        await res.set_fields(USER, user_id, {token_field: "", expires_field: None})
        return None
    return await res.set_fields(USER, user_id, {token_field: "", expires_field: None})


async def start_registration(res, user: Doc, *, reconfirm: bool = False) -> None:
    """Mail a link that confirms the account's address (48 h by default)."""
    config = res.config
    hours = config.accounts.confirm_link_hours
    token, _ = await _issue_link_token(res, user["_id"], REGISTRATION, hours)
    link = f"{config.public_url}/confirm?user={user['_id']}&token={token}"
    if reconfirm:
        subject = "Confirm your new Kowabunga e-mail address"
        intro = (f"The e-mail address of your Kowabunga account ({config.public_url}) was changed to "
                 f"{user['email']}. Your account is suspended until you confirm it")
    else:
        subject = "Welcome to Kowabunga!"
        intro = (f"An account was created for you on Kowabunga ({config.public_url}). "
                 "Confirm your e-mail address")
    await mail.enqueue(res, user["email"], subject,
                       f"Hello {user.get('name', '')},\n\n{intro} by opening this link within "
                       f"{_hours(hours)}:\n\n    {link}\n\n"
                       "A password will then be sent to you in another mail.\n")


async def _password_from_link(res, user_id: Any, token: Any, consume: tuple, clear: tuple):
    """Consume a mailed link's token and enable the account with a new generated password;
    answers (user, password), or None for an invalid, used or expired link. `clear` names the
    other link's fields, which the new password makes moot."""
    if not isinstance(user_id, str) or not is_valid_id(user_id):
        return None
    async with res.locks.hold((USER.name, user_id)):
        user = await _consume_link_token(res, user_id, token, consume)
        if user is None:
            return None
        password = passwords.generate()
        user = await res.set_fields(USER, user_id, {
            "enabled": True, "password_hash": await passwords.hash_password(password),
            clear[0]: "", clear[1]: None})
    return user, password


async def confirm_registration(res, user_id: Any, token: Any) -> bool:
    """Enable the account of a valid confirmation link and mail it a generated password."""
    done = await _password_from_link(res, user_id, token, REGISTRATION, RENEWAL)
    if done is None:
        return False
    log.info("user confirmed", user=user_id)
    await _mail_password(res, *done)
    return True


async def start_password_reset(res, user: Doc) -> bool:
    """Mail a one-hour link that sets a new password. False when one was mailed within the last
    minute (a mailbox is not flooded by repeated requests)."""
    config = res.config
    hours = config.accounts.reset_link_hours
    async with res.locks.hold((USER.name, user["_id"])):
        current = await res.get(USER, user["_id"])
        expires = current.get(RENEWAL[1])
        if current.get(RENEWAL[0]) and isinstance(expires, datetime):
            issued = _as_datetime(expires) - timedelta(hours=hours)
            if datetime.now(timezone.utc) - issued < RESET_MAIL_INTERVAL:
                return False
        token, _ = await _issue_link_token(res, user["_id"], RENEWAL, hours)
    link = f"{config.public_url}/confirmForgotPassword?user={user['_id']}&token={token}"
    await mail.enqueue(res, user["email"], "Kowabunga password reset",
                       f"Hello {user.get('name', '')},\n\nSomeone (hopefully you) asked for a new "
                       f"Kowabunga password for {user['email']}. Open this link within "
                       f"{_hours(hours)} and a new password will be sent to you:\n\n    {link}\n\n"
                       "If you did not ask for it, ignore this mail: your password is unchanged.\n")
    return True


async def confirm_password_reset(res, user_id: Any, token: Any) -> bool:
    """Set and mail a new password for a valid reset link; revokes every session of the user.
    The link also proves the mailbox, so it confirms a pending account too."""
    done = await _password_from_link(res, user_id, token, RENEWAL, REGISTRATION)
    if done is None:
        return False
    await close_sessions(res, user_id)
    log.info("user password reset", user=user_id)
    await _mail_password(res, *done)
    return True


async def rehash_password(res, user: Doc, password: str) -> None:
    """Store the hash of the same password again with today's argon2 parameters (at login)."""
    async with res.locks.hold((USER.name, user["_id"])):
        await res.set_fields(USER, user["_id"], {"password_hash": await passwords.hash_password(password)})


async def set_password(res, user: Doc, password: str, *, keep_session: str | None = None) -> None:
    """Store a new (already checked) password; every other session of the user is revoked."""
    async with res.locks.hold((USER.name, user["_id"])):
        await res.set_fields(USER, user["_id"], {"password_hash": await passwords.hash_password(password)})
    await close_sessions(res, user["_id"], keep=keep_session)
    log.info("user password changed", user=user["_id"])


async def _mail_password(res, user: Doc, password: str) -> None:
    await mail.enqueue(res, user["email"], "Your Kowabunga password",
                       f"Hello {user.get('name', '')},\n\nYour Kowabunga account "
                       f"({res.config.public_url}) is ready. Log in with your e-mail address "
                       f"{user['email']} and this password:\n\n    {password}\n\n"
                       "Keep it secret; it is not stored anywhere in clear.\n")


async def rotate_user_key(res, user: Doc, expire: bool, expiration_date: str | None) -> Doc:
    """Give the user a new API key (replacing any previous one) and mail it to them."""
    doc, key = await apikeys.issue_key(res, res.secrets.server_secret, "user", user["_id"],
                                       f"{user.get('name', user['_id'])}-api-key", expire, expiration_date)
    until = f"until {expiration_date} (included)" if expire else "until it is replaced or deleted"
    await mail.enqueue(res, user["email"], "Your Kowabunga API key",
                       f"Hello {user.get('name', '')},\n\nHere is your Kowabunga API key; it works "
                       f"{until}, and replaces any previous one:\n\n    {key}\n\n"
                       "Send it in the X-API-Key header. Keep it secret.\n")
    log.info("user api key issued", user=user["_id"], token=doc["_id"])
    return doc


# -- teams ------------------------------------------------------------------------------------

async def _check_users(res, doc: Doc) -> None:
    users = _unique_ids(doc.get("user_ids") or [])
    for i, user_id in enumerate(users):
        try:
            await res.get(USER, user_id)
        except NotFoundError:
            raise Invalid(f"users[{i}]: user {user_id} not found") from None
    doc["user_ids"] = users


async def _team_before_create(res, doc: Doc, **_: Any) -> None:
    await _check_users(res, doc)


async def _team_after_create(res, doc: Doc, **_: Any) -> None:
    await _sync_members(res, doc["_id"], set(), set(doc.get("user_ids") or ()))


async def _team_before_update(res, old: Doc, new: Doc, **_: Any) -> None:
    await _check_users(res, new)


async def _team_after_update(res, old: Doc, new: Doc, **_: Any) -> None:
    await _sync_members(res, new["_id"], set(old.get("user_ids") or ()), set(new.get("user_ids") or ()))


async def _team_before_delete(res, doc: Doc, **_: Any) -> None:
    using = [p.get("name", p["_id"]) for p in await res.list(PROJECT) if doc["_id"] in (p.get("team_ids") or ())]
    if using:
        raise ConflictError(f"team {doc.get('name')} still manages project(s) {', '.join(sorted(using))}")
    await _sync_members(res, doc["_id"], set(doc.get("user_ids") or ()), set())


async def _sync_members(res, team_id: str, before: set[str], after: set[str]) -> None:
    """Keep each user's derived `team_ids` in step with the team's `user_ids`."""
    async with res.locks.hold(("membership",)):
        for user_id, joined in [(u, True) for u in sorted(after - before)] + \
                               [(u, False) for u in sorted(before - after)]:
            try:
                user = await res.get(USER, user_id)
            except NotFoundError:
                continue
            teams = [t for t in user.get("team_ids") or () if t != team_id]
            if joined:
                teams.append(team_id)
            await res.set_fields(USER, user_id, {"team_ids": teams})


TEAM = register(Kind(
    name="team",
    fields=base_fields() + (
        Field("users", ListOf(Ref(kind="user")), required=True, db="user_ids"),
    ),
    access=Access(read="own", create="admin", update="admin", delete="admin"),
    hooks=Hooks(before_create=_team_before_create, after_create=_team_after_create,
                before_update=_team_before_update, after_update=_team_after_update,
                before_delete=_team_before_delete),
))


# -- projects ---------------------------------------------------------------------------------

StepFn = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class ProjectStep:
    """One step of creating a project, with what undoes it (also run when the project goes).

    `create(res, project_doc, subnet_size=..., principal=...)`; `release(res, project_doc)`
    (after the document is gone, or when a later step of the create failed);
    `update(res, old, new, subnet_size=...)` after an update is stored (raising restores the old
    document; the step undoes its own work first); `delete_guard(res, project_doc)` before
    anything is released, raising (409) to refuse the delete.
    """

    name: str
    create: StepFn
    release: StepFn | None = None
    update: StepFn | None = None
    delete_guard: StepFn | None = None


PROJECT_STEPS: list[ProjectStep] = []
DEFAULT_SUBNET_SIZE = 26  # the Terraform provider's default; upstream's server had none


def add_project_step(step: ProjectStep) -> None:
    if any(s.name == step.name for s in PROJECT_STEPS):
        raise ValueError(f"project step {step.name!r} registered twice")
    PROJECT_STEPS.append(step)


def subnet_size(query: Any) -> int:
    raw = query.get("subnetSize") if query is not None else None
    if raw in (None, ""):
        return DEFAULT_SUBNET_SIZE
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise Invalid(f"subnetSize: {raw!r} is not an integer") from None
    if not 8 <= value <= 30:  # the official client's bounds
        raise Invalid("subnetSize: must be between 8 and 30")
    return value


async def _check_project_refs(res, old: Doc | None, new: Doc, principal: Principal | None) -> None:
    teams = _unique_ids(new.get("team_ids") or [])
    regions = _unique_ids(new.get("region_ids") or [])
    if not teams:
        raise Invalid("teams: a project needs at least one team to manage it")
    kept = set(old.get("team_ids") or ()) if old else set()
    restricted = principal is not None and not principal.is_super_admin
    for i, team_id in enumerate(teams):
        # a team the caller may not see is reported exactly like an unknown one
        if restricted and team_id not in principal.team_ids and team_id not in kept:
            raise Invalid(f"teams[{i}]: team {team_id} not found")
        try:
            await res.get(TEAM, team_id)
        except NotFoundError:
            raise Invalid(f"teams[{i}]: team {team_id} not found") from None
    for i, region_id in enumerate(regions):
        try:
            await res.get("region", region_id)
        except NotFoundError:
            raise Invalid(f"regions[{i}]: region {region_id} not found") from None
    new["team_ids"], new["region_ids"] = teams, regions


async def _project_before_create(res, doc: Doc, principal: Principal | None = None, query: Any = None,
                                 **_: Any) -> None:
    subnet_size(query)  # refused before anything is written
    await _check_project_refs(res, None, doc, principal)
    doc.setdefault("private_subnets", {})
    doc.setdefault("zone_gateways", {})
    doc.setdefault("reserved_vrrp_ids", [])
    doc.setdefault("usage", {"vcpus": 0, "memory": 0, "storage": 0, "instances": 0})


async def _project_after_create(res, doc: Doc, principal: Principal | None = None, query: Any = None,
                                **_: Any) -> None:
    size = subnet_size(query)
    done: list[ProjectStep] = []
    try:
        for step in PROJECT_STEPS:
            await step.create(res, doc, subnet_size=size, principal=principal)
            done.append(step)
    except BaseException:
        await _release(res, doc, done)
        raise
    log.info("project created", project=doc["_id"], name=doc.get("name"), steps=[s.name for s in done])


async def _project_before_update(res, old: Doc, new: Doc, principal: Principal | None = None, **_: Any) -> None:
    await _check_project_refs(res, old, new, principal)


async def _project_after_update(res, old: Doc, new: Doc, query: Any = None, **_: Any) -> None:
    for step in PROJECT_STEPS:
        if step.update is not None:
            await step.update(res, old, new, subnet_size=subnet_size(query))


async def _project_before_delete(res, doc: Doc, **_: Any) -> None:
    for step in PROJECT_STEPS:
        if step.delete_guard is not None:
            await step.delete_guard(res, doc)


async def _project_after_delete(res, doc: Doc, **_: Any) -> None:
    """Released once the document is gone: a failed delete never leaves a live project without
    its subnets (a release that fails only leaves a subnet marked by a project that no longer
    exists, which the next reservation treats as free)."""
    await _release(res, doc, list(PROJECT_STEPS))


async def _release(res, doc: Doc, steps: list[ProjectStep]) -> None:
    import trio

    with trio.CancelScope(shield=True):
        for step in reversed(steps):
            if step.release is not None:
                try:
                    await step.release(res, doc)
                except Exception:
                    log.error("project step release failed", project=doc["_id"], step=step.name, exc_info=True)


_QUOTA = Int(low=0)
_METADATA = Obj(fields=(Field("key", Name(), required=True), Field("value", Str(), required=True)))
_QUOTAS = Obj(fields=tuple(Field(n, _QUOTA, default=0) for n in ("vcpus", "memory", "storage", "instances")))

PROJECT = register(Kind(
    name="project",
    fields=base_fields() + (
        Field("domain", Str(max_len=253), default="", immutable=True),
        Field("root_password", Str(max_len=256), write_only=True),
        Field("bootstrap_user", Str(max_len=64), default=""),
        Field("bootstrap_pubkey", Str(max_len=16384), default=""),
        Field("tags", ListOf(item=Name()), default=list),
        Field("metadatas", ListOf(item=_METADATA), default=list),
        Field("quotas", _QUOTAS, default=lambda: {"vcpus": 0, "memory": 0, "storage": 0, "instances": 0}),
        Field("private_subnets", ListOf(item=_METADATA), read_only=True),
        Field("reserved_vrrp_ids", ListOf(item=Int()), read_only=True),
        Field("teams", ListOf(item=Ref(kind="team")), required=True, db="team_ids"),
        Field("regions", ListOf(item=Ref(kind="region")), required=True, db="region_ids"),
    ),
    access=Access(read="project", create="projectCreator", update="projectAdmin", delete="projectAdmin"),
    hooks=Hooks(before_create=_project_before_create, after_create=_project_after_create,
                before_update=_project_before_update, after_update=_project_after_update,
                before_delete=_project_before_delete, after_delete=_project_after_delete),
))


def _project_view(doc: Doc, out: Doc) -> Doc:
    out["private_subnets"] = map_as_pairs(doc.get("private_subnets") or {})
    return out


register_view("project", _project_view)


def project_usage(doc: Doc) -> Doc:
    usage = doc.get("usage") or {}
    return {k: int(usage.get(k, 0)) for k in ("vcpus", "memory", "storage", "instances")}


# -- API tokens -------------------------------------------------------------------------------

async def _token_before_create(res, doc: Doc, server_fields: Doc | None = None, **_: Any) -> None:
    """Tokens are only created by `apikeys.issue_key`, which brings owner and digest."""
    if not server_fields:
        raise Invalid("API tokens are issued with PATCH /user/{id}/token or /agent/{id}/token")
    doc.update(server_fields)


async def _token_before_update(res, old: Doc, new: Doc, **_: Any) -> None:
    # an owner or admin may move the date anywhere, the past included: that expires the key now
    new["expiration_date"] = apikeys.parse_expiration(
        new.get("expire"), new.get("expiration_date") if new.get("expire") else None, allow_past=True)


async def _token_after_update(res, old: Doc, new: Doc, **_: Any) -> None:
    await _agent_key_changed(res, new, gone=apikeys.is_expired(new))


async def _token_after_delete(res, doc: Doc, **_: Any) -> None:
    await _agent_key_changed(res, doc, gone=True)


async def _agent_key_changed(res, token: Doc, *, gone: bool) -> None:
    """An agent's key changed through /token: the hub's in-memory credentials follow at once,
    and a session opened with a key that no longer works is closed."""
    if token.get("parent_type") != "agent" or not token.get("agent_id"):
        return
    keys = res.extras.get("agent_keys")
    if keys is None:
        return
    await keys.credentials.refresh(token["agent_id"])
    if gone and getattr(keys, "hub", None) is not None:
        await keys.hub.disconnect(token["agent_id"], 4000, "agent key deleted or expired")


TOKEN = register(Kind(
    name="token",
    fields=base_fields() + (
        Field("expire", Bool(), required=True),
        Field("expiration_date", Date()),
    ),
    unique=(),  # "<owner name>-api-key" may repeat across owners
    # key_digest is looked up on every API-key request; its index is not unique because upstream
    # token documents have no key_digest and a unique index would make them collide on "missing"
    indexed=("user_id", "agent_id", "key_digest"),
    routes=frozenset({"list", "read", "update", "delete"}),
    access=Access(read="own", create="admin", update="own", delete="own"),
    hooks=Hooks(before_create=_token_before_create, before_update=_token_before_update,
                after_update=_token_after_update, after_delete=_token_after_delete),
    label="API token",
))


def _token_view(doc: Doc, out: Doc) -> Doc:
    """0.58's ApiToken.expiration_date is a date string: absent, not null, when the key never
    expires."""
    if not out.get("expiration_date"):
        out.pop("expiration_date", None)
    return out


register_view("token", _token_view)


# -- helpers ----------------------------------------------------------------------------------

_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return _EPOCH


def _hours(hours: float) -> str:
    if hours >= 1 and float(hours).is_integer():
        return f"{int(hours)} hour{'s' if hours != 1 else ''}"
    return f"{round(hours * 60)} minutes" if hours * 60 >= 1 else f"{round(hours * 3600)} seconds"
