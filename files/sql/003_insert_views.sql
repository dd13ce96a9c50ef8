-- 003: the per-type views numeric_data / string_data / json_data
--   (endpoint_name, "timestamp", value_raw, value_cal, memo)
-- for humans, ad-hoc SQL and dripline-2 style loggers.  Reading: every measurement of that type,
-- with its memo; memo-only measurements (no value) come from measurement_metadata.  Writing: an
-- INSTEAD OF INSERT trigger resolves endpoint_name through endpoint_id_map and
--   * rejects an unknown endpoint name (SQLSTATE 23503) and a type that does not match the view
--     (SQLSTATE 42804), each with a message naming the endpoint;
--   * requires value_raw or memo (SQLSTATE 23502);
--   * allocates meas_id from measurement_ids, writes the value to endpoint_<type>_data and the
--     memo to measurement_metadata (same meas_id, endpoint_id and "timestamp").
-- "timestamp" defaults to the current UTC time.  Bulk writers (the sensor logger) bypass the
-- views and COPY into endpoint_<type>_data directly.

CREATE OR REPLACE FUNCTION public.insert_measurement_view_row()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    view_type   public.endpoint_data_type := TG_ARGV[0]::public.endpoint_data_type;
    found_id    integer;
    found_type  public.endpoint_data_type;
    new_meas_id bigint;
BEGIN
    IF NEW.endpoint_name IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'not_null_violation',
            MESSAGE = format('%s: endpoint_name is required', TG_TABLE_NAME);
    END IF;

    SELECT m.endpoint_id, m.type INTO found_id, found_type
    FROM public.endpoint_id_map AS m
    WHERE m.endpoint_name = NEW.endpoint_name;

    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'foreign_key_violation',
            MESSAGE = format('%s: unknown endpoint %L (not in endpoint_id_map)',
                             TG_TABLE_NAME, NEW.endpoint_name),
            HINT = format('Register it first: INSERT INTO endpoint_id_map (endpoint_name, type) '
                          'VALUES (%L, %L);', NEW.endpoint_name, view_type);
    END IF;

    IF found_type <> view_type THEN
        RAISE EXCEPTION USING
            ERRCODE = 'datatype_mismatch',
            MESSAGE = format('%s: endpoint %L has type %s, not %s',
                             TG_TABLE_NAME, NEW.endpoint_name, found_type, view_type),
            HINT = format('Insert its values into %I.', found_type || '_data');
    END IF;

    IF NEW.value_raw IS NULL AND NEW.memo IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'not_null_violation',
            MESSAGE = format('%s: value_raw or memo is required (endpoint %L)',
                             TG_TABLE_NAME, NEW.endpoint_name);
    END IF;

    IF NEW."timestamp" IS NULL THEN
        NEW."timestamp" := now() AT TIME ZONE 'utc';
    END IF;

    new_meas_id := nextval('public.measurement_ids');

    IF NEW.value_raw IS NOT NULL OR NEW.value_cal IS NOT NULL THEN
        EXECUTE format(
            'INSERT INTO public.%I (endpoint_id, "timestamp", value_raw, value_cal, meas_id) '
            'VALUES ($1, $2, $3, $4, $5)',
            'endpoint_' || view_type || '_data')
        USING found_id, NEW."timestamp", NEW.value_raw, NEW.value_cal, new_meas_id;
    END IF;

    IF NEW.memo IS NOT NULL THEN
        INSERT INTO public.measurement_metadata (meas_id, endpoint_id, "timestamp", memo)
        VALUES (new_meas_id, found_id, NEW."timestamp", NEW.memo);
    END IF;

    RETURN NEW;
END
$$;

CREATE OR REPLACE VIEW public.numeric_data AS
    SELECT m.endpoint_name, d."timestamp", d.value_raw, d.value_cal, mm.memo
    FROM public.endpoint_numeric_data AS d
    JOIN public.endpoint_id_map AS m ON m.endpoint_id = d.endpoint_id
    LEFT JOIN public.measurement_metadata AS mm ON mm.meas_id = d.meas_id
    UNION ALL
    SELECT m.endpoint_name, mm."timestamp", NULL::double precision, NULL::double precision, mm.memo
    FROM public.measurement_metadata AS mm
    JOIN public.endpoint_id_map AS m ON m.endpoint_id = mm.endpoint_id
    WHERE m.type = 'numeric'
      AND NOT EXISTS (
          SELECT 1 FROM public.endpoint_numeric_data AS d
          WHERE d.endpoint_id = mm.endpoint_id AND d."timestamp" = mm."timestamp"
            AND d.meas_id = mm.meas_id);

CREATE OR REPLACE VIEW public.string_data AS
    SELECT m.endpoint_name, d."timestamp", d.value_raw, d.value_cal, mm.memo
    FROM public.endpoint_string_data AS d
    JOIN public.endpoint_id_map AS m ON m.endpoint_id = d.endpoint_id
    LEFT JOIN public.measurement_metadata AS mm ON mm.meas_id = d.meas_id
    UNION ALL
    SELECT m.endpoint_name, mm."timestamp", NULL::text, NULL::text, mm.memo
    FROM public.measurement_metadata AS mm
    JOIN public.endpoint_id_map AS m ON m.endpoint_id = mm.endpoint_id
    WHERE m.type = 'string'
      AND NOT EXISTS (
          SELECT 1 FROM public.endpoint_string_data AS d
          WHERE d.endpoint_id = mm.endpoint_id AND d."timestamp" = mm."timestamp"
            AND d.meas_id = mm.meas_id);

CREATE OR REPLACE VIEW public.json_data AS
    SELECT m.endpoint_name, d."timestamp", d.value_raw, d.value_cal, mm.memo
    FROM public.endpoint_json_data AS d
    JOIN public.endpoint_id_map AS m ON m.endpoint_id = d.endpoint_id
    LEFT JOIN public.measurement_metadata AS mm ON mm.meas_id = d.meas_id
    UNION ALL
    SELECT m.endpoint_name, mm."timestamp", NULL::jsonb, NULL::jsonb, mm.memo
    FROM public.measurement_metadata AS mm
    JOIN public.endpoint_id_map AS m ON m.endpoint_id = mm.endpoint_id
    WHERE m.type = 'json'
      AND NOT EXISTS (
          SELECT 1 FROM public.endpoint_json_data AS d
          WHERE d.endpoint_id = mm.endpoint_id AND d."timestamp" = mm."timestamp"
            AND d.meas_id = mm.meas_id);

ALTER VIEW public.numeric_data ALTER COLUMN "timestamp" SET DEFAULT (now() AT TIME ZONE 'utc');
ALTER VIEW public.string_data ALTER COLUMN "timestamp" SET DEFAULT (now() AT TIME ZONE 'utc');
ALTER VIEW public.json_data ALTER COLUMN "timestamp" SET DEFAULT (now() AT TIME ZONE 'utc');

CREATE OR REPLACE TRIGGER numeric_data_insert
    INSTEAD OF INSERT ON public.numeric_data
    FOR EACH ROW EXECUTE FUNCTION public.insert_measurement_view_row('numeric');
CREATE OR REPLACE TRIGGER string_data_insert
    INSTEAD OF INSERT ON public.string_data
    FOR EACH ROW EXECUTE FUNCTION public.insert_measurement_view_row('string');
CREATE OR REPLACE TRIGGER json_data_insert
    INSTEAD OF INSERT ON public.json_data
    FOR EACH ROW EXECUTE FUNCTION public.insert_measurement_view_row('json');
