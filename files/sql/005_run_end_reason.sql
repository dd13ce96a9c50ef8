-- 005: how a run ended, and bounds on what a request can store in runs.run_table.
-- end_reason is set together with end_timestamp by the DAQ's one end-of-run path:
--   completed   the timed run reached its length
--   ended       end_run was requested (an early end)
--   stopped     the DAQ service was stopped (SIGTERM, supervisorctl stop) during the run
--   interrupted the run was found still open when the DAQ started again (a crash, a host loss):
--               its end_timestamp is the earlier of the restart and its planned end
--   aborted     the run could not be started after its row was inserted
-- NULL for runs ended before this migration (or by hand).
-- The two NOT VALID checks apply to new and updated rows only, so existing rows cannot make the
-- migration fail; the services refuse such values earlier, with a clearer reply.

ALTER TABLE runs.run_table ADD COLUMN IF NOT EXISTS end_reason text NULL;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'run_end_reason_known' AND conrelid = 'runs.run_table'::regclass
    ) THEN
        ALTER TABLE runs.run_table ADD CONSTRAINT run_end_reason_known CHECK (
            end_reason IS NULL
            OR end_reason IN ('completed', 'ended', 'stopped', 'interrupted', 'aborted')
        );
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'run_name_length' AND conrelid = 'runs.run_table'::regclass
    ) THEN
        ALTER TABLE runs.run_table
            ADD CONSTRAINT run_name_length CHECK (char_length(run_name) <= 255) NOT VALID;
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'run_time_finite' AND conrelid = 'runs.run_table'::regclass
    ) THEN
        -- NaN compares greater than every number in PostgreSQL, so this also refuses NaN
        ALTER TABLE runs.run_table
            ADD CONSTRAINT run_time_finite
            CHECK (run_time_s IS NULL OR run_time_s < 'Infinity'::double precision) NOT VALID;
    END IF;
END
$$;

CREATE INDEX IF NOT EXISTS run_table_open_runs ON runs.run_table (run_id) WHERE end_timestamp IS NULL;

COMMENT ON COLUMN runs.run_table.end_reason IS
    'How the run ended: completed, ended (end_run), stopped (DAQ service stopped), '
    'interrupted (found open after a crash), aborted (failed to start); NULL before migration 005.';
