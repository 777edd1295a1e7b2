"""The Redis transport's connections and scripts (see :mod:`asynctask.transports.redis`).

:class:`RedisConnection` holds redis-py's connection pool (admin and blocking calls, with its
retries) and the transport's own connections, over which the hot scripts (and the keyed state's
commands) go with RESP packed here (a fraction of redis-py's per-call cost).  :func:`load_script`
loads ``redis_<op>.lua`` (after ``redis_common.lua``) beside the transport; scripts run by EVALSHA
and are loaded again on NOSCRIPT.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import threading
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import AskError, NoScriptError
from redis.retry import Retry

from asynctask.errors import TransportError, TransportUnavailableError, TransportURLError
from asynctask.transports.base import ParsedURL


class Script:
    """A Lua script: its text (common head included but for submit_one) and SHA1."""

    def __init__(self, name: str) -> None:
        folder = resources.files("asynctask.transports")
        head = "" if name == "submit_one" else folder.joinpath("redis_common.lua").read_text(encoding="utf-8")
        self.name = name
        self.text = head + "\n" + folder.joinpath(f"redis_{name}.lua").read_text(encoding="utf-8")
        self.bsha = hashlib.sha1(self.text.encode()).hexdigest().encode()


def pack(args: Sequence[Any]) -> bytes:
    """A command in RESP: str (UTF-8), bytes and int arguments."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if type(arg) is bytes else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


@functools.cache
def load_script(name: str) -> Script:
    return Script(name)


