-- 002: measurement tables, one per endpoint data type, and the memo table.
-- The primary key (endpoint_id, "timestamp") is also the index the snapshot queries need
-- (latest value per endpoint: LATERAL ... ORDER BY "timestamp" DESC LIMIT 1).  A BRIN index on
-- "timestamp" serves the time-range scans (get_logs) at a few kB per table.

CREATE SEQUENCE IF NOT EXISTS public.measurement_ids AS bigint;

CREATE TABLE IF NOT EXISTS public.endpoint_numeric_data (
    endpoint_id integer NOT NULL REFERENCES public.endpoint_id_map (endpoint_id),
    "timestamp" timestamp without time zone NOT NULL,
    value_raw   double precision,
    value_cal   double precision,
    meas_id     bigint NOT NULL DEFAULT nextval('public.measurement_ids'),
    PRIMARY KEY (endpoint_id, "timestamp")
);

CREATE TABLE IF NOT EXISTS public.endpoint_string_data (
    endpoint_id integer NOT NULL REFERENCES public.endpoint_id_map (endpoint_id),
    "timestamp" timestamp without time zone NOT NULL,
    value_raw   text,
    value_cal   text,
    meas_id     bigint NOT NULL DEFAULT nextval('public.measurement_ids'),
    PRIMARY KEY (endpoint_id, "timestamp")
);

CREATE TABLE IF NOT EXISTS public.endpoint_json_data (
    endpoint_id integer NOT NULL REFERENCES public.endpoint_id_map (endpoint_id),
    "timestamp" timestamp without time zone NOT NULL,
    value_raw   jsonb,
    value_cal   jsonb,
    meas_id     bigint NOT NULL DEFAULT nextval('public.measurement_ids'),
    PRIMARY KEY (endpoint_id, "timestamp")
);

CREATE TABLE IF NOT EXISTS public.measurement_metadata (
    meas_id     bigint PRIMARY KEY,
    endpoint_id integer NOT NULL REFERENCES public.endpoint_id_map (endpoint_id),
    "timestamp" timestamp without time zone NOT NULL,
    memo        text
);

CREATE INDEX IF NOT EXISTS endpoint_numeric_data_timestamp_brin
    ON public.endpoint_numeric_data USING brin ("timestamp");
CREATE INDEX IF NOT EXISTS endpoint_string_data_timestamp_brin
    ON public.endpoint_string_data USING brin ("timestamp");
CREATE INDEX IF NOT EXISTS endpoint_json_data_timestamp_brin
    ON public.endpoint_json_data USING brin ("timestamp");
CREATE INDEX IF NOT EXISTS measurement_metadata_endpoint_timestamp
    ON public.measurement_metadata (endpoint_id, "timestamp");
