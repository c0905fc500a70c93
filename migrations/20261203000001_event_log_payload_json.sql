-- The payload is stored as `json`, the text the relay publishes, instead of
-- `jsonb`. Every reader of the log (the relay, replays, GET /v1/events) wants
-- the payload as text, and rendering `jsonb` as text cost Postgres ~2.4 µs per
-- event on every read: most of the relay's read time (BENCHMARKS.md, scenario 2).
-- Now it is rendered once, on insert. The service still binds `jsonb`, which
-- the assignment cast renders into exactly the text readers got before, so the
-- records' bytes do not change. `headers` stays `jsonb`: readers look into it.
alter table event_log alter column payload type json using payload::json;
