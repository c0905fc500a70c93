-- The event log, which is also the transactional outbox. Append-only: the
-- service inserts in the command's transaction; the relay only reads.

create table event_log (
    position          bigint generated always as identity primary key,
    event_id          uuid not null unique,                -- UUIDv7, = CloudEvents ce_id
    aggregate_type    text not null,
    aggregate_id      uuid not null,
    aggregate_version bigint not null check (aggregate_version >= 1),
    event_type        text not null,
    payload           jsonb not null,
    headers           jsonb not null default '{}'::jsonb,
    occurred_at       timestamptz not null,
    -- The writing transaction's id. Readers order by (txid, position) and only
    -- read below the snapshot xmin, so a late commit is never skipped.
    txid              xid8 not null default pg_current_xact_id(),
    unique (aggregate_id, aggregate_version)
);

create index event_log_txid_position on event_log (txid, position);
create index event_log_occurred_at on event_log (occurred_at);

-- Append-only is a property of the table, not a convention of its callers.
create function event_log_reject_change() returns trigger language plpgsql as $$
begin
    raise exception 'event_log is append-only (% rejected)', tg_op
        using errcode = 'restrict_violation';
end;
$$;

create trigger event_log_append_only
    before update or delete on event_log
    for each row execute function event_log_reject_change();

create trigger event_log_no_truncate
    before truncate on event_log
    for each statement execute function event_log_reject_change();
