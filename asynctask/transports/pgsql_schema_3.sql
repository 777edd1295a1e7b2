-- asynctask PostgreSQL schema, version 3: dead letters for export, import and migrate (issue 18).
-- Applied by asynctask.transports.pgsql after version 2 (to a new schema, or to one a release of
-- version 1 or 2 made), in the same transaction under pg_advisory_xact_lock; @schema@ is the quoted
-- schema name.
--
-- * dead.enqueued_at: when the task was first enqueued, kept by bury and put_dead (NULL: unknown,
--   the dead letters of older releases; read as 0).  Nullable and without a default, so adding it
--   rewrites nothing.
-- * dead's primary key becomes (queue, id): a task id may be dead in several queues (put_dead copies
--   dead letters from one queue into another).  The old key was id alone.
-- * dead_queue_order becomes (queue, dead_at, n): dead_page and dead_tasks list oldest first, and
--   dead_page pages by keyset (dead_at, n) > cursor: one index range per page, never a scan.  n alone
--   was insertion order, which a re-bury (it sets dead_at again) or a put_dead of old letters breaks.
--
-- Processes of the previous release that are still connected keep working, but for one statement:
-- their bury (dead()) names the old key (ON CONFLICT (id)) and fails until they are restarted on this
-- release; the task they held stays in flight and is delivered again when its lease runs out, so
-- nothing is lost.  Their dead_tasks listing (ORDER BY n) sorts instead of reading an index.  A
-- release of version 2 refuses to open a new connection to this schema (its version is newer).
-- The ALTERs lock dead (not tasks) while the primary key is rebuilt: moments for 100,000 letters.

ALTER TABLE @schema@.dead ADD COLUMN IF NOT EXISTS enqueued_at timestamptz;

ALTER TABLE @schema@.dead DROP CONSTRAINT IF EXISTS dead_pkey;
ALTER TABLE @schema@.dead ADD CONSTRAINT dead_pkey PRIMARY KEY (queue, id);

DROP INDEX IF EXISTS @schema@.dead_queue_order;
CREATE INDEX dead_queue_order ON @schema@.dead (queue, dead_at, n);
