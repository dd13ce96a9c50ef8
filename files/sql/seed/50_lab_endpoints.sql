-- The lab's endpoints: only these are stored by the sensor logger.  One line per endpoint.
-- "donuts" is deliberately NOT registered (the key-value store serves it unmapped).
INSERT INTO public.endpoint_id_map (endpoint_name, type) VALUES ('peaches', 'numeric') ON CONFLICT (endpoint_name) DO NOTHING;
INSERT INTO public.endpoint_id_map (endpoint_name, type) VALUES ('chips', 'numeric') ON CONFLICT (endpoint_name) DO NOTHING;
INSERT INTO public.endpoint_id_map (endpoint_name, type) VALUES ('waffles', 'numeric') ON CONFLICT (endpoint_name) DO NOTHING;
INSERT INTO public.endpoint_id_map (endpoint_name, type) VALUES ('cheese', 'string') ON CONFLICT (endpoint_name) DO NOTHING;
INSERT INTO public.endpoint_id_map (endpoint_name, type) VALUES ('recipe', 'json') ON CONFLICT (endpoint_name) DO NOTHING;
