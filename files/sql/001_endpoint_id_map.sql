-- 001: endpoint registry (Project 8 slow-control layout, dripline "endpoint_id_map").
-- Re-runnable: every statement is guarded.  Runs as the database owner (no superuser needed).

-- Timestamps in this database are UTC "timestamp without time zone".  Make UTC the default
-- session time zone so that timestamptz values (e.g. from clients sending aware datetimes) and
-- now()::timestamp are converted in UTC.  Needs ownership of the database; skipped otherwise.
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET timezone TO %L', current_database(), 'UTC');
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'not the database owner: default time zone left unchanged (use UTC clients)';
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE t.typname = 'endpoint_data_type' AND n.nspname = 'public'
    ) THEN
        CREATE TYPE public.endpoint_data_type AS ENUM ('numeric', 'string', 'json');
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS public.endpoint_id_map (
    endpoint_id   serial PRIMARY KEY,
    endpoint_name varchar(256) NOT NULL UNIQUE,
    type          public.endpoint_data_type NOT NULL,
    CONSTRAINT endpoint_name_not_blank CHECK (btrim(endpoint_name) <> '')
);

COMMENT ON TABLE public.endpoint_id_map IS
    'Endpoints whose sensor_value alerts are stored; type selects the data table.';