class RedisConnection:
    """redis-py's pool plus the transport's own connections (``hot``: scripts; ``wait``: a blocking
    wait and the fetch after it), each with the pid that made it: fork-safe.  Thread-safe."""

    def __init__(self, parsed: ParsedURL, options: dict[str, Any], socket_timeout_s: float) -> None:
        self.socket_timeout_s = socket_timeout_s
        self._password = parsed.password
        self._where = self._address(parsed)
        #: The redis-py client (connection pool; a ``RedisCluster`` on a cluster).
        self.client: Any = self._connect(parsed, options)
        self._lock = threading.Lock()
        self._wait_lock = threading.Lock()
        # the transport's own connections (hot scripts; waits), each with the pid that made it
        self._own: dict[str, tuple[Any, int]] = {}

    def _common(self, parsed: ParsedURL, options: dict[str, Any]) -> dict[str, Any]:
        """redis-py connection arguments every form shares (TLS ones with ``ssl_*`` options)."""
        common: dict[str, Any] = {
            "username": parsed.username,
            "password": parsed.password,
            "socket_timeout": self.socket_timeout_s,
            "socket_connect_timeout": min(self.socket_timeout_s, 5.0),
            "retry": Retry(ExponentialBackoff(cap=0.1, base=0.01), 2),
            "decode_responses": False,
            "health_check_interval": 0,
        }
        if parsed.scheme.startswith("rediss"):
            common["ssl"] = True
            common["ssl_cert_reqs"] = options.get("ssl_cert_reqs", "required")
            if "ssl_ca_certs" in options:
                common["ssl_ca_certs"] = options["ssl_ca_certs"]
        return common

    def _connect(self, parsed: ParsedURL, options: dict[str, Any]) -> Any:
        """The redis-py client (subclasses: a cluster's, a Sentinel-managed master's)."""
        common = self._common(parsed, options)
        if parsed.scheme == "redis+unix":
            if not parsed.path:
                raise TransportURLError(f"transport URL {parsed.masked!r} names no socket path")
            return redis.Redis(unix_socket_path=parsed.path, db=options.get("db", 0), **common)
        db_text = parsed.path.strip("/")
        if db_text and not db_text.isdigit():
            raise TransportURLError(f"transport URL {parsed.masked!r}: the path must be a database number")
        return redis.Redis(host=parsed.host or "localhost", port=parsed.port or 6379, db=int(db_text or 0), **common)

    def _address(self, parsed: ParsedURL) -> str:
        """Where this connection goes, as errors name it."""
        if parsed.scheme == "redis+unix":
            return parsed.path
        return f"{parsed.host or 'localhost'}:{parsed.port or 6379}"

    def _unavailable(self, exc: Exception, where: str | None = None) -> TransportUnavailableError:
        # redis-py says "Error 111 connecting to host:port. Connection refused.": keep the reason.
        reason = re.sub(r"^Error -?\d+ connecting to \S+?\. ", "", str(exc)).rstrip(".") or type(exc).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        return TransportUnavailableError(f"cannot reach Redis at {where or self._where}: {reason}")

    def execute(self, *args: Any) -> Any:
        """One command through redis-py's pool (with its retries): admin and blocking calls."""
        try:
            return self.client.execute_command(*args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unavailable(exc) from None
        except redis.RedisError as exc:
            raise self._failed(exc) from None

    def eval(self, script: Script, base: bytes, *args: Any, repeat: bool = True) -> Any:
        return self.evals([(script, base, args)], repeat=repeat)[0]

    def evals(self, calls: Sequence[tuple[Script, bytes, Sequence[Any]]], *, repeat: bool = True) -> list[Any]:
        """Run scripts in one round trip on the transport's own connection (each call atomic).

        The hot path: RESP is packed here and sent on a dedicated connection, which costs a
        fraction of a pooled redis-py call.  A connection that broke (server restarted) is
        reconnected and the calls sent once more (every script is safe to repeat); NOSCRIPT loads
        the scripts and sends again.  ``repeat=False`` is for calls whose reply would lie when
        repeated (a cancel, an add): a connection that went stale while idle is replaced before
        sending, and one that breaks after sending raises TransportUnavailableError (the outcome is
        unknown) instead of sending again.
        """
        blob = b"".join(pack((b"EVALSHA", script.bsha, b"1", base, *args)) for script, base, args in calls)
        return self.send(blob, [script for script, _, _ in calls], repeat=repeat)

    def command(self, *args: Any, repeat: bool = True) -> Any:
        """One plain command on the transport's own connection (as :meth:`evals`); its reply."""
        return self.send(pack(args), [None], repeat=repeat)[0]

    def send(self, blob: bytes, scripts: Sequence[Script | None], *, repeat: bool = True) -> list[Any]:
        """Send the commands packed in ``blob``: EVALSHA of each script in ``scripts`` (None: a plain
        command) in that order; their replies."""
        with self._lock:
            for attempt in range(3):
                conn = self._own_connection("hot")
                if not repeat:
                    self._drop_stale(conn)
                try:
                    conn.send_packed_command([blob], check_health=False)
                    replies: list[Any] = []
                    for _ in scripts:
                        try:
                            replies.append(conn.read_response())
                        except redis.ResponseError as exc:
                            replies.append(exc)
                except (redis.TimeoutError, redis.ConnectionError, OSError) as exc:
                    self._broken(conn, exc, last=attempt > 0 or not repeat)
                    continue
                except BaseException:
                    conn.disconnect()  # replies may be left unread: never reuse the connection
                    raise
                errors = [reply for reply in replies if isinstance(reply, redis.ResponseError)]
                if not errors:
                    return replies
                if not all(isinstance(error, NoScriptError) for error in errors) or attempt == 2:
                    raise self._failed(errors[0])
                for script in {id(script): script for script in scripts if script is not None}.values():
                    conn.send_packed_command([pack((b"SCRIPT", b"LOAD", script.text))], check_health=False)
                    conn.read_response()
        raise AssertionError("unreachable")

    def _failed(self, error: Exception) -> TransportError:
        if isinstance(error, AskError):  # MOVED too: a cluster node behind a redis:// URL
            return TransportError(
                f"Redis at {self._where} is a Redis Cluster node (slot {error.slot_id} is served by "
                f"{error.node_addr[0]}:{error.node_addr[1]}): use a redis+cluster:// URL"
            )
        return TransportError(f"Redis at {self._where} failed: {error}")

    def _broken(self, conn: Any, exc: Exception, *, last: bool) -> None:
        """``conn`` failed with ``exc``: disconnect it; raise TransportUnavailableError on a timeout
        (the server is silent) or when this was the ``last`` attempt, else return (send again)."""
        conn.disconnect()
        if last or isinstance(exc, redis.TimeoutError):
            raise self._unavailable(exc) from None

    @staticmethod
    def _drop_stale(conn: Any) -> None:
        """Disconnect ``conn`` when it is connected and readable while idle (closed by the server, a
        restart): the next send reconnects, so a command is never sent on a dead connection."""
        if getattr(conn, "_sock", None) is None:
            return
        try:
            stale = conn.can_read(0)
        except (redis.ConnectionError, OSError):
            stale = True
        if stale:
            conn.disconnect()

    def _own_connection(self, name: str) -> Any:
        """The transport's own connection ``name`` (caller holds its lock); new in a forked child."""
        conn, pid = self._own.get(name, (None, 0))
        if conn is None or pid != os.getpid():
            pool = self.client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
            self._own[name] = (conn, os.getpid())
        return conn

    def wait_then_fetch(self, base: bytes, block_s: float, fetch: Script, args: tuple[Any, ...]) -> Any:
        """BLPOP the queue's wake list, then ``fetch``: both sent at once on a connection kept for
        waiting, so the server runs the fetch the moment a token comes (no round trip between)."""
        if not self._wait_lock.acquire(blocking=False):  # another thread of ours is waiting
            self.execute("BLPOP", base + b"wake", round(block_s, 3))
            return self.eval(fetch, base, *args)
        try:
            blob = pack((b"BLPOP", base + b"wake", b"%.3f" % block_s)) + pack(
                (b"EVALSHA", fetch.bsha, b"1", base, *args)
            )
            for attempt in range(2):
                conn = self._own_connection("wait")
                try:
                    conn.send_packed_command([blob], check_health=False)
                    try:
                        conn.read_response()
                    except redis.ResponseError:
                        pass  # UNBLOCKED (the server became a replica), READONLY...: the fetch's reply tells
                    try:
                        return conn.read_response()
                    except redis.ResponseError:
                        break  # NOSCRIPT or an error: the fetch below loads the script or raises TransportError
                except (redis.TimeoutError, redis.ConnectionError, OSError) as exc:
                    self._broken(conn, exc, last=attempt > 0)
                except BaseException:
                    conn.disconnect()  # replies may be left unread: never reuse the connection
                    raise
        finally:
            self._wait_lock.release()
        return self.eval(fetch, base, *args)

    def wait_replicas(self, base: bytes, count: int, timeout_s: float) -> None:
        """``WAIT`` on the connection that sent the writes of ``base``'s queue: return once ``count``
        replicas have them; raise TransportError when fewer did within ``timeout_s``."""
        self._check_replicas(self.command(b"WAIT", count, max(int(timeout_s * 1000), 1)), count, self._where)

    @staticmethod
    def _check_replicas(acknowledged: int, count: int, where: str) -> None:
        if int(acknowledged) < count:
            raise TransportError(
                f"Redis at {where}: only {acknowledged} of {count} replica(s) acknowledged the submit in time "
                "(wait_replicas); the task is stored on the master, a failover now may lose it"
            )

    def topology(self) -> dict[str, Any]:
        """What :meth:`Transport.topology` reports (subclasses: cluster nodes, the Sentinels' master)."""
        return {}

    def close(self) -> None:
        """Disconnect every connection.  Idempotent."""
        for name in list(self._own):  # "hot", "wait" (a cluster's: "hot@host:port", "wait@host:port")
            with self._wait_lock if name.startswith("wait") else self._lock:
                conn, pid = self._own.pop(name, (None, 0))
                if conn is not None and pid == os.getpid():
                    conn.disconnect()
        self.client.close()
