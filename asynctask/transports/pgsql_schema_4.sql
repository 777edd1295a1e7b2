-- asynctask PostgreSQL schema, version 4: the hot statements as PL/pgSQL functions (issue 16).
-- Applied by asynctask.transports.pgsql after version 3, in the same transaction under
-- pg_advisory_xact_lock; @schema@ is the quoted schema name, @schema_name@ the bare one.
--
-- Why: the statements used to be SQL PREPAREd once per connection, which breaks through a pooler in
-- transaction mode (PgBouncer hands the server connection holding the prepared statement to other
-- clients).  Sent as plain text, a statement is planned at every call (about 0.1 ms for a fetch:
-- more than a one-row ack takes).  PL/pgSQL keeps the plans of a function's statements per server
-- connection, as PREPARE did, and needs no session state on the client's side: any server
-- connection of a pool runs these.  The others stay plain statements (pgsql_queries.sql), rare or
-- big enough for the planning not to show (a fetch of a batch uses the plain statement: its plan
-- is paid once for the batch, and it spares the function's copy of the rows).  A later release that changes one of these bodies does it in a new version
-- (CREATE OR REPLACE), never by editing this file.
--
-- Processes of the previous release keep working (they do not call these).

-- fetch: lock the candidates, update them through the primary key, return them in fetch order.
CREATE OR REPLACE FUNCTION @schema@.fetch_tasks(text, integer, bigint, float8)
RETURNS TABLE (rowid bigint, id text, body text, attempts integer, enqueued_at float8, priority smallint)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH c AS (
        SELECT t.rowid, t.priority, t.visible_at FROM @schema@.tasks AS t
        WHERE t.queue = $1 AND t.visible_at <= now()
        ORDER BY t.priority DESC, t.visible_at, t.rowid
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ), taken AS (
        UPDATE @schema@.tasks AS t
        SET receipt = $3, visible_at = now() + $4 * interval '1 second', attempts = t.attempts + 1
        WHERE t.rowid = ANY (ARRAY(SELECT c.rowid FROM c))
        RETURNING t.rowid, t.id, t.body, t.attempts, t.enqueued_at, t.priority
    )
    SELECT taken.rowid, translate(taken.id::text, '-', ''), taken.body, taken.attempts,
           extract(epoch FROM taken.enqueued_at)::float8, taken.priority
    FROM taken JOIN c ON c.rowid = taken.rowid
    ORDER BY c.priority DESC, c.visible_at, taken.rowid;
END
$fn$;

-- submit of one task; NOTIFY only when the queue has a waiter.
CREATE OR REPLACE FUNCTION @schema@.submit_one(uuid, text, smallint, float8, text)
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO @schema@.tasks (id, queue, priority, visible_at, body)
    VALUES ($1, $2, $3, now() + $4 * interval '1 second', $5);
    IF EXISTS (SELECT FROM @schema@.waiters AS w WHERE w.queue = $2) THEN
        PERFORM pg_notify('asynctask_' || md5('@schema_name@.' || $2), '');
    END IF;
END
$fn$;

-- ack: the rows deleted (0 or 1).
CREATE OR REPLACE FUNCTION @schema@.ack_task(bigint, bigint)
RETURNS integer LANGUAGE plpgsql AS $fn$
DECLARE
    n integer;
BEGIN
    DELETE FROM @schema@.tasks AS t WHERE t.rowid = $1 AND t.receipt = $2;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

-- ack of many (rowids, receipts): the rows deleted.
CREATE OR REPLACE FUNCTION @schema@.ack_tasks(bigint[], bigint[])
RETURNS integer LANGUAGE plpgsql AS $fn$
DECLARE
    n integer;
BEGIN
    DELETE FROM @schema@.tasks AS t USING unnest($1, $2) AS a (rowid, receipt)
    WHERE t.rowid = a.rowid AND t.receipt = a.receipt;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

-- nack (rowid, receipt, delay_s, 1 to leave attempts as they were else 0): the rows changed.
CREATE OR REPLACE FUNCTION @schema@.nack_task(bigint, bigint, float8, integer)
RETURNS integer LANGUAGE plpgsql AS $fn$
DECLARE
    q text;
BEGIN
    UPDATE @schema@.tasks AS t
    SET receipt = NULL, visible_at = now() + $3 * interval '1 second', attempts = t.attempts - $4
    WHERE t.rowid = $1 AND t.receipt = $2
    RETURNING t.queue INTO q;
    IF q IS NULL THEN
        RETURN 0;
    END IF;
    IF EXISTS (SELECT FROM @schema@.waiters AS w WHERE w.queue = q) THEN
        PERFORM pg_notify('asynctask_' || md5('@schema_name@.' || q), '');
    END IF;
    RETURN 1;
END
$fn$;

-- extend (rowid, receipt, lease_s): the rows changed (0 or 1).
CREATE OR REPLACE FUNCTION @schema@.extend_task(bigint, bigint, float8)
RETURNS integer LANGUAGE plpgsql AS $fn$
DECLARE
    n integer;
BEGIN
    UPDATE @schema@.tasks AS t SET visible_at = now() + $3 * interval '1 second'
    WHERE t.rowid = $1 AND t.receipt = $2;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;
