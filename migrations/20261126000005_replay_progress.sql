-- `outbox-relay replay` progress, one row per replay name. A replay never
-- touches relay_checkpoints: the live relay's progress and a replay's are
-- separate, so the two run side by side.

create table replay_progress (
    replay_name text primary key,
    -- Where the records go.
    topic       text not null,
    -- The slice as given (--from/--to/--aggregate/--type), so --resume sends the same one.
    selection   jsonb not null,
    -- Only events of transactions below this txid: the horizon when the replay
    -- started. Fixes the slice even when the bounds reach into the future.
    horizon     xid8 not null,
    -- Everything of the slice at or below (txid, position) has been acknowledged by Kafka.
    txid        xid8 not null,
    position    bigint not null,
    -- Events of the slice acknowledged so far, out of `selected`.
    sent        bigint not null default 0,
    selected    bigint not null,
    started_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    finished_at timestamptz
);
