-- 007: per-minute and per-hour rollups of the numeric values, kept up to date as values arrive.
-- The lab console plots long windows (days to months of 1 Hz values) from these tables instead of
-- the raw rows: 30 days of one endpoint are 2.6 M raw rows but 43 200 minute rows and 720 hour
-- rows (bench/console.py measures both paths in the same run).
--
-- Each row of endpoint_numeric_rollup_{1m,1h} holds, for one endpoint and one bucket (the start
-- of the minute / hour, UTC): how many rows were logged (n), and count / min / max / sum of
-- value_raw and of value_cal (NULLs are not counted; mean = sum / count).
--
-- Maintenance: one AFTER INSERT ... FOR EACH STATEMENT trigger with a transition table, so a
-- COPY batch of the sensor logger costs one grouped upsert per table, not one per value.  The
-- function runs as the owner (SECURITY DEFINER), so the logger needs no rights on the rollups.
-- Rows are never updated or deleted by the lab; whoever deletes raw rows by hand must
-- recompute the rollups of those buckets (see files/sql/README.md).

-- No value may be logged between the backfill below and the trigger taking over.
LOCK TABLE public.endpoint_numeric_data IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE IF NOT EXISTS public.endpoint_numeric_rollup_1m (
    endpoint_id integer NOT NULL REFERENCES public.endpoint_id_map (endpoint_id),
    bucket      timestamp without time zone NOT NULL,
    n           bigint NOT NULL,
    raw_n       bigint NOT NULL,
    raw_min     double precision,
    raw_max     double precision,
    raw_sum     double precision,
    cal_n       bigint NOT NULL,
    cal_min     double precision,
    cal_max     double precision,
    cal_sum     double precision,
    PRIMARY KEY (endpoint_id, bucket)
);

CREATE TABLE IF NOT EXISTS public.endpoint_numeric_rollup_1h (
    LIKE public.endpoint_numeric_rollup_1m INCLUDING ALL
);

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'endpoint_numeric_rollup_1h_endpoint_id_fkey'
    ) THEN
        ALTER TABLE public.endpoint_numeric_rollup_1h
            ADD CONSTRAINT endpoint_numeric_rollup_1h_endpoint_id_fkey
            FOREIGN KEY (endpoint_id) REFERENCES public.endpoint_id_map (endpoint_id);
    END IF;
END
$$;

COMMENT ON TABLE public.endpoint_numeric_rollup_1m IS
    'Per-minute count/min/max/sum of endpoint_numeric_data (maintained by a trigger).';
COMMENT ON TABLE public.endpoint_numeric_rollup_1h IS
    'Per-hour count/min/max/sum of endpoint_numeric_data (maintained by a trigger).';

CREATE OR REPLACE FUNCTION public.numeric_rollup_after_insert()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
BEGIN
    -- ORDER BY: concurrent writers lock the bucket rows in the same order (no deadlock)
    INSERT INTO public.endpoint_numeric_rollup_1m AS r
        (endpoint_id, bucket, n, raw_n, raw_min, raw_max, raw_sum, cal_n, cal_min, cal_max, cal_sum)
    SELECT endpoint_id, date_trunc('minute', "timestamp"), count(*),
           count(value_raw), min(value_raw), max(value_raw), sum(value_raw),
           count(value_cal), min(value_cal), max(value_cal), sum(value_cal)
    FROM new_rows
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (endpoint_id, bucket) DO UPDATE SET
        n = r.n + excluded.n,
        raw_n = r.raw_n + excluded.raw_n,
        raw_min = least(r.raw_min, excluded.raw_min),
        raw_max = greatest(r.raw_max, excluded.raw_max),
        raw_sum = coalesce(r.raw_sum + excluded.raw_sum, r.raw_sum, excluded.raw_sum),
        cal_n = r.cal_n + excluded.cal_n,
        cal_min = least(r.cal_min, excluded.cal_min),
        cal_max = greatest(r.cal_max, excluded.cal_max),
        cal_sum = coalesce(r.cal_sum + excluded.cal_sum, r.cal_sum, excluded.cal_sum);

    INSERT INTO public.endpoint_numeric_rollup_1h AS r
        (endpoint_id, bucket, n, raw_n, raw_min, raw_max, raw_sum, cal_n, cal_min, cal_max, cal_sum)
    SELECT endpoint_id, date_trunc('hour', "timestamp"), count(*),
           count(value_raw), min(value_raw), max(value_raw), sum(value_raw),
           count(value_cal), min(value_cal), max(value_cal), sum(value_cal)
    FROM new_rows
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (endpoint_id, bucket) DO UPDATE SET
        n = r.n + excluded.n,
        raw_n = r.raw_n + excluded.raw_n,
        raw_min = least(r.raw_min, excluded.raw_min),
        raw_max = greatest(r.raw_max, excluded.raw_max),
        raw_sum = coalesce(r.raw_sum + excluded.raw_sum, r.raw_sum, excluded.raw_sum),
        cal_n = r.cal_n + excluded.cal_n,
        cal_min = least(r.cal_min, excluded.cal_min),
        cal_max = greatest(r.cal_max, excluded.cal_max),
        cal_sum = coalesce(r.cal_sum + excluded.cal_sum, r.cal_sum, excluded.cal_sum);
    RETURN NULL;
END
$$;

REVOKE ALL ON FUNCTION public.numeric_rollup_after_insert() FROM PUBLIC;

-- Backfill what was logged before this migration (once: only while the rollups are empty).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.endpoint_numeric_rollup_1m)
       AND EXISTS (SELECT 1 FROM public.endpoint_numeric_data) THEN
        INSERT INTO public.endpoint_numeric_rollup_1m
            (endpoint_id, bucket, n, raw_n, raw_min, raw_max, raw_sum,
             cal_n, cal_min, cal_max, cal_sum)
        SELECT endpoint_id, date_trunc('minute', "timestamp"), count(*),
               count(value_raw), min(value_raw), max(value_raw), sum(value_raw),
               count(value_cal), min(value_cal), max(value_cal), sum(value_cal)
        FROM public.endpoint_numeric_data
        GROUP BY 1, 2;
        INSERT INTO public.endpoint_numeric_rollup_1h
            (endpoint_id, bucket, n, raw_n, raw_min, raw_max, raw_sum,
             cal_n, cal_min, cal_max, cal_sum)
        SELECT endpoint_id, date_trunc('hour', bucket), sum(n),
               sum(raw_n), min(raw_min), max(raw_max), sum(raw_sum),
               sum(cal_n), min(cal_min), max(cal_max), sum(cal_sum)
        FROM public.endpoint_numeric_rollup_1m
        GROUP BY 1, 2;
    END IF;
END
$$;

CREATE OR REPLACE TRIGGER endpoint_numeric_data_rollup
    AFTER INSERT ON public.endpoint_numeric_data
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.numeric_rollup_after_insert();
