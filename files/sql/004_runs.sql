-- 004: run registration, schema "runs" (hard-coded by dragonfly's RunDBInterface).
-- run_id / run_name / start_timestamp / daq_id keep their dragonfly meaning: a DAQ inserts
-- run_name (plus defaults such as daq_id) and gets run_id and start_timestamp back; the snapshot
-- of a run starts at start_timestamp.  Timestamps are UTC, without time zone.
-- Optional bookkeeping: end_timestamp (set when the run ends), run_time_s (requested duration),
-- daq_name, operator, comment; run_duration_s is derived.

CREATE SCHEMA IF NOT EXISTS runs;

CREATE TABLE IF NOT EXISTS runs.run_table (
    run_id          serial PRIMARY KEY,
    run_name        text NOT NULL,
    start_timestamp timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    daq_id          integer,
    end_timestamp   timestamp without time zone NULL,
    run_time_s      double precision NULL,
    daq_name        text NULL,
    operator        text NULL,
    comment         text NULL,
    run_duration_s  double precision GENERATED ALWAYS AS
                        (extract(epoch FROM end_timestamp - start_timestamp)) STORED,
    CONSTRAINT run_name_not_blank CHECK (btrim(run_name) <> ''),
    CONSTRAINT run_time_not_negative CHECK (run_time_s IS NULL OR run_time_s >= 0),
    CONSTRAINT run_ends_after_start CHECK (end_timestamp IS NULL OR end_timestamp >= start_timestamp)
);

CREATE INDEX IF NOT EXISTS run_table_start_timestamp ON runs.run_table (start_timestamp);
CREATE INDEX IF NOT EXISTS run_table_run_name ON runs.run_table (run_name);

COMMENT ON TABLE runs.run_table IS
    'One row per data run: inserted at run start (run_id, start_timestamp returned), '
    'end_timestamp set at run end.';
