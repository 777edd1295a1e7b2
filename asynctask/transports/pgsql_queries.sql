-- Statements of asynctask.transports.pgsql.  Each starts with "-- name: <name> (<parameter types>)"
-- ("(copy)": run as it is) and is sent as plain text, each $n replaced by its argument cast to its
-- type: no PREPARE, nothing kept in the session, so any server connection of a pooler in transaction
-- mode runs it.  The hot ones call the PL/pgSQL functions of schema version 4 (pgsql_schema_4.sql),
-- whose plans the server keeps per connection.  @schema@ is the quoted schema name, @schema_name@ the
-- bare one; no statement holds a percent sign.  Statements that make tasks ready send the NOTIFY
-- themselves (no extra round trip), and only when a consumer of the queue is registered in waiters,
-- so that producers pay nothing for it while consumers are busy.

-- name: register (text)
INSERT INTO @schema@.queues (name) VALUES ($1) ON CONFLICT DO NOTHING;

-- name: submit_one (uuid, text, smallint, float8, text)
SELECT @schema@.submit_one($1, $2, $3, $4, $5);

-- name: copy_tasks (copy)
COPY @schema@.tasks (id, queue, priority, body) FROM STDIN;

-- name: notify (text)
SELECT pg_notify('asynctask_' || md5('@schema_name@.' || $1), '') FROM @schema@.waiters WHERE queue = $1 LIMIT 1;

-- name: submit_many (uuid[], text, smallint, float8, json)
-- $5 is a JSON array of the bodies (one text parameter: far cheaper to send than a text[]).
WITH i AS (
    INSERT INTO @schema@.tasks (id, queue, priority, visible_at, body)
    SELECT u.id, $2, $3, now() + $4 * interval '1 second', u.body
    FROM unnest($1, ARRAY(SELECT j.body FROM json_array_elements_text($5) WITH ORDINALITY AS j (body, n) ORDER BY n))
        AS u (id, body)
)
SELECT pg_notify('asynctask_' || md5('@schema_name@.' || $2), '') FROM @schema@.waiters WHERE queue = $2 LIMIT 1;

-- name: probe (text)
-- The LISTEN check: a NOTIFY on a channel only the checking listener listens to.
SELECT pg_notify($1, '');

-- name: topology ()
-- What asynctask doctor shows: the server's address and port as it sees them (NULL: a unix socket).
SELECT host(inet_server_addr()), inet_server_port(), pg_backend_pid(), current_setting('server_version'),
       pg_is_in_recovery();

-- name: wait (text)
INSERT INTO @schema@.waiters (queue, pid) VALUES ($1, pg_backend_pid()) ON CONFLICT DO NOTHING;

-- name: unwait (text)
DELETE FROM @schema@.waiters WHERE queue = $1 AND pid = pg_backend_pid();

-- name: forget_waiters ()
DELETE FROM @schema@.waiters AS w
WHERE w.pid = pg_backend_pid() OR NOT EXISTS (SELECT FROM pg_stat_activity AS a WHERE a.pid = w.pid);

-- name: fetch (text, integer, bigint, float8)
-- The candidates are locked first, then updated through the primary key (= ANY: never a scan of
-- the table, whatever the planner thinks of its size), then returned in fetch order.
WITH c AS (
    SELECT rowid, priority, visible_at FROM @schema@.tasks
    WHERE queue = $1 AND visible_at <= now()
    ORDER BY priority DESC, visible_at, rowid
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE @schema@.tasks AS t
    SET receipt = $3, visible_at = now() + $4 * interval '1 second', attempts = t.attempts + 1
    WHERE t.rowid = ANY (ARRAY(SELECT rowid FROM c))
    RETURNING t.rowid, t.id, t.body, t.attempts, t.enqueued_at, t.priority
)
SELECT taken.rowid, translate(taken.id::text, '-', ''), taken.body, taken.attempts,
       extract(epoch FROM taken.enqueued_at)::float8, taken.priority
FROM taken JOIN c USING (rowid)
ORDER BY c.priority DESC, c.visible_at, taken.rowid;

