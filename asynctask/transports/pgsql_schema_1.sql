-- asynctask PostgreSQL schema, version 1.  Applied by asynctask.transports.pgsql in one
-- transaction under pg_advisory_xact_lock; @schema@ is the quoted schema name.
CREATE SCHEMA IF NOT EXISTS @schema@;

-- One row per applied schema version; the highest is the current one.
CREATE TABLE IF NOT EXISTS @schema@.schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Every queue that holds or held a task (queues()).
CREATE TABLE IF NOT EXISTS @schema@.queues (
    name text COLLATE "C" PRIMARY KEY
);

-- Ready, delayed and in-flight tasks.  A row is ready when visible_at <= now(); in flight while
-- receipt IS NOT NULL and visible_at (the lease end) is in the future; delayed while receipt IS
-- NULL and visible_at is in the future.  An expired lease is therefore ready again without any
-- write.  rowid is the physical key (ack/nack/extend find a row by it); id is the public task id.
CREATE TABLE IF NOT EXISTS @schema@.tasks (
    rowid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id uuid NOT NULL,
    receipt bigint,
    visible_at timestamptz NOT NULL DEFAULT now(),
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    priority smallint NOT NULL DEFAULT 0,
    queue text COLLATE "C" NOT NULL,
    body text NOT NULL
);

-- Matches the fetch's ORDER BY: priority (high first), then the time the task became ready, then
-- insertion order.
CREATE INDEX IF NOT EXISTS tasks_fetch_order ON @schema@.tasks (queue, priority DESC, visible_at, rowid);

-- Dead letters, in order of death (n).
CREATE TABLE IF NOT EXISTS @schema@.dead (
    id uuid PRIMARY KEY,
    n bigint GENERATED ALWAYS AS IDENTITY,
    dead_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL,
    priority smallint NOT NULL,
    queue text COLLATE "C" NOT NULL,
    reason text NOT NULL,
    body text NOT NULL
);

CREATE INDEX IF NOT EXISTS dead_queue_order ON @schema@.dead (queue, n);

-- Consumers blocked in get_task (one row per queue and listening backend): submit, nack and replay
-- send a NOTIFY only when the queue has one.  Unlogged: it describes live sessions only.
CREATE UNLOGGED TABLE IF NOT EXISTS @schema@.waiters (
    queue text COLLATE "C" NOT NULL,
    pid integer NOT NULL,
    since timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, pid)
);

-- claim_once: a key is held until expires_at.
CREATE TABLE IF NOT EXISTS @schema@.claims (
    key text COLLATE "C" PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
