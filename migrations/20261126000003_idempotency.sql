-- Idempotency-Key records, written in the command's own transaction.

create table idempotency_keys (
    user_id         uuid not null,
    key             text not null check (char_length(key) between 1 and 255),
    -- Fingerprint of method, path and body: the same key with another request is rejected.
    request_hash    text not null,
    response_status smallint not null,
    response_body   jsonb not null,
    created_at      timestamptz not null default now(),
    primary key (user_id, key)
);

create index idempotency_keys_created_at on idempotency_keys (created_at);
