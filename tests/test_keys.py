"""API keys: create, list, revoke, verify (and its cache), on every engine; `apiary keys`."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable

import pytest

import apiary
from apiary import Statement
from apiary._frontend.keys import (
    KeyInfo,
    KeyStore,
    bearer_token,
    format_key,
    insert_key,
    new_key,
    secret_digest,
)
from apiary._frontend.keys_cli import add_keys_commands, admin_url, run_keys_command
from tests.apps import notes

MakeRuntime = Callable[..., apiary.Runtime]

KEY = re.compile(r"apk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")
INVALID = "invalid or revoked API key"


def runtime(make_runtime: MakeRuntime) -> apiary.Runtime:
    # Any installed app will do: keys need only the runtime's engine. (On PostgreSQL in
    # placement=db an app must be defined in a module, which the server loads.)
    return make_runtime(notes.app)


def keys_table(rt: apiary.Runtime) -> list[tuple[object, ...]]:
    select = Statement("SELECT * FROM {sys}keys", system=True)
    return rt._engine.transact(lambda db: db.query(select, ()), write=False)


def test_create_verify_list_revoke(make_runtime: MakeRuntime) -> None:
    store = KeyStore(runtime(make_runtime))
    admin = store.create("admin", "ops")
    invoke = store.create("invoke")
    assert KEY.fullmatch(admin.key)
    assert admin.key.startswith(f"apk_{admin.key_id}_")
    assert (admin.role, admin.label, invoke.role, invoke.label) == ("admin", "ops", "invoke", None)
    assert admin.key not in repr(admin)  # logging the object does not log the key

    info = store.verify(admin.key)
    assert info == KeyInfo(admin.key_id, "admin", "ops", admin.created_at, None)
    assert store.verify(invoke.key).key_id == invoke.key_id

    assert store.revoke(invoke.key_id) is True
    assert store.revoke(invoke.key_id) is False  # already revoked
    assert store.revoke("0123456789ab") is False  # unknown
    assert store.revoke("not an id") is False
    # The store that revoked forgets the key at once (others within their ttl).
    with pytest.raises(apiary.AuthenticationError, match=INVALID):
        store.verify(invoke.key)
    assert store.verify(admin.key).key_id == admin.key_id

    listed = {key.key_id: key for key in store.list()}
    assert set(listed) == {admin.key_id, invoke.key_id}
    assert not listed[admin.key_id].revoked
    assert listed[invoke.key_id].revoked
    revoked_at = listed[invoke.key_id].revoked_at
    assert revoked_at is not None
    assert revoked_at >= invoke.created_at
    assert listed[invoke.key_id].to_json() == {
        "key_id": invoke.key_id,
        "role": "invoke",
        "label": None,
        "created_at": invoke.created_at,
        "revoked_at": revoked_at,
    }


def test_roles_and_authorize(make_runtime: MakeRuntime) -> None:
    store = KeyStore(runtime(make_runtime))
    admin = store.create("admin")
    invoke = store.create("invoke")
    assert store.authorize(admin.key, "invoke").role == "admin"  # admin may do everything
    assert store.authorize(admin.key, "admin").role == "admin"
    assert store.authorize(invoke.key, "invoke").role == "invoke"
    with pytest.raises(apiary.PermissionDeniedError, match="needs an admin key"):
        store.authorize(invoke.key, "admin")
    # A bad key is an authentication failure whatever the route needs.
    with pytest.raises(apiary.AuthenticationError):
        store.authorize("apk_nope", "invoke")

    with pytest.raises(apiary.InvalidArgumentsError, match="role"):
        store.create("root")
    with pytest.raises(apiary.InvalidArgumentsError, match="role"):
        store.authorize(admin.key, "superuser")
    with pytest.raises(apiary.InvalidArgumentsError, match="label"):
        store.create("invoke", "x" * 1000)
    with pytest.raises(apiary.InvalidArgumentsError, match="label"):
        store.create("invoke", 7)  # type: ignore[arg-type]
    assert {key.role for key in store.list()} == {"admin", "invoke"}  # nothing else created


def test_malformed_and_wrong_keys_are_refused_alike(make_runtime: MakeRuntime) -> None:
    store = KeyStore(runtime(make_runtime))
    good = store.create("admin")
    other = store.create("invoke")
    for missing in (None, ""):
        with pytest.raises(apiary.AuthenticationError, match="missing API key"):
            store.verify(missing)
    _, secret = new_key()
    wrong = [
        "Bearer",
        f"Bearer {good.key}",  # the header value, not the key
        "apk_x",
        "apk_",
        good.key + "\n",
        good.key[:-1],
        good.key.upper(),
        format_key(good.key_id, secret),  # a valid ID, another secret
        format_key(good.key_id, other.key[-43:]),  # another key's secret
        format_key("0123456789ab", secret),  # an unknown ID
    ]
    for presented in wrong:
        with pytest.raises(apiary.AuthenticationError) as raised:
            store.verify(presented)
        # The same message whatever part was wrong.
        assert str(raised.value) == INVALID, presented
    assert store.verify(good.key).key_id == good.key_id


def test_secrets_are_stored_only_as_digests(make_runtime: MakeRuntime) -> None:
    rt = runtime(make_runtime)
    created = KeyStore(rt).create("admin", "ci")
    secret = created.key.split("_", 2)[2]
    assert len(secret) == 43
    (row,) = keys_table(rt)
    for column in row:
        assert secret not in str(column)
        assert created.key not in str(column)
    assert hashlib.sha256(secret.encode()).hexdigest() in row
    assert secret_digest(secret) in row


def test_a_revocation_reaches_other_frontends_within_the_ttl(make_runtime: MakeRuntime) -> None:
    rt = runtime(make_runtime)
    admin_store = KeyStore(rt)
    key = admin_store.create("invoke")
    frontend = KeyStore(rt, ttl=0.2)
    assert frontend.verify(key.key).key_id == key.key_id
    assert admin_store.revoke(key.key_id)
    time.sleep(0.3)
    with pytest.raises(apiary.AuthenticationError, match=INVALID):
        frontend.verify(key.key)


def test_verifications_are_cached_for_the_ttl(make_runtime: MakeRuntime) -> None:
    rt = runtime(make_runtime)
    key = KeyStore(rt).create("invoke")
    slow = KeyStore(rt, ttl=600)
    assert slow.verify(key.key).key_id == key.key_id
    assert KeyStore(rt).revoke(key.key_id)  # revoked by another frontend
    assert slow.verify(key.key).key_id == key.key_id  # still remembered
    with pytest.raises(apiary.AuthenticationError):
        KeyStore(rt).verify(key.key)  # a frontend that had not seen it refuses it


def test_rejections_are_cached_too(make_runtime: MakeRuntime) -> None:
    rt = runtime(make_runtime)
    key_id, secret = new_key()
    presented = format_key(key_id, secret)
    frontend = KeyStore(rt, ttl=0.2)
    with pytest.raises(apiary.AuthenticationError):
        frontend.verify(presented)  # unknown: remembered as a rejection
    now = time.time()
    digest = secret_digest(secret)
    assert rt._engine.transact(
        lambda db: insert_key(db, key_id, digest, "invoke", None, now), write=True
    )
    assert KeyStore(rt, ttl=0).verify(presented).key_id == key_id
    with pytest.raises(apiary.AuthenticationError):
        frontend.verify(presented)  # the rejection is remembered ...
    time.sleep(0.3)
    assert frontend.verify(presented).key_id == key_id  # ... for the ttl only


def test_the_cache_is_bounded(make_runtime: MakeRuntime) -> None:
    store = KeyStore(runtime(make_runtime), ttl=600, max_entries=3)
    good = store.create("invoke")
    for _ in range(10):
        with pytest.raises(apiary.AuthenticationError):
            store.verify(format_key(*new_key()))
        assert len(store._cache) <= 3
    assert store.verify(good.key).key_id == good.key_id
    assert len(store._cache) == 3
    with pytest.raises(ValueError, match="ttl"):
        KeyStore(runtime(make_runtime), ttl=-1)


def test_verify_from_many_threads(make_runtime: MakeRuntime) -> None:
    rt = runtime(make_runtime)
    # A short ttl, so that the threads both hit the cache and miss it.
    store = KeyStore(rt, ttl=0.005)
    keys = [store.create("admin"), store.create("invoke")]
    bad = format_key(keys[0].key_id, new_key()[1])
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def verify(n: int) -> None:
        try:
            start.wait()
            for i in range(40):
                key = keys[(n + i) % 2]
                assert store.verify(key.key).key_id == key.key_id
                with pytest.raises(apiary.AuthenticationError):
                    store.verify(bad)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=verify, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_verify_async(make_runtime: MakeRuntime) -> None:
    rt = runtime(make_runtime)
    store = KeyStore(rt)
    admin = store.create("admin")
    invoke = store.create("invoke")

    async def main() -> None:
        found = await asyncio.gather(*(store.verify_async(k.key) for k in (admin, invoke) * 4))
        assert [info.key_id for info in found] == [admin.key_id, invoke.key_id] * 4
        assert (await store.verify_async(admin.key)).role == "admin"  # from the cache
        assert (await store.authorize_async(admin.key, "admin")).role == "admin"
        with pytest.raises(apiary.PermissionDeniedError):
            await store.authorize_async(invoke.key, "admin")
        with pytest.raises(apiary.AuthenticationError, match="missing"):
            await store.verify_async(None)
        with pytest.raises(apiary.AuthenticationError, match=INVALID):
            await store.verify_async(format_key(admin.key_id, new_key()[1]))

    asyncio.run(main())


def test_bearer_token() -> None:
    assert bearer_token("Bearer apk_abc") == "apk_abc"
    assert bearer_token("bearer  apk_abc") == "apk_abc"
    for value in (None, "", "Bearer", "Bearer ", "Basic apk_abc", "Bearer a b", "apk_abc"):
        assert bearer_token(value) is None, value


# -- the `apiary keys` command, in-process --------------------------------------------


def keys_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="apiary")
    add_keys_commands(parser.add_subparsers(dest="command", required=True))
    code = run_keys_command(parser.parse_args(["keys", *argv]))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_command(
    capsys: pytest.CaptureFixture[str], engine_url: str, make_runtime: MakeRuntime
) -> None:
    # On a fresh database: the command installs the system tables.
    code, out, err = keys_cli(
        capsys, "create", "--role", "admin", "--label", "ops", "--db", engine_url
    )
    assert code == 0
    admin_key = out.strip()
    assert KEY.fullmatch(admin_key)
    assert "shown only this once" in err
    code, out, _ = keys_cli(capsys, "create", "--role", "invoke", "--db", engine_url, "--json")
    assert code == 0
    created = json.loads(out)
    assert set(created) == {"key_id", "role", "label", "created_at", "key"}
    assert (created["role"], created["label"]) == ("invoke", None)

    store = KeyStore(runtime(make_runtime), ttl=0)  # no cache: sees the revocation below
    assert store.authorize(admin_key, "admin").label == "ops"
    assert store.authorize(created["key"], "invoke").key_id == created["key_id"]

    code, out, _ = keys_cli(capsys, "revoke", created["key_id"], "--db", engine_url)
    assert (code, out.strip()) == (0, f"revoked key {created['key_id']}")
    code, _, err = keys_cli(capsys, "revoke", created["key_id"], "--db", engine_url)
    assert code == 1
    assert "no active key" in err
    with pytest.raises(apiary.AuthenticationError):
        store.verify(created["key"])

    code, out, _ = keys_cli(capsys, "list", "--db", engine_url, "--json")
    assert code == 0
    listed = {key["key_id"]: key for key in json.loads(out)}
    assert listed[created["key_id"]]["revoked_at"] is not None
    assert listed[admin_key[4:16]]["revoked_at"] is None
    assert all("key" not in key for key in listed.values())
    code, out, _ = keys_cli(capsys, "list", "--db", engine_url)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split("  ")[0] == "key_id"
    assert "revoked (UTC)" in header
    assert len(rows) == 2
    assert admin_key not in out
    assert created["key_id"] in out
    assert "ops" in out

    with pytest.raises(SystemExit):
        keys_cli(capsys, "create", "--role", "root", "--db", engine_url)


def test_the_keys_command_opens_postgresql_in_client_placement() -> None:
    assert admin_url("sqlite:///keys.db") == "sqlite:///keys.db"
    assert admin_url("postgresql://u:p@h:5432/d") == "postgresql://u:p@h:5432/d?placement=client"
    assert (
        admin_url("postgres://u@h/d?placement=db&pool_max=2")
        == "postgres://u@h/d?pool_max=2&placement=client"
    )
