-- asynctask PostgreSQL schema, version 2: keyed state and cancel.  Applied by
-- asynctask.transports.pgsql after version 1 (to a new schema, or to one a release of version 1
-- made), in the same transaction under pg_advisory_xact_lock; @schema@ is the quoted schema name.

-- Keyed state (state_put, state_add, state_get...): a record is live while expires_at is in the
-- future on the server's clock.  Reads skip expired rows; state_sweep deletes them, through
-- state_expiry (one index probe when nothing expired).
CREATE TABLE IF NOT EXISTS @schema@.state (
    queue text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    expires_at timestamptz NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (queue, key)
);

CREATE INDEX IF NOT EXISTS state_expiry ON @schema@.state (expires_at);

-- cancel finds a task by its public id.  A hash index: equality is all it is asked for, and with
-- random ids it costs a COPY of many tasks less than a btree would.  Building it takes a lock that
-- holds writes to tasks back while it runs (once, during this migration).
CREATE INDEX IF NOT EXISTS tasks_id ON @schema@.tasks USING hash (id);