-- name: fetch_few (text, integer, bigint, float8)
-- The same through pgsql_schema_4.sql's fetch_tasks, whose plan the server keeps: for a few rows,
-- where planning the statement above would be a fair part of the call (a batch pays it once).
SELECT * FROM @schema@.fetch_tasks($1, $2, $3, $4);

-- name: next_due (text)
SELECT extract(epoch FROM min(visible_at) - now())::float8
FROM @schema@.tasks WHERE queue = $1 AND visible_at > now();

-- name: ack (bigint, bigint)
SELECT @schema@.ack_task($1, $2);

-- name: ack_many (bigint[], bigint[])
SELECT @schema@.ack_tasks($1, $2);

-- name: nack (bigint, bigint, float8, integer)
SELECT @schema@.nack_task($1, $2, $3, $4);

-- name: extend (bigint, bigint, float8)
SELECT @schema@.extend_task($1, $2, $3);

-- name: bury (bigint, bigint, text)
WITH d AS (
    DELETE FROM @schema@.tasks WHERE rowid = $1 AND receipt = $2
    RETURNING id, queue, priority, attempts, enqueued_at, body
)
INSERT INTO @schema@.dead (id, queue, priority, attempts, enqueued_at, reason, body)
SELECT id, queue, priority, attempts, enqueued_at, $3, body FROM d
ON CONFLICT (queue, id) DO UPDATE SET
    priority = excluded.priority, attempts = excluded.attempts, enqueued_at = excluded.enqueued_at,
    reason = excluded.reason, body = excluded.body, dead_at = excluded.dead_at;

-- name: stats (text)
SELECT count(*) FILTER (WHERE visible_at <= now()),
       count(*) FILTER (WHERE visible_at > now() AND receipt IS NULL),
       count(*) FILTER (WHERE visible_at > now() AND receipt IS NOT NULL),
       (SELECT count(*) FROM @schema@.dead WHERE queue = $1),
       extract(epoch FROM now() - min(enqueued_at) FILTER (WHERE visible_at <= now()))::float8
FROM @schema@.tasks WHERE queue = $1;

-- name: queues ()
SELECT name FROM @schema@.queues ORDER BY name;

-- name: purge (text)
DELETE FROM @schema@.tasks WHERE queue = $1 AND (receipt IS NULL OR visible_at <= now());

-- name: dead_tasks (text, integer)
-- Oldest first (dead_queue_order, schema version 3); the columns of DeadTask.
SELECT translate(id::text, '-', ''), queue, body, reason, attempts, extract(epoch FROM dead_at)::float8, priority,
       coalesce(extract(epoch FROM enqueued_at)::float8, 0)
FROM @schema@.dead WHERE queue = $1 ORDER BY dead_at, n LIMIT $2;

-- name: replay (text, text[])
WITH d AS (
    DELETE FROM @schema@.dead WHERE queue = $1 AND ($2 IS NULL OR id = ANY ($2::uuid[]))
    RETURNING n, id, priority, body
), i AS (
    INSERT INTO @schema@.tasks (id, queue, priority, body)
    SELECT id, $1, priority, body FROM d ORDER BY n
    RETURNING 1
)
SELECT count(*),
       (SELECT pg_notify('asynctask_' || md5('@schema_name@.' || $1), '') FROM @schema@.waiters WHERE queue = $1 LIMIT 1)
FROM i;

-- name: purge_dead (text, text[])
WITH d AS (
    DELETE FROM @schema@.dead WHERE queue = $1 AND ($2 IS NULL OR id = ANY ($2::uuid[]))
    RETURNING 1
)
SELECT count(*) FROM d;

-- name: claim (text, float8)
INSERT INTO @schema@.claims (key, expires_at) VALUES ($1, now() + $2 * interval '1 second')
ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at WHERE claims.expires_at <= now()
RETURNING 1;

-- name: forget_claims ()
DELETE FROM @schema@.claims WHERE expires_at < now() - interval '1 hour';

-- Keyed state (schema version 2).  A record is live while expires_at > now(); now() is the start of
-- the statement's transaction (autocommit: the statement's own), on the server's clock.

