-- The relay leader's lease, one row per relay name, beside its advisory lock.
-- The leader renews it on its lock connection; a standby that finds it expired
-- terminates the holder's session (which releases the lock) and takes over, so
-- a frozen or cut-off leader is replaced within a bound (docs/relay.md).

create table relay_leases (
    relay_name   text primary key,
    -- The lock connection's backend: the session a standby terminates.
    backend_pid  integer not null,
    -- Who holds it, for operators (host and process of the relay).
    holder       text not null,
    -- Server time of the last renewal; expiry is judged on the server's clock.
    renewed_at   timestamptz not null
);
