-- Streams the relay parked: an event Kafka refused for good (a record over the
-- topic's max.message.bytes, an invalid timestamp, an authorization failure)
-- waits here with its error, and so does every later event of its stream, in
-- order, while the rest of the log flows. `outbox-relay parked retry|skip`
-- sets `action`; the relay then publishes the stream from the parked event
-- (retry) or from the one after it (skip), and deletes the row.

create table relay_parked (
    relay_name   text not null,
    aggregate_id uuid not null,
    -- The refused event: where the stream waits.
    txid         xid8 not null,
    position     bigint not null,
    event_id     uuid not null,
    error        text not null,
    parked_at    timestamptz not null default now(),
    action       text check (action in ('retry', 'skip')),
    primary key (relay_name, aggregate_id)
);