-- name: state_put (text, text, text, float8)
INSERT INTO @schema@.state AS s (queue, key, expires_at, value)
VALUES ($1, $2, now() + $4 * interval '1 second', $3)
ON CONFLICT (queue, key) DO UPDATE SET expires_at = excluded.expires_at, value = excluded.value;

-- name: state_add (text, text, text, float8)
-- Returns a row when it wrote.  Under READ COMMITTED, a caller that meets a row inserted or updated
-- by a concurrent caller waits for it to commit, then locks the row's newest version and checks the
-- WHERE against that version (not its snapshot): of concurrent callers exactly one writes.
INSERT INTO @schema@.state AS s (queue, key, expires_at, value)
VALUES ($1, $2, now() + $4 * interval '1 second', $3)
ON CONFLICT (queue, key) DO UPDATE SET expires_at = excluded.expires_at, value = excluded.value
WHERE s.expires_at <= now()
RETURNING 1;

-- name: state_get (text, text)
SELECT value FROM @schema@.state WHERE queue = $1 AND key = $2 AND expires_at > now();

-- name: state_get_many (text, text[])
-- One row per key given, in order (NULL value: no live record).
SELECT s.value
FROM unnest($2) WITH ORDINALITY AS k (key, n)
LEFT JOIN @schema@.state AS s ON s.queue = $1 AND s.key = k.key AND s.expires_at > now()
ORDER BY k.n;

-- name: state_delete (text, text)
-- Removes an expired row too; returns whether the row was live.
DELETE FROM @schema@.state WHERE queue = $1 AND key = $2 RETURNING expires_at > now();

-- name: state_keys (text, text)
-- The range bounds the primary key's scan: in byte order (COLLATE "C") every key that starts with
-- $2 lies in it, since keys hold no character above 'z' (< '~'); starts_with keeps those that do.
SELECT key FROM @schema@.state
WHERE queue = $1 AND key >= $2 AND key < $2 || '~' AND starts_with(key, $2) AND expires_at > now()
ORDER BY key;

-- name: state_sweep (integer)
-- At most $1 expired rows (the caller repeats while it gets $1), so the shared connection is never
-- held long; rows another session holds (a state_add taking an expired key over) are skipped, and
-- the re-check of expires_at keeps a row that was written again meanwhile.
DELETE FROM @schema@.state AS s
USING (SELECT queue, key FROM @schema@.state WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED) AS e
WHERE s.queue = e.queue AND s.key = e.key AND s.expires_at <= now();

-- name: cancel (text, uuid)
-- Ready or delayed (not leased: no receipt, or a lease that ran out), as purge.  A fetch leasing
-- the row at the same moment holds it FOR UPDATE: this waits, re-checks the leased row and leaves
-- it.  Nothing becomes ready, so no NOTIFY; stats count rows, so they need nothing either.
DELETE FROM @schema@.tasks WHERE id = $2 AND queue = $1 AND (receipt IS NULL OR visible_at <= now());

-- Transfer (asynctask.transports.pgsql_transfer; schema version 3).  Waiting = not held by a
-- worker: no receipt, or a lease that ran out.  The last column of peek and take is the delay left.

-- name: peek (text, bigint, integer)
-- In rowid order after the cursor $2 (rowids never change: a stable order).
SELECT rowid, translate(id::text, '-', ''), body, attempts, extract(epoch FROM enqueued_at)::float8, priority,
       CASE WHEN receipt IS NULL AND visible_at > now() THEN extract(epoch FROM visible_at - now())::float8 ELSE 0 END
FROM @schema@.tasks
WHERE queue = $1 AND rowid > $2 AND (receipt IS NULL OR visible_at <= now())
ORDER BY rowid
LIMIT $3;

