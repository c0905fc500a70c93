-- The outbox relay's progress, one row per relay name. The relay writes here
-- and nowhere else; event_log rows are never touched to mark them published.

create table relay_checkpoints (
    relay_name        text primary key,
    -- Everything at or below (txid, position) has been acknowledged by Kafka.
    txid              xid8 not null,
    position          bigint not null,
    -- pg_control_system().system_identifier when the checkpoint was written: a
    -- logical restore into another cluster changes it, and the relay refuses to go on.
    system_identifier bigint,
    updated_at        timestamptz not null default now()
);
