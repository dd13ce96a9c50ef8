"""The lab console: one web page for the whole lab.

* **Services** — every supervisord program on every lab host (state, uptime, host), start / stop
  / restart, the end of its log; refreshed every few seconds (:mod:`.supervisor`).
* **Sensor values** — the endpoints of ``endpoint_id_map`` with their latest value and its age,
  plots of one or several endpoints over a chosen window, live for recent windows, aggregated in
  the database for long ones (:mod:`.queries`).
* **Runs** — the run table, a page per run with its metadata, files, plots and a per-endpoint
  summary, and its report (:mod:`insectarium.report`).

Run it with ``insectarium-console -c /etc/insectarium/console.yaml`` (:mod:`.cli`); the
``lab_console`` Ansible role does that under supervisord.  Configuration: :mod:`.config`; who may
do what: :mod:`.auth`; the web application: :mod:`.app`.
"""