-- name: take (text, integer, bigint, float8)
-- As fetch, delayed tasks included and the attempts left alone: a lease that runs out leaves the
-- task ready (visible_at = the lease end), as an expired delivery does.
WITH c AS (
    SELECT rowid, priority, visible_at, receipt FROM @schema@.tasks
    WHERE queue = $1 AND (receipt IS NULL OR visible_at <= now())
    ORDER BY priority DESC, visible_at, rowid
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE @schema@.tasks AS t
    SET receipt = $3, visible_at = now() + $4 * interval '1 second'
    WHERE t.rowid = ANY (ARRAY(SELECT rowid FROM c))
    RETURNING t.rowid, t.id, t.body, t.attempts, t.enqueued_at, t.priority
)
SELECT taken.rowid, translate(taken.id::text, '-', ''), taken.body, taken.attempts,
       extract(epoch FROM taken.enqueued_at)::float8, taken.priority,
       CASE WHEN c.receipt IS NULL AND c.visible_at > now() THEN extract(epoch FROM c.visible_at - now())::float8
            ELSE 0 END
FROM taken JOIN c USING (rowid)
ORDER BY c.priority DESC, c.visible_at, taken.rowid;

-- name: put_tasks (text, json)
-- $2: a JSON array of {"i": id, "p": priority, "a": attempts, "e": enqueued_at (epoch s, null:
-- now), "d": delay_s, "b": body}, ids distinct.  Ids the queue holds (waiting, held or dead) are
-- skipped: the caller runs this after pg_advisory_xact_lock of the queue in the same transaction,
-- so concurrent puts of one id do not both store it (tasks.id has no unique index: COPY is faster
-- without one).  Returns the ids stored; NOTIFY as submit, when it stored any.
WITH r AS (
    SELECT * FROM json_to_recordset($2) AS r (i uuid, p smallint, a integer, e float8, d float8, b text)
), i AS (
    INSERT INTO @schema@.tasks (id, queue, priority, attempts, enqueued_at, visible_at, body)
    SELECT r.i, $1, r.p, r.a, coalesce(to_timestamp(r.e), now()), now() + r.d * interval '1 second', r.b
    FROM r
    WHERE NOT EXISTS (SELECT FROM @schema@.tasks AS t WHERE t.id = r.i AND t.queue = $1)
      AND NOT EXISTS (SELECT FROM @schema@.dead AS d WHERE d.queue = $1 AND d.id = r.i)
    RETURNING id
)
SELECT translate(i.id::text, '-', ''),
       (SELECT count(*) FROM (
           SELECT pg_notify('asynctask_' || md5('@schema_name@.' || $1), '') FROM @schema@.waiters WHERE queue = $1 LIMIT 1
       ) AS n)
FROM i;

-- name: dead_page (text, bigint, bigint, integer)
-- Oldest first after the cursor (dead_at in microseconds since the epoch $2, n $3): one range of
-- dead_queue_order.  The last two columns make the cursor of the row.
SELECT translate(id::text, '-', ''), queue, body, reason, attempts, extract(epoch FROM dead_at)::float8, priority,
       coalesce(extract(epoch FROM enqueued_at)::float8, 0),
       (extract(epoch FROM dead_at) * 1000000)::bigint, n
FROM @schema@.dead
WHERE queue = $1 AND (dead_at, n) > (timestamptz 'epoch' + $2 * interval '1 microsecond', $3)
ORDER BY dead_at, n
LIMIT $4;

-- name: put_dead (text, json)
-- $2: a JSON array of {"i": id, "p": priority, "a": attempts, "e": enqueued_at (null: unknown),
-- "t": dead_at (null: now), "w": reason, "b": body}.  Ids dead in the queue already, or waiting or
-- held in it, are skipped.  Returns the ids stored.
INSERT INTO @schema@.dead (id, queue, priority, attempts, enqueued_at, dead_at, reason, body)
SELECT r.i, $1, r.p, r.a, to_timestamp(r.e), coalesce(to_timestamp(r.t), now()), r.w, r.b
FROM json_to_recordset($2) AS r (i uuid, p smallint, a integer, e float8, t float8, w text, b text)
WHERE NOT EXISTS (SELECT FROM @schema@.tasks AS t WHERE t.id = r.i AND t.queue = $1)
ON CONFLICT (queue, id) DO NOTHING
RETURNING translate(id::text, '-', '');
